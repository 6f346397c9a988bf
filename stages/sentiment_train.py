"""sentiment_train: fine-tune a sequence classifier with the transformers Trainer.

In:  --tokenized/{train,eval}.parquet, --prepare-report (data source and hash, for the MLflow run).
Out: --out (safetensors model, tokenizer, labels.json; always a plain model: sentiment.train.method lora merges
     its adapters first), --checkpoints (kept across kills: a rerun resumes from the last one when data
     and params match), --curve/{loss,eval}.csv (DVC plots), --report-file (samples/s, wall time, peak
     memory, trainable parameters, final eval accuracy). Opens the model's MLflow run (params,
     per-step curves, tags) and records its id in --out/mlflow_run.json.
     --metrics: the report's headline numbers (dvc metrics show).
Params: sentiment.seed, sentiment.labels, sentiment.model.*, sentiment.train.* (sentiment.train.method full or lora, sentiment.train.lora).
     sentiment.train.processes over 1: the stage re-launches itself under torchrun and trains with DDP
     (textops/distributed.py); rank 0 alone writes the outputs and the MLflow run.
Run: python -m stages.sentiment_train --tokenized ... --out ... --checkpoints ... --curve ... --metrics ... --report-file ...
"""

from __future__ import annotations

from pathlib import Path

from textops.params import Params, flatten
from textops.sentiment.training import curves, train
from textops.training import main as train_main
from textops.training import record_training, start_run

# What `dvc metrics show` gets from the report (key names shared by both train stages).
HEADLINE = ("samples_per_second", "wall_time_s", "train_loss", "eval_loss", "eval_accuracy")


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
    s = params.sentiment
    tracker = start_run(
        s.tracking, "sentiment", f"sentiment-{Path(s.model.name).name}", prepare_report, s.model.name, flatten(params)
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
    return train_main("sentiment", __doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
