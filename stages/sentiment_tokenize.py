"""sentiment_tokenize: prepared text -> token ids with the base model's tokenizer, and a token-length report.

In:  --prepared/{train,eval}.parquet.
Out: --out/{train,eval}.parquet (input_ids, label id); --report-file (token lengths; how many texts
     sentiment.model.max_length truncates).
     --metrics: the report's headline numbers (dvc metrics show).
Params: sentiment.labels, sentiment.model.name, sentiment.model.max_length.
Run: python -m stages.sentiment_tokenize --prepared ... --out ... --metrics ... --report-file ... (dvc.yaml passes the paths)
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from textops import cli
from textops.errors import PipelineError
from textops.modeling import load_tokenizer
from textops.params import Params

log = logging.getLogger("textops.tokenize")
SPLITS = ("train", "eval")


def length_report(lengths: np.ndarray, max_length: int) -> dict:
    truncated = int((lengths > max_length).sum())
    return {
        "texts": int(lengths.size),
        "mean": round(float(lengths.mean()), 2),
        "p50": int(np.percentile(lengths, 50)),
        "p95": int(np.percentile(lengths, 95)),
        "max": int(lengths.max()),
        "truncated": truncated,
        "truncated_fraction": round(truncated / lengths.size, 4),
    }


def encode(frame: pd.DataFrame, tokenizer, max_length: int, labels: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Token ids truncated to max_length; also the untruncated lengths, for the report."""
    label_ids = {label: i for i, label in enumerate(labels)}
    unknown = set(frame["label"]) - set(label_ids)
    if unknown:
        raise PipelineError(f"prepared data has labels {sorted(unknown)} not in params labels {labels}; rerun prepare")
    full = tokenizer(list(frame["text"]), truncation=False, add_special_tokens=True)["input_ids"]
    lengths = np.array([len(ids) for ids in full])
    ids = [row[: max_length - 1] + [row[-1]] if len(row) > max_length else row for row in full]  # keep [SEP]
    out = pd.DataFrame(
        {
            "input_ids": [np.asarray(i, dtype=np.int32) for i in ids],
            "label": frame["label"].map(label_ids).astype("int64"),
        }
    )
    return out, lengths


def headline(report: dict) -> dict:
    """tokenize's number for `dvc metrics show`: the share of train texts cut at sentiment.model.max_length."""
    return {"truncated_fraction": report["train"]["truncated_fraction"]}


def run(params: Params, prepared: Path, out: Path, metrics: Path, report_file: Path) -> None:
    tokenizer = load_tokenizer(params.sentiment.model.name)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "tokenizer": type(tokenizer).__name__,
        "vocab_size": tokenizer.vocab_size,
        "max_length": params.sentiment.model.max_length,
    }
    for split in SPLITS:
        frame = pd.read_parquet(prepared / f"{split}.parquet")
        encoded, lengths = encode(frame, tokenizer, params.sentiment.model.max_length, params.sentiment.labels)
        encoded.to_parquet(out / f"{split}.parquet", index=False)
        report[split] = length_report(lengths, params.sentiment.model.max_length)
        log.info("%s: %s", split, report[split])
    cli.write_results(report_file, metrics, report, headline(report))


def main(argv=None) -> int:
    return cli.main("sentiment_tokenize", __doc__, ["prepared", "out", "metrics", "report-file"], run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
