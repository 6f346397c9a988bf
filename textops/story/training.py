"""The story task's training recipe: a GPT-2 language model trained by the transformers Trainer on
windows of the token stream, resumable from checkpoints. stages/story_train.py runs it."""

from __future__ import annotations

import hashlib
import json
import logging
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd

from textops import distributed, lora
from textops.errors import PipelineError
from textops.modeling import device_precision, precision_args, reset_mixed_precision
from textops.params import Params
from textops.story.lm import build_model, eval_blocks, perplexity_of
from textops.training import resume_from, save_model

log = logging.getLogger("textops.story_train")
# Training samples start at random offsets (nanoGPT's sampling) rather than at fixed block starts. On
# Tiny Shakespeare both reached the same validation loss (bench/results/story_windows.md, 3 seeds);
# random windows keep many-epoch runs on small corpora from repeating the very same blocks each epoch.
WINDOWS = "random"


def with_labels(ids) -> dict:
    """labels = input_ids (the model shifts them), the first masked: it is never a target after the shift,
    and the Trainer divides the summed loss by the count of unmasked labels (else (n-1)/n of the mean)."""
    labels = ids.clone()
    labels[0] = -100
    return {"input_ids": ids, "labels": labels}


class Blocks:
    """Training samples of `context` tokens (see with_labels).

    random: sample i starts anywhere in the stream, drawn from (seed, epoch, i): each epoch sees new
    windows, and a resumed run sees the windows it would have (the Trainer restores the sample order).
    fixed: sample i is the i-th non-overlapping block. An epoch is as many samples as there are blocks.
    """

    def __init__(self, tokens: np.ndarray, context: int, windows: str, seed: int):
        import torch

        if len(tokens) <= context:
            raise PipelineError(
                f"{len(tokens)} train tokens do not fill one block of story.model.context={context}; "
                f"add text or lower the context"
            )
        self.tokens, self.context, self.random = torch.from_numpy(tokens.astype(np.int64)), context, windows == "random"
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return len(self.tokens) // self.context

    def __getitem__(self, i: int) -> dict:
        if self.random:
            start = int(np.random.default_rng([self.seed, self.epoch, i]).integers(len(self.tokens) - self.context + 1))
        else:
            start = i * self.context
        return with_labels(self.tokens[start : start + self.context])


def epoch_setter(blocks: Blocks):
    """A Trainer callback that tells the training set which epoch starts (a resumed one included)."""
    from transformers import TrainerCallback

    class SetEpoch(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            blocks.epoch = int(state.epoch or 0)  # whole at an epoch's start; a resumed epoch's fraction rounds down

    return SetEpoch()


class EvalBlocks:
    def __init__(self, tokens: np.ndarray, context: int):
        import torch

        self.blocks = torch.from_numpy(eval_blocks(tokens, context))

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict:
        return with_labels(self.blocks[i])


def fingerprint(params: Params, tokenized: Path, windows: str, precision: str) -> str:
    """Checkpoints are only resumed when the tokens and every knob that shapes training match, and the precision
    `auto` resolved to here."""
    s = params.story
    digest = hashlib.sha256(
        json.dumps([s.seed, s.model.model_dump(), s.train.model_dump(), windows, precision], sort_keys=True).encode()
    )
    for name in ("train.npy", "eval.npy", "tokenizer/tokenizer.json"):
        if (tokenized / name).is_file():
            digest.update((tokenized / name).read_bytes())
    return digest.hexdigest()


def curves(log_history: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    train = pd.DataFrame(
        [
            {"step": e["step"], "loss": e["loss"], "learning_rate": e.get("learning_rate")}
            for e in log_history
            if "loss" in e
        ],
        columns=["step", "loss", "learning_rate"],
    )
    evals = pd.DataFrame(
        [{"step": e["step"], "eval_loss": e["eval_loss"]} for e in log_history if "eval_loss" in e],
        columns=["step", "eval_loss"],
    )
    return train, evals.drop_duplicates("step", keep="last")


def training_args(params: Params, checkpoints: Path, precision: str):
    import torch
    from transformers import TrainingArguments

    s, t = params.story, params.story.train
    cuda = torch.cuda.is_available()
    reset_mixed_precision(precision)
    return TrainingArguments(
        output_dir=str(checkpoints),
        seed=s.seed,
        data_seed=s.seed,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_eval_batch_size=t.eval_batch_size,  # per process: only memory depends on it
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        adam_beta1=0.9,
        adam_beta2=t.beta2,
        optim=t.optimizer,
        warmup_steps=t.warmup_steps,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr": t.min_learning_rate},
        max_grad_norm=t.max_grad_norm,
        eval_strategy="steps",
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        prediction_loss_only=True,  # logits of every eval block would be gathered for nothing
        report_to=[],
        dataloader_num_workers=0,
        disable_tqdm=False,
        # `|`: both may set use_cpu (bf16 on the CPU; DDP on the CPU)
        **(precision_args(precision, cuda) | distributed.trainer_args(t.batch_size, "story.train", cuda)),
    )


def load_model(params: Params, tokenizer):
    model = build_model(params.story.model, len(tokenizer), tokenizer)
    if params.story.train.method == "lora":
        model = lora.wrap(model, params.story.train.lora, "generate")
    return model


def train(params: Params, tokenized: Path, out: Path, checkpoints: Path, windows: str = WINDOWS) -> dict:
    import torch
    from transformers import AutoTokenizer, Trainer, default_data_collator, set_seed

    s = params.story
    if s.train.num_threads:
        torch.set_num_threads(s.train.num_threads)
    precision, cpu_bf16_flags = device_precision(s.train.precision, "story.train.precision")
    tokenizer = AutoTokenizer.from_pretrained(tokenized / "tokenizer")
    set_seed(s.seed)  # before the weights are drawn: the Trainer seeds only after the model exists
    model = load_model(params, tokenizer)
    counts = lora.parameter_counts(model)  # before the merge, which leaves nothing to count as trainable
    train_set = Blocks(np.load(tokenized / "train.npy"), s.model.context, windows, s.seed)
    eval_set = EvalBlocks(np.load(tokenized / "eval.npy"), s.model.context)
    trainer = Trainer(
        model=model,
        args=training_args(params, checkpoints, precision),
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=default_data_collator,
        callbacks=[epoch_setter(train_set)],
    )
    resume = resume_from(checkpoints, fingerprint(params, tokenized, windows, precision))
    start_step = int(resume.rsplit("-", 1)[-1]) if resume else 0
    log.info(
        "training %.2fM parameters (%d trainable) on %d tokens, %s windows of %d, %s (%s)%s",
        counts["total_parameters"] / 1e6,
        counts["trainable_parameters"],
        len(train_set.tokens),
        windows,
        s.model.context,
        "cuda" if torch.cuda.is_available() else "cpu",
        precision,
        f", resuming from {resume}" if resume else "",
    )
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    wall = time.perf_counter() - started
    final = trainer.evaluate()
    tokenizer.model_max_length = s.model.context
    save_model(trainer.model, tokenizer, out)  # LoRA: a plain GPT2LMHeadModel
    steps_run = trainer.state.global_step - start_step
    runtime = result.metrics["train_runtime"]
    samples_per_s = steps_run * s.train.batch_size / runtime if steps_run else None
    metrics = {
        "method": s.train.method,
        "train_loss": round(result.training_loss, 4),
        "eval_loss": round(final["eval_loss"], 4),
        "eval_perplexity": round(perplexity_of(final["eval_loss"]), 3),
        "global_step": trainer.state.global_step,
        "resumed_from_step": start_step,
        "samples_per_second": round(samples_per_s, 2) if samples_per_s else None,
        "tokens_per_second": round(samples_per_s * s.model.context, 1) if samples_per_s else None,
        "train_runtime_s": round(runtime, 2),
        "wall_time_s": round(wall, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **counts,
        "train_tokens": len(train_set.tokens),
        "eval_blocks": len(eval_set),
        "context": s.model.context,
        "windows": windows,
        "precision": precision,
        "cpu_bf16_flags": cpu_bf16_flags,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
    }
    return {
        "metrics": metrics,
        "log_history": trainer.state.log_history + [{"step": trainer.state.global_step, **final}],
    }
