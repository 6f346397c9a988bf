"""Read a labeled text source into raw rows, keeping every row it cannot read with its reason.

A source is a file (.tsv/.csv/.jsonl/.parquet), a folder with train.* and dev.* (GLUE layout),
or a Hugging Face Hub dataset id (downloaded when online).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from textops.errors import PipelineError

SUFFIXES = (".tsv", ".csv", ".jsonl", ".parquet")
EVAL_NAMES = ("dev", "validation", "eval")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class SourceError(PipelineError):
    """The source as a whole cannot be used: names the file and what is wrong."""


@dataclass(frozen=True)
class Rejected:
    split: str
    file: str
    line: int  # 1-based line in the file (row number for Parquet); 0 when not tied to a line
    reason: str
    text: str = ""
    label: str = ""


@dataclass
class RawSplit:
    """Rows as read: text and label still raw (strings), with the file and line they came from."""

    name: str
    file: str
    rows: pd.DataFrame  # columns: text, label_raw, file, line
    rejected: list[Rejected] = field(default_factory=list)


def _frame(records: list[tuple[str, str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame(records, columns=["text", "label_raw", "file", "line"])


def _decoded_lines(path: Path, split: str, rejected: list[Rejected]) -> list[tuple[int, str]]:
    data = path.read_bytes()
    if not data.strip():
        raise SourceError(f"{path}: file is empty")
    out = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.removesuffix(b"\r")
        if number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        try:
            out.append((number, raw.decode("utf-8")))
        except UnicodeDecodeError as error:
            rejected.append(
                Rejected(
                    split,
                    str(path),
                    number,
                    f"undecodable bytes (not UTF-8: {error.reason} at byte {error.start})",
                    raw.decode("utf-8", errors="replace"),
                )
            )
    return out


def _columns(path: Path, header: list[str], text_column: str, label_column: str) -> tuple[int, int]:
    missing = [c for c in (text_column, label_column) if c not in header]
    if missing:
        raise SourceError(
            f"{path}: missing column(s) {missing}; the header has {header} "
            f"(set sentiment.prepare.text_column / sentiment.prepare.label_column)"
        )
    return header.index(text_column), header.index(label_column)


def _read_delimited(path: Path, split: str, text_column: str, label_column: str, delimiter: str) -> RawSplit:
    rejected: list[Rejected] = []
    lines = [(n, s) for n, s in _decoded_lines(path, split, rejected)]
    while lines and lines[-1][1] == "":
        lines.pop()  # a trailing newline is not a row (a line of blanks or tabs is, and gets quarantined)
    if not lines:
        raise SourceError(f"{path}: file is empty")
    if delimiter == "\t":
        # GLUE TSVs are unquoted: a quote character is part of the text.
        parsed = [(n, s.split("\t")) for n, s in lines]
    else:
        parsed = [(n, next(csv.reader(io.StringIO(s)), [])) for n, s in lines]
    (_, header), body = parsed[0], parsed[1:]
    header = [h.strip() for h in header]
    ti, li = _columns(path, header, text_column, label_column)
    records = []
    for number, fields in body:
        if len(fields) != len(header):
            rejected.append(
                Rejected(
                    split,
                    str(path),
                    number,
                    f"malformed row: {len(fields)} fields, header has {len(header)}",
                    delimiter.join(fields),
                )
            )
            continue
        records.append((fields[ti], fields[li].strip(), str(path), number))
    return RawSplit(split, str(path), _frame(records), rejected)


def _read_jsonl(path: Path, split: str, text_column: str, label_column: str) -> RawSplit:
    rejected: list[Rejected] = []
    records, seen_keys = [], set()
    for number, line in _decoded_lines(path, split, rejected):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as error:
            rejected.append(Rejected(split, str(path), number, f"malformed row: not JSON ({error.msg})", line))
            continue
        if not isinstance(obj, dict):
            rejected.append(Rejected(split, str(path), number, "malformed row: not a JSON object", line))
            continue
        seen_keys |= obj.keys()
        if text_column not in obj or label_column not in obj:
            rejected.append(
                Rejected(split, str(path), number, f"malformed row: lacks '{text_column}' or '{label_column}'", line)
            )
            continue
        text = obj[text_column]
        if not isinstance(text, str):
            rejected.append(Rejected(split, str(path), number, f"malformed row: '{text_column}' is not a string", line))
            continue
        records.append((text, str(obj[label_column]).strip(), str(path), number))
    if not records and not rejected:
        raise SourceError(f"{path}: file is empty")
    if seen_keys:
        _columns(path, sorted(seen_keys), text_column, label_column)
    return RawSplit(split, str(path), _frame(records), rejected)


def label_text(label) -> str:
    """Raw label as text; an integer column holding a null comes back from pandas as floats (1.0)."""
    if label is None or (isinstance(label, float) and pd.isna(label)):
        return ""
    if isinstance(label, float) and label.is_integer():
        return str(int(label))
    return str(label).strip()


def _read_parquet(path: Path, split: str, text_column: str, label_column: str) -> RawSplit:
    try:
        table = pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types for a broken file
        raise SourceError(f"{path}: not a readable Parquet file ({error})") from None
    _columns(path, list(table.columns), text_column, label_column)
    if table.empty:
        raise SourceError(f"{path}: file is empty")
    rejected, records = [], []
    for number, (text, label) in enumerate(zip(table[text_column], table[label_column]), start=1):
        if not isinstance(text, str):
            null = text is None or pd.isna(text)
            reason = "empty text (null)" if null else "malformed row: text is not a string"
            rejected.append(Rejected(split, str(path), number, reason, "" if null else str(text)))
            continue
        records.append((text, label_text(label), str(path), number))
    return RawSplit(split, str(path), _frame(records), rejected)


def read_split(path: Path, split: str, text_column: str, label_column: str) -> RawSplit:
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        return _read_delimited(path, split, text_column, label_column, "\t")
    if suffix == ".csv":
        return _read_delimited(path, split, text_column, label_column, ",")
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path, split, text_column, label_column)
    if suffix == ".parquet":
        return _read_parquet(path, split, text_column, label_column)
    raise SourceError(f"{path}: unsupported file type '{suffix}' (use one of {', '.join(SUFFIXES)})")


def _find(folder: Path, names: tuple[str, ...]) -> Path | None:
    hits = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in SUFFIXES
        and any(p.name.lower().startswith(n + ".") or p.name.lower().startswith(n + "-") for n in names)
    )
    return hits[0] if hits else None


def locate(source: str, cache_dir: Path | None = None) -> dict[str, Path]:
    """Map split name ('train', and 'eval' when the source has one) to a file."""
    path = Path(source)
    if path.is_file():
        return {"train": path}
    if path.is_dir():
        train = _find(path, ("train",))
        if train is None:
            raise SourceError(f"{path}: folder has no train.* file ({', '.join(SUFFIXES)})")
        found = {"train": train}
        dev = _find(path, EVAL_NAMES)
        if dev is not None:
            found["eval"] = dev
        return found
    # A Hub id looks like owner/name; a missing local path often does too, so rule those out first.
    looks_local = path.suffix.lower() in SUFFIXES or source.startswith((".", "/", "~")) or path.parent.is_dir()
    if HUB_ID.match(source) and not looks_local:
        return locate(str(download_hub_dataset(source, cache_dir)))
    raise SourceError(
        f"sentiment.prepare.source '{source}': no such file or folder (and not a Hub dataset id like 'stanfordnlp/sst2')"
    )


def download_hub_dataset(repo_id: str, cache_dir: Path | None = None) -> Path:
    """Fetch a dataset repository's data files from the Hugging Face Hub (needs internet)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id, repo_type="dataset", cache_dir=cache_dir, allow_patterns=[f"*{s}" for s in SUFFIXES]
            )
        )
    except Exception as error:
        raise SourceError(
            f"sentiment.prepare.source '{repo_id}': could not download it from the Hugging Face Hub "
            f"({type(error).__name__}: {error}). Offline? Point sentiment.prepare.source at a local file or folder."
        ) from None


def hash_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for p in sorted(paths):
        digest.update(p.name.encode())
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
