"""sentiment_tokenize: prepared text -> token ids with the base model's tokenizer, and a token-length report.

In:  --prepared/{train,eval}.parquet.
Out: --out/{train,eval}.parquet (input_ids, label id); --report-file (token lengths; how many texts
     sentiment.model.max_length truncates; the tokenizer comparison below); --report (markdown: the
     truncation summary and one table of the pieces, tokens per word and unknown tokens of the model's
     WordPiece and of a byte-level BPE, on sentiment.tokenize.compare_sentences and on the eval split;
     textops.tokenizers, as story_tokenize's).
     --metrics: the report's headline numbers (dvc metrics show).
Params: sentiment.labels, sentiment.model.name, sentiment.model.max_length, sentiment.tokenize.* (the
        sentences; bpe_vocab_size and bpe_min_frequency of the comparison BPE).
Run: python -m stages.sentiment_tokenize --prepared ... --out ... --metrics ... --report-file ... --report ...
     (dvc.yaml passes the paths)

The byte-level BPE is trained here, on this task's own train split (textops.tokenizers.train_byte_level_bpe,
the training story.tokenize.kind bpe uses), for the comparison only: it is not saved, and the model and
--out keep the WordPiece. It is not the story task's BPE: a stage reads only its declared inputs, and
reading story_tokenize's output would make the sentiment DAG (and `dvc repro sentiment_package`, and the
sentiment flow) run the story stages first. story_tokenize's own report sets the story BPE beside this
WordPiece.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from textops import cli
from textops.atomic import atomic_dir, atomic_write_text
from textops.errors import PipelineError
from textops.modeling import load_tokenizer
from textops.params import Params
from textops.tokenizers import algorithm, compare, fast, render_table, train_byte_level_bpe

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


def render_report(report: dict, name: str) -> str:
    bpe = report["bpe"]
    lines = [
        "# Sentiment tokenizer",
        "",
        f"`{name}`: {report['algorithm']}, vocabulary {report['vocab_size']}. Texts longer than "
        f"sentiment.model.max_length={report['max_length']} tokens are cut: train {report['train']['truncated']} "
        f"of {report['train']['texts']}, eval {report['eval']['truncated']} of {report['eval']['texts']} "
        f"(p95 length {report['train']['p95']} / {report['eval']['p95']}).",
        "",
        "## The model's WordPiece beside a byte-level BPE",
        "",
        f"The byte-level BPE is trained on the sentiment train split ({bpe['train_texts']} texts; vocabulary "
        f"{bpe['vocab_size']} of sentiment.tokenize.bpe_vocab_size={bpe['requested_vocab_size']}, "
        f"min frequency {bpe['min_frequency']}) for this comparison only: the model still uses the WordPiece. "
        "The story task's own BPE beside this WordPiece: story_tokenize's report (see dvc.yaml).",
        "",
        "Pieces are joined by ` | `; `##` continues a WordPiece word, `␣` is a space inside a BPE piece. Words "
        "are whitespace-separated; unknown counts the unknown token ([UNK]; a byte-level BPE has none).",
        "",
        *render_table(report["compare"]),
    ]
    return "\n".join(lines) + "\n"


def run(
    params: Params, prepared: Path, out: Path, metrics: Path, report_file: Path, report: Path | None = None
) -> None:
    """report: the markdown report (dvc.yaml always passes it; None skips it, for callers that want only the
    token ids)."""
    name = params.sentiment.model.name
    tokenizer = load_tokenizer(name)
    result = {
        "tokenizer": type(tokenizer).__name__,
        "algorithm": algorithm(tokenizer),
        "vocab_size": tokenizer.vocab_size,
        "max_length": params.sentiment.model.max_length,
    }
    frames = {}
    with atomic_dir(out) as folder:
        for split in SPLITS:
            frames[split] = pd.read_parquet(prepared / f"{split}.parquet")
            encoded, lengths = encode(
                frames[split], tokenizer, params.sentiment.model.max_length, params.sentiment.labels
            )
            encoded.to_parquet(folder / f"{split}.parquet", index=False)
            result[split] = length_report(lengths, params.sentiment.model.max_length)
            log.info("%s: %s", split, result[split])
    t = params.sentiment.tokenize
    train_texts = list(frames["train"]["text"])
    bpe = fast(train_byte_level_bpe(train_texts, t.bpe_vocab_size, t.bpe_min_frequency))
    result["bpe"] = {
        "train_texts": len(train_texts),
        "requested_vocab_size": t.bpe_vocab_size,
        "vocab_size": len(bpe),
        "min_frequency": t.bpe_min_frequency,
    }
    result["compare"] = compare(
        {f"sentiment {result['algorithm']}": tokenizer, f"{algorithm(bpe)} (sentiment train split)": bpe},
        t.compare_sentences,
        list(frames["eval"]["text"]),
    )
    cli.write_results(report_file, metrics, result, headline(result))
    if report is not None:
        atomic_write_text(report, render_report(result, name))


def main(argv=None) -> int:
    return cli.main("sentiment_tokenize", __doc__, ["prepared", "out", "metrics", "report-file", "report"], run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
