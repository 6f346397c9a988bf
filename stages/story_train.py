"""story_train: train a GPT-2 language model on the token streams with the transformers Trainer.

In:  --tokenized/{train,eval}.npy and tokenizer/, --prepare-report (data source and hash, for MLflow).
Out: --out (a plain GPT2LMHeadModel in safetensors, n_positions = story.model.context, plus the tokenizer;
     story.train.method lora merges its adapters first), --checkpoints (kept across kills: a rerun resumes
     from the last complete one when data and params match), --curve/loss.csv (step,loss,learning_rate)
     and eval.csv (step,eval_loss), --report-file (losses, perplexity, speed, memory, parameter counts).
     Opens the model's MLflow run and records its id in --out/mlflow_run.json.
     --metrics: the report's headline numbers (dvc metrics show).
Params: story.seed, story.model.*, story.train.*, story.tracking.*.
     story.train.processes over 1: the stage re-launches itself under torchrun and trains with DDP
     (textops/distributed.py); rank 0 alone writes the outputs and the MLflow run.
Run: python -m stages.story_train --tokenized ... --prepare-report ... --out ... --checkpoints ... --curve ... --metrics ... --report-file ...
"""

from __future__ import annotations

from pathlib import Path

from textops.params import Params, flatten
from textops.story.lm import passive_thread_wait
from textops.story.training import curves, train
from textops.training import main as train_main
from textops.training import record_training, start_run

# What `dvc metrics show` gets from the report (key names shared by both train stages).
HEADLINE = ("samples_per_second", "wall_time_s", "train_loss", "eval_loss", "eval_perplexity")


def run(
    params: Params,
    tokenized: Path,
    prepare_report: Path,
    out: Path,
    checkpoints: Path,
    curve: Path,
    metrics: Path,
    report_file: Path,
) -> None:
    s = params.story
    base = Path(s.model.base).name if s.model.base else "scratch"
    run_name = f"story-{base}-{s.train.method}"
    tracker = start_run(
        s.tracking, "story", run_name, prepare_report, s.model.base or "gpt2-from-scratch", flatten(params)
    )
    record_training(
        tracker,
        lambda model_dir: train(params, tokenized, model_dir, checkpoints),
        curves,
        out,
        checkpoints,
        curve,
        metrics,
        report_file,
        HEADLINE,
    )


def main(argv=None) -> int:
    passive_thread_wait()
    return train_main("story", __doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
