"""The sentiment task's training recipe: a sequence classifier fine-tuned by the transformers Trainer
(full or LoRA, an optional head learning rate), resumable from checkpoints. stages/train.py runs it."""

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
from textops.modeling import device_precision, load_classifier, load_tokenizer, precision_args, reset_mixed_precision
from textops.params import Params
from textops.training import resume_from, save_model

log = logging.getLogger("textops.train")


class TokenDataset:
    """Rows of token ids and a label; the collator pads each batch to its own longest row."""

    def __init__(self, frame: pd.DataFrame):
        self.ids = [list(map(int, row)) for row in frame["input_ids"]]
        self.labels = frame["label"].astype(int).tolist()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def accuracy(eval_pred) -> dict:
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def fingerprint(params: Params, tokenized: Path, precision: str) -> str:
    """Checkpoints are only resumed when the data and every knob that shapes training match, and the precision
    `auto` resolved to here (a checkpoint from an fp32 machine is not resumed in bf16)."""
    digest = hashlib.sha256(
        json.dumps(
            [
                params.sentiment.seed,
                params.sentiment.labels,
                params.sentiment.model.model_dump(),
                params.sentiment.train.model_dump(),
                precision,
            ],
            sort_keys=True,
        ).encode()
    )
    for split in ("train", "eval"):
        digest.update((tokenized / f"{split}.parquet").read_bytes())
    return digest.hexdigest()


def curves(log_history: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    train = pd.DataFrame(
        [
            {
                "step": e["step"],
                "loss": e["loss"],
                "learning_rate": e.get("learning_rate"),
                "grad_norm": e.get("grad_norm"),
            }
            for e in log_history
            if "loss" in e
        ]
    )
    evals = pd.DataFrame(
        [
            {"step": e["step"], "eval_accuracy": e["eval_accuracy"], "eval_loss": e["eval_loss"]}
            for e in log_history
            if "eval_accuracy" in e
        ]
    )
    return train, evals.drop_duplicates("step", keep="last")  # the final evaluation repeats the last step's


def is_head(name: str, prefix: str) -> bool:
    """Whether a parameter belongs to the task head: everything outside the encoder (classifier,
    DistilBERT's pre_classifier) plus BERT's pooler, which feeds only the head."""
    return not name.startswith(prefix + ".") or name.startswith(prefix + ".pooler.")


def parameter_groups(
    named: list[tuple[str, object]],
    decay: set[str],
    head: set[str],
    learning_rate: float,
    head_learning_rate: float,
    weight_decay: float,
) -> list[dict]:
    """AdamW groups: the Trainer's decay / no-decay split, each split again into body and head rates.
    Parameters that do not train (LoRA's frozen base) are left out, as the Trainer does."""
    groups = []
    for in_head, rate in ((False, learning_rate), (True, head_learning_rate)):
        for decays in (True, False):
            chosen = [p for n, p in named if p.requires_grad and (n in head) == in_head and (n in decay) == decays]
            if chosen:
                groups.append({"params": chosen, "lr": rate, "weight_decay": weight_decay if decays else 0.0})
    return groups


def head_names(model) -> set[str]:
    """Names (as model.named_parameters gives them) of the head's parameters; LoRA's PeftModel is looked
    through, so its trainable copy of the classifier counts as head and the adapters as body."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    ids = {id(p) for n, p in inner.named_parameters() if is_head(n, inner.base_model_prefix)}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def length_grouped_sampler(dataset, batch_size: int, seed: int):
    """transformers' LengthGroupedSampler (shuffle, then sort by length within mega-batches of `batch_size`
    multiples), drawing each epoch's shuffle from (seed, epoch) alone. The Trainer's draws from the global RNG,
    which dropout advances by a different amount in each DDP process (their batches pad to different
    lengths): from the second epoch the processes shard different orders, some rows twice, others never
    (measured). Cut at the global batch, the order is also the same on any process count, and a resumed
    epoch shuffles as the interrupted one did."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class EpochSeeded(LengthGroupedSampler):
        def set_epoch(self, epoch: int) -> None:  # the Trainer's dataloader calls it before each epoch
            self.generator.manual_seed(seed + epoch)

    return EpochSeeded(batch_size, dataset=dataset, generator=torch.Generator().manual_seed(seed))


def make_trainer(head_learning_rate: float | None, **kwargs):
    """The Trainer; with a head learning rate, its AdamW gets body and head groups (the schedule's
    warmup and decay apply to both): a freshly initialised head can take a higher rate than the
    pretrained body. What it measured on SST-2: params.yaml, sentiment.train.head_learning_rate.
    Length-grouped batches come from length_grouped_sampler."""
    from transformers import Trainer

    class HeadRateTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            if not self.args.group_by_length:
                return super()._get_train_sampler(train_dataset)
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            a = self.args
            global_batch = a.per_device_train_batch_size * a.gradient_accumulation_steps * a.world_size
            return length_grouped_sampler(dataset, global_batch, a.data_seed)

        def create_optimizer(self):
            if self.optimizer is None and head_learning_rate is not None:
                optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
                groups = parameter_groups(
                    list(self.model.named_parameters()),
                    set(self.get_decay_parameter_names(self.model)),
                    head_names(self.model),
                    self.args.learning_rate,
                    head_learning_rate,
                    self.args.weight_decay,
                )
                self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
            return super().create_optimizer()

    return HeadRateTrainer(**kwargs)


def build_model(params: Params):
    """full: every weight trains. lora: the base is frozen; LoRA adapters and the fresh head train."""
    model = load_classifier(params.sentiment.model.name, params.sentiment.labels, params.sentiment.model.pooling)
    return (
        lora.wrap(model, params.sentiment.train.lora, "classify") if params.sentiment.train.method == "lora" else model
    )


def training_args(params: Params, checkpoints: Path, precision: str):
    import torch
    from transformers import TrainingArguments

    t = params.sentiment.train
    cuda = torch.cuda.is_available()
    reset_mixed_precision(precision)
    return TrainingArguments(
        output_dir=str(checkpoints),
        seed=params.sentiment.seed,
        data_seed=params.sentiment.seed,
        num_train_epochs=t.epochs,
        per_device_eval_batch_size=t.eval_batch_size,  # per process: only memory depends on it
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_ratio=t.warmup_ratio,
        lr_scheduler_type="linear",
        max_grad_norm=t.max_grad_norm,
        optim=t.optimizer,
        group_by_length=t.group_by_length,
        eval_strategy="steps",
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        report_to=[],
        dataloader_num_workers=0,
        disable_tqdm=False,
        # `|`: both may set use_cpu (bf16 on the CPU; DDP on the CPU)
        **(precision_args(precision, cuda) | distributed.trainer_args(t.batch_size, "sentiment.train", cuda)),
    )


def train(params: Params, tokenized: Path, out: Path, checkpoints: Path) -> dict:
    import torch
    from transformers import DataCollatorWithPadding, set_seed

    if params.sentiment.train.num_threads:
        torch.set_num_threads(params.sentiment.train.num_threads)
    precision, cpu_bf16_flags = device_precision(params.sentiment.train.precision, "sentiment.train.precision")
    tokenizer = load_tokenizer(params.sentiment.model.name)
    # The Trainer seeds only once the model exists: the fresh head (and LoRA's A matrices) would start
    # from a different random draw in every process, and no two runs would agree.
    set_seed(params.sentiment.seed)
    model = build_model(params)
    counts = lora.parameter_counts(model)  # before the merge, which leaves nothing to count as trainable
    train_set = TokenDataset(pd.read_parquet(tokenized / "train.parquet"))
    eval_set = TokenDataset(pd.read_parquet(tokenized / "eval.parquet"))
    trainer = make_trainer(
        params.sentiment.train.head_learning_rate,
        model=model,
        args=training_args(params, checkpoints, precision),
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=accuracy,
    )
    resume = resume_from(checkpoints, fingerprint(params, tokenized, precision))
    start_step = int(resume.rsplit("-", 1)[-1]) if resume else 0
    log.info(
        "training %d rows on %s (%s)%s",
        len(train_set),
        "cuda" if torch.cuda.is_available() else "cpu",
        precision,
        f", resuming from {resume}" if resume else "",
    )
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    wall = time.perf_counter() - started
    final = trainer.evaluate()
    save_model(trainer.model, tokenizer, out, {"labels.json": params.sentiment.labels})  # config has id2label
    steps_run = trainer.state.global_step - start_step
    samples = min(steps_run * params.sentiment.train.batch_size, len(train_set) * params.sentiment.train.epochs)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    metrics = {
        "samples_per_second": round(samples / result.metrics["train_runtime"], 2) if steps_run else None,
        "train_runtime_s": round(result.metrics["train_runtime"], 2),
        "wall_time_s": round(wall, 2),
        "train_loss": round(result.training_loss, 4),
        "eval_accuracy": round(final["eval_accuracy"], 4),
        "eval_loss": round(final["eval_loss"], 4),
        "global_step": trainer.state.global_step,
        "resumed_from_step": start_step,
        "train_rows": len(train_set),
        "precision": precision,
        "cpu_bf16_flags": cpu_bf16_flags,
        "method": params.sentiment.train.method,
        **counts,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mb": round(peak_rss, 1),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
    }
    return {
        "metrics": metrics,
        "log_history": trainer.state.log_history + [{"step": trainer.state.global_step, **final}],
    }
