"""story_evaluate: perplexity on the eval tokens, sample generations per decoding strategy, and a gate.

In:  --model (story_train's out: GPT2LMHeadModel and tokenizer), --tokenized/eval.npy.
Out: --report-file (eval loss per token and per character, perplexity; per strategy: repetition rate, distinct-1/2 of the generated
     words), --report (markdown: each prompt x seed x strategy with its text), --figures (attention/prompt_NN.png:
     the last layer's causal attention over each prompt, as the model reads it after <|endoftext|>; also
     logged to MLflow).
     --metrics: the report's headline numbers (dvc metrics show).
Params: story.seed, story.evaluate.* (prompts, seeds, max_new_tokens, strategies, the gate).
Gate: perplexity above story.evaluate.max_perplexity fails the stage (after the reports are written).
Run: python -m stages.story_evaluate --model ... --tokenized ... --metrics ... --report-file ... --report ... --figures ...
     (dvc.yaml passes the paths)
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from textops import cli
from textops.atomic import atomic_dir, atomic_write_text
from textops.errors import GateFailed, PipelineError
from textops.params import GenerationParams, Params
from textops.plots import attention_png
from textops.story.corpus import SEPARATOR
from textops.story.generation import document_ids
from textops.story.lm import (
    distinct,
    eval_blocks,
    generation_config,
    mean_loss,
    passive_thread_wait,
    perplexity_of,
    repetition_rate,
    torch_logits,
)
from textops.tokenizers import labels
from textops.tracking import ModelRun, numeric

log = logging.getLogger("textops.story_evaluate")


def load(model_dir: Path):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    if not (model_dir / "config.json").is_file():
        raise PipelineError(f"{model_dir} holds no model (config.json missing): run story_train first")
    model = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def attention_figures(model_dir: Path, tokenizer, prompts: list[str], figures: Path) -> list[Path]:
    """One PNG per prompt: the last layer's attention (heads and their mean) over the prompt's tokens, the
    <|endoftext|> that starts a document first; a prompt longer than the context keeps its last tokens."""
    import torch
    from transformers import GPT2LMHeadModel

    # SDPA kernels return no attention weights; the eager path does.
    model = GPT2LMHeadModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    paths = []
    for i, prompt in enumerate(prompts):
        ids = document_ids(tokenizer, prompt, tokenizer.eos_token_id)[-model.config.n_positions :]
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([ids]), output_attentions=True)
        path = figures / "attention" / f"prompt_{i:02d}.png"
        attention_png(out.attentions[-1][0].float().numpy(), labels(tokenizer, ids), path, prompt, causal=True)
        paths.append(path)
    return paths


def chars_predicted(tokenizer, blocks: np.ndarray) -> int:
    """Characters the predicted tokens (all but each block's first) spell. A document break counts as the
    blank line it replaced, so loss per character compares with character models of the raw text (nanoGPT)
    and across tokenizers."""
    total = 0
    for row in blocks[:, 1:]:
        text = tokenizer.decode(row.tolist()).replace(tokenizer.eos_token, SEPARATOR)
        total += len(text.replace(tokenizer.unk_token, "?") if tokenizer.unk_token else text)
    return total


def generate(model, tokenizer, prompt: str, seed: int, g: GenerationParams, max_new_tokens: int) -> dict:
    """One continuation; new tokens are capped so prompt + continuation fit the model's positions."""
    import torch
    from transformers import set_seed

    ids = torch.tensor([document_ids(tokenizer, prompt, tokenizer.eos_token_id)])
    enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    room = model.config.n_positions - ids.shape[1]
    if room < 1:
        raise PipelineError(
            f"story.evaluate.prompts: '{prompt[:40]}' fills the model's {model.config.n_positions} "
            f"positions; shorten it"
        )
    set_seed(seed)
    with torch.inference_mode():
        out = model.generate(
            **enc, generation_config=generation_config(g, min(max_new_tokens, room), tokenizer.eos_token_id)
        )
    new = out[0, enc["input_ids"].shape[1] :]
    return {
        "prompt": prompt,
        "seed": seed,
        "continuation": tokenizer.decode(new, skip_special_tokens=True),
        "new_tokens": int(new.numel()),
        "capped": max_new_tokens > room,
    }


def generations(model, tokenizer, params: Params) -> dict[str, list[dict]]:
    e = params.story.evaluate
    return {
        name: [
            generate(model, tokenizer, prompt, seed, g, e.max_new_tokens) for prompt in e.prompts for seed in e.seeds
        ]
        for name, g in e.strategies.items()
    }


def strategy_stats(samples: list[dict]) -> dict:
    texts = [s["continuation"] for s in samples]
    return {
        "repetition_rate": repetition_rate(texts),
        "distinct_1": distinct(texts, 1),
        "distinct_2": distinct(texts, 2),
        "mean_new_tokens": round(float(np.mean([s["new_tokens"] for s in samples])), 1),
    }


def render_report(report: dict, samples: dict[str, list[dict]], params: Params) -> str:
    e = params.story.evaluate
    lines = [
        "# Story generations",
        "",
        f"Eval loss {report['eval_loss']:.4f} per token ({report['eval_loss_per_char']:.4f} per character), "
        f"perplexity {report['perplexity']:.3f} over {report['eval_blocks']} blocks of {report['context']} tokens. Up to {e.max_new_tokens} new tokens per prompt "
        "(the prompt is in bold).",
        "",
        "| strategy | settings | repetition rate | distinct-1 | distinct-2 |",
        "|---|---|---|---|---|",
    ]
    for name, stats in report["strategies"].items():
        settings = ", ".join(f"{k}={v}" for k, v in e.strategies[name].model_dump().items())
        lines.append(
            f"| {name} | {settings} | {stats['repetition_rate']} | {stats['distinct_1']} | {stats['distinct_2']} |"
        )
    for prompt in e.prompts:
        lines += ["", f"## {prompt}"]
        for name, rows in samples.items():
            for row in (r for r in rows if r["prompt"] == prompt):
                capped = " (capped to fit the context)" if row["capped"] else ""
                text = f"**{prompt}**{row['continuation']}".replace("\n", "  \n")
                lines += ["", f"### {name}, seed {row['seed']}{capped}", "", text]
    return "\n".join(lines) + "\n"


def headline(report: dict) -> dict:
    return {"perplexity": report["perplexity"]}


def run(
    params: Params, model: Path, tokenized: Path, metrics: Path, report: Path, report_file: Path, figures: Path
) -> None:
    e = params.story.evaluate
    lm, tokenizer = load(model)
    blocks = eval_blocks(np.load(tokenized / "eval.npy"), lm.config.n_positions)
    loss = mean_loss(torch_logits(lm), blocks, e.batch_size)
    samples = generations(lm, tokenizer, params)
    per_char = loss * blocks.shape[0] * (blocks.shape[1] - 1) / chars_predicted(tokenizer, blocks)
    result = {
        "eval_loss": round(loss, 4),
        "perplexity": round(perplexity_of(loss), 3),
        "eval_loss_per_char": round(per_char, 4),
        "eval_blocks": len(blocks),
        "context": lm.config.n_positions,
        "eval_tokens": int(blocks.size),
        "strategies": {name: strategy_stats(rows) for name, rows in samples.items()},
    }
    cli.write_results(report_file, metrics, result, headline(result))
    atomic_write_text(report, render_report(result, samples, params))
    with atomic_dir(figures) as folder:
        attention_figures(model, tokenizer, e.prompts, folder)
    tracker = ModelRun(params.story.tracking.enabled, params.story.tracking.experiment).reopen(model)
    tracker.log_metrics(numeric("eval", result))
    tracker.log_artifact(report, "evaluate")
    tracker.log_artifact(figures, "evaluate")
    log.info(
        "eval loss %.4f, perplexity %.3f on %d blocks; %s",
        loss,
        result["perplexity"],
        len(blocks),
        result["strategies"],
    )
    if result["perplexity"] > e.max_perplexity:
        raise GateFailed(
            f"eval perplexity {result['perplexity']:.3f} is above story.evaluate.max_perplexity="
            f"{e.max_perplexity} (raise it in params.yaml only if that is intended)"
        )


def main(argv=None) -> int:
    passive_thread_wait()
    return cli.main(
        "story_evaluate", __doc__, ["model", "tokenized", "metrics", "report", "report-file", "figures"], run, argv
    )


if __name__ == "__main__":
    raise SystemExit(main())
