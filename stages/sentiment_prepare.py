"""sentiment_prepare: raw labeled text -> validated text/label splits.

In:  params sentiment.prepare.source (file, GLUE-style folder, or Hub dataset id).
Out: --out/{train,eval}.parquet (columns text,label), quarantine.jsonl (every dropped row with its
     reason and line), validation.json + validation.md (Great Expectations); --report-file (row counts).
     --metrics: the report's headline numbers (dvc metrics show).
Params: sentiment.labels, sentiment.seed, sentiment.prepare.*.
Run: python -m stages.sentiment_prepare --out ... --metrics ... --report-file ... (dvc.yaml passes the paths)
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from textops import cli
from textops.atomic import atomic_dir
from textops.params import Params, PrepareParams
from textops.sources import RawSplit, Rejected, hash_files, locate, read_split
from textops.validation import Bounds, ValidationFailed, failures, render_markdown, validate_splits

log = logging.getLogger("textops.prepare")
ROW_PROBLEMS = (
    "malformed row",
    "undecodable bytes",
    "unknown label",
    "empty text",
    "whitespace-only text",
    "text too short",
    "text too long",
)


def row_problem(text: str, label_raw: str, p: PrepareParams, labels: list[str]) -> str | None:
    """Why one row cannot be used, or None."""
    if "\x00" in text:
        return "malformed row: NUL byte in text"
    if text == "":
        return "empty text"
    if not text.strip():
        return "whitespace-only text"
    if label_raw not in p.label_map and label_raw not in labels:
        return f"unknown label '{label_raw}' (known: {sorted(set(p.label_map) | set(labels))}; see sentiment.prepare.label_map)"
    n = len(text.strip())
    if n < p.min_chars:
        return f"text too short ({n} < sentiment.prepare.min_chars={p.min_chars})"
    if n > p.max_chars:
        return f"text too long ({n} > sentiment.prepare.max_chars={p.max_chars})"
    return None


def normalise(raw: RawSplit, p: PrepareParams, labels: list[str]) -> tuple[pd.DataFrame, list[Rejected]]:
    """Map to text,label (label names), keeping each unusable row with its reason."""
    rejected = list(raw.rejected)
    keep = []
    for row in raw.rows.itertuples(index=False):
        problem = row_problem(row.text, row.label_raw, p, labels)
        if problem:
            rejected.append(Rejected(raw.name, row.file, row.line, problem, row.text, row.label_raw))
        else:
            keep.append((row.text.strip(), p.label_map.get(row.label_raw, row.label_raw), row.file, row.line))
    return pd.DataFrame(keep, columns=["text", "label", "file", "line"]), rejected


def check_bad_fraction(raw: RawSplit, rejected: list[Rejected], max_fraction: float) -> None:
    total = len(raw.rows) + len(raw.rejected)
    bad = len(rejected)
    if total and bad / total > max_fraction:
        reasons = Counter(r.reason.split(" (")[0].split(":")[0] for r in rejected).most_common(3)
        raise ValidationFailed(
            f"{raw.file}: {bad} of {total} rows ({bad / total:.1%}) are unusable, over "
            f"sentiment.prepare.max_bad_fraction={max_fraction}; most common: {reasons}. "
            f"See the quarantine file for each row."
        )


def drop_duplicates(frame: pd.DataFrame, split: str) -> tuple[pd.DataFrame, list[Rejected]]:
    """Keep the first occurrence of each exact text inside a split."""
    first_line = frame.groupby("text", sort=False)["line"].transform("first")
    dup = frame["text"].duplicated(keep="first")
    rejected = [
        Rejected(split, r.file, r.line, f"duplicate text in split '{split}' (first at line {fl})", r.text, r.label)
        for r, fl in zip(frame[dup].itertuples(index=False), first_line[dup])
    ]
    return frame[~dup].reset_index(drop=True), rejected


def drop_leakage(train: pd.DataFrame, eval_: pd.DataFrame) -> tuple[pd.DataFrame, list[Rejected]]:
    """A text present in eval is removed from train, so eval measures unseen text."""
    leaked = train["text"].isin(set(eval_["text"]))
    rejected = [
        Rejected("train", r.file, r.line, "text also in the eval split (leakage)", r.text, r.label)
        for r in train[leaked].itertuples(index=False)
    ]
    return train[~leaked].reset_index(drop=True), rejected


def split_eval(frame: pd.DataFrame, fraction: float, seed: int, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified split for sources that ship no eval split (plain random when too small to stratify)."""
    n, classes = len(frame), frame["label"].nunique()
    n_eval = max(1, round(n * fraction))
    if n < 2 or n_eval >= n:
        raise ValidationFailed(
            f"{source}: {n} usable row(s) cannot be split into train and eval "
            f"(sentiment.prepare.eval_fraction={fraction}); add rows or give an eval split"
        )
    can_stratify = frame["label"].value_counts().min() >= 2 and classes <= n_eval <= n - classes
    train, eval_ = train_test_split(
        frame, test_size=n_eval, random_state=seed, stratify=frame["label"] if can_stratify else None
    )
    return train.reset_index(drop=True), eval_.reset_index(drop=True)


def sample_train(train: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    if max_rows is None or len(train) <= max_rows:
        return train
    return train.sample(n=max_rows, random_state=seed).reset_index(drop=True)


def reason_key(reason: str) -> str:
    for known in ROW_PROBLEMS + ("duplicate text", "text also in the eval split"):
        if reason.startswith(known):
            return known
    return reason


def prepare(params: Params) -> dict:
    """The pure-ish core: read, clean, split, validate. Returns frames, quarantine and report."""
    p = params.sentiment.prepare
    files = locate(p.source)
    splits: dict[str, pd.DataFrame] = {}
    quarantine: list[Rejected] = []
    for name, path in files.items():
        raw = read_split(path, name, p.text_column, p.label_column)
        frame, rejected = normalise(raw, p, params.sentiment.labels)
        check_bad_fraction(raw, rejected, p.max_bad_fraction)
        frame, dups = drop_duplicates(frame, name)
        splits[name] = frame
        quarantine += rejected + dups
    if "eval" not in splits:
        splits["train"], splits["eval"] = split_eval(
            splits["train"], p.eval_fraction, params.sentiment.seed, str(files["train"])
        )
    splits["train"], leaked = drop_leakage(splits["train"], splits["eval"])
    quarantine += leaked
    available = len(splits["train"])
    splits["train"] = sample_train(splits["train"], p.max_train_rows, params.sentiment.seed)
    for name, frame in splits.items():
        if frame.empty:
            raise ValidationFailed(
                f"{files.get(name, files['train'])}: split '{name}' has no usable rows "
                f"after cleaning (see the quarantine file)"
            )
    bounds = Bounds(params.sentiment.labels, p.min_chars, p.max_chars, p.min_class_fraction)
    validation = validate_splits({k: v[["text", "label"]] for k, v in splits.items()}, bounds)
    report = {
        "source": p.source,
        "source_files": {k: str(v) for k, v in files.items()},
        "data_hash": hash_files(list(files.values())),
        "rows": {name: len(frame) for name, frame in splits.items()},
        "train_rows_available": available,
        "train_rows_not_sampled": available - len(splits["train"]),
        "quarantined": len(quarantine),
        "quarantine_reasons": dict(Counter(reason_key(r.reason) for r in quarantine)),
        "class_counts": {name: frame["label"].value_counts().to_dict() for name, frame in splits.items()},
        "validation_success": validation["success"],
    }
    return {"splits": splits, "quarantine": quarantine, "validation": validation, "report": report}


def headline(report: dict) -> dict:
    """prepare's numbers for `dvc metrics show`; the whole report is in --report."""
    return {"rows": report["rows"], "quarantined": report["quarantined"]}


def run(params: Params, out: Path, metrics: Path, report_file: Path) -> None:
    result = prepare(params)
    report, validation = result["report"], result["validation"]
    counts = {
        "splits": {
            s: {"kept": n, "quarantined": sum(r.split == s for r in result["quarantine"])}
            for s, n in report["rows"].items()
        },
        "quarantine_reasons": report["quarantine_reasons"],
    }
    with atomic_dir(out) as folder:
        for name, frame in result["splits"].items():
            frame[["text", "label"]].to_parquet(folder / f"{name}.parquet", index=False)
        with open(folder / "quarantine.jsonl", "w", encoding="utf-8") as fh:
            for r in result["quarantine"]:
                fh.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
        cli.write_json(folder / "validation.json", validation)
        (folder / "validation.md").write_text(render_markdown(validation, counts), encoding="utf-8")
    cli.write_results(report_file, metrics, report, headline(report))
    log.info("rows %s, quarantined %d %s", report["rows"], report["quarantined"], report["quarantine_reasons"])
    if not validation["success"]:
        raise ValidationFailed(
            "data validation failed for "
            + ", ".join(report["source_files"].values())
            + ":\n  - "
            + "\n  - ".join(failures(validation))
            + f"\nReport: {out / 'validation.md'}"
        )


def main(argv=None) -> int:
    return cli.main("sentiment_prepare", __doc__, ["out", "metrics", "report-file"], run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
