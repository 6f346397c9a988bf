"""One epoch of the train stage's recipe on a tokenized split, for a (pooling, head rate, seed): FP32 dev accuracy.

The sweep behind params.yaml's notes on model.pooling and train.head_learning_rate. It trains through the
stage's own pieces (params.yaml, build_model, training_args, make_trainer) without DVC, MLflow or kept
checkpoints; only the keys below change.
Run: python -m bench.training.head_sweep --tokenized <run>/outputs/sentiment/tokenized --pooling mean
     --head-lr 1e-3 --seed 1
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from bench import ROOT
from textops.modeling import load_tokenizer
from textops.params import load_params
from textops.sentiment.training import TokenDataset, accuracy, build_model, make_trainer, training_args


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenized", type=Path, required=True, help="the tokenize stage's output folder")
    ap.add_argument("--pooling", choices=["cls", "mean"], default="cls")
    ap.add_argument("--head-lr", type=float, default=None, help="default: the body's rate")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    from transformers import DataCollatorWithPadding, set_seed

    base = load_params(ROOT / "params.yaml")
    s = base.sentiment
    sentiment = s.model_copy(
        update={
            "seed": args.seed,
            "model": s.model.model_copy(update={"pooling": args.pooling}),
            "train": s.train.model_copy(
                update={
                    "epochs": 1,
                    "batch_size": args.batch,
                    "learning_rate": args.lr,
                    "head_learning_rate": args.head_lr,
                    "method": "full",
                }
            ),
        }
    )
    params = base.model_copy(update={"sentiment": sentiment})
    tokenizer = load_tokenizer(params.sentiment.model.name)
    set_seed(params.sentiment.seed)  # before the head is drawn, as the stage does
    model = build_model(params)
    train = TokenDataset(pd.read_parquet(args.tokenized / "train.parquet"))
    dev = TokenDataset(pd.read_parquet(args.tokenized / "eval.parquet"))
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(
            params.sentiment.train.head_learning_rate,
            model=model,
            args=training_args(params, Path(out), "fp32"),
            train_dataset=train,
            eval_dataset=dev,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=accuracy,
        )
        started = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - started
        result = trainer.evaluate()
    print(
        json.dumps(
            {
                **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "model": params.sentiment.model.name,
                "dev_accuracy": round(result["eval_accuracy"], 4),
                "train_s": round(train_s),
            }
        )
    )


if __name__ == "__main__":
    main()
