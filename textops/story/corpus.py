"""Plain-text corpora for the story task: read, cut into documents, clean, split, validate (GX).

A document is a paragraph: text between blank lines. Inside a document, line breaks are kept
(verse and dialogue layout carry meaning a generator should learn); trailing spaces on each
line and Windows line ends are removed. Every document left out is kept with its file, line and
reason; the reason opens with a short key ("too long: ...") that the metrics count by.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textops.errors import PipelineError
from textops.params import StoryPrepareParams
from textops.validation import ValidationFailed

SEPARATOR = "\n\n"  # between documents in train.txt / eval.txt
BAD_KEYS = ("undecodable bytes", "too short", "too long", "disallowed character")  # count toward max_bad_fraction


class TooManyBad(ValidationFailed):
    """Over story.prepare.max_bad_fraction; carries the quarantine so the stage can still write it."""

    def __init__(self, message: str, quarantine: list[Quarantined]):
        super().__init__(message)
        self.quarantine = quarantine


@dataclass(frozen=True)
class Document:
    file: str
    line: int  # 1-based line of the document's first line in its file
    text: str


@dataclass(frozen=True)
class Quarantined:
    file: str
    line: int
    reason: str
    text: str


def reason_key(reason: str) -> str:
    return reason.split(":", 1)[0]


def source_files(source: str) -> list[Path]:
    """The .txt file, or every .txt file under a folder (sorted, so document order is stable)."""
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise PipelineError(f"story.prepare.source '{source}': folder holds no .txt files")
        return files
    raise PipelineError(f"story.prepare.source '{source}': no such file or folder")


def decoded_lines(path: Path) -> list[tuple[int, str | None, str]]:
    """(line number, text or None when not UTF-8, why) per line; the whole file failing is an error."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise PipelineError(f"{path}: file is UTF-16 (byte-order mark); convert it to UTF-8")
    if not data.strip():
        raise PipelineError(f"{path}: file is empty")
    out = []
    for number, raw in enumerate(data.removeprefix(b"\xef\xbb\xbf").split(b"\n"), start=1):
        try:
            out.append((number, raw.removesuffix(b"\r").decode("utf-8"), ""))
        except UnicodeDecodeError as error:
            out.append((number, None, f"{error.reason} at byte {error.start}"))
    if all(text is None for _, text, _ in out if text != ""):
        raise PipelineError(f"{path}: no line is valid UTF-8 text; convert the file to UTF-8")
    return out


def paragraphs(lines: list[tuple[int, str | None, str]]) -> list[tuple[int, list[tuple[int, str | None, str]]]]:
    """Group lines into (first line number, lines) at blank lines."""
    groups, current = [], []
    for entry in lines:
        if entry[1] is not None and not entry[1].strip():
            if current:
                groups.append((current[0][0], current))
            current = []
        else:
            current.append(entry)
    if current:
        groups.append((current[0][0], current))
    return groups


def read_documents(path: Path) -> tuple[list[Document], list[Quarantined]]:
    """Documents of one file; a paragraph with a line that is not UTF-8 is quarantined, not fatal."""
    docs, bad = [], []
    for first, group in paragraphs(decoded_lines(path)):
        broken = next(((n, why) for n, text, why in group if text is None), None)
        if broken:
            text = "\n".join(t if t is not None else "<undecodable line>" for _, t, _ in group)
            bad.append(Quarantined(str(path), broken[0], f"undecodable bytes: not UTF-8 ({broken[1]})", text))
        else:
            docs.append(Document(str(path), first, "\n".join(t.rstrip() for _, t, _ in group)))
    return docs, bad


def allowed_pattern(allowed_chars: str) -> re.Pattern:
    try:
        return re.compile(f"(?:{allowed_chars})*")
    except re.error as error:
        raise PipelineError(f"story.prepare.allowed_chars is not a valid regex ({error})") from None


def document_problem(doc: Document, p: StoryPrepareParams, allowed: re.Pattern) -> tuple[int, str] | None:
    """(line, reason) when the document cannot be used, else None."""
    n = len(doc.text)
    if n < p.min_chars:
        return doc.line, f"too short: {n} chars < story.prepare.min_chars={p.min_chars}"
    if n > p.max_chars:
        return doc.line, f"too long: {n} chars > story.prepare.max_chars={p.max_chars}"
    end = allowed.match(doc.text).end()  # the longest allowed prefix stops at the first other character
    if end < n:
        char = doc.text[end]
        return (
            doc.line + doc.text.count("\n", 0, end),
            f"disallowed character: U+{ord(char):04X} {char!r} not in story.prepare.allowed_chars",
        )
    return None


def screen(docs: list[Document], p: StoryPrepareParams) -> tuple[list[Document], list[Quarantined]]:
    allowed = allowed_pattern(p.allowed_chars)
    keep, bad = [], []
    for doc in docs:
        problem = document_problem(doc, p, allowed)
        if problem:
            bad.append(Quarantined(doc.file, problem[0], problem[1], doc.text))
        else:
            keep.append(doc)
    return keep, bad


def drop_duplicates(docs: list[Document]) -> tuple[list[Document], list[Quarantined]]:
    """Keep the first of each exact text."""
    first: dict[str, Document] = {}
    dups = []
    for doc in docs:
        if doc.text in first:
            f = first[doc.text]
            dups.append(Quarantined(doc.file, doc.line, f"duplicate: same text as {f.file}:{f.line}", doc.text))
        else:
            first[doc.text] = doc
    return list(first.values()), dups


def split_documents(docs: list[Document], p: StoryPrepareParams, seed: int) -> tuple[list[Document], list[Document]]:
    """random: a seeded sample of documents; tail: the last documents, eval_fraction of all characters."""
    if len(docs) < 2:
        raise ValidationFailed(
            f"{len(docs)} usable document(s) cannot be split into train and eval; add text "
            f"(documents are separated by blank lines)"
        )
    if p.eval_split == "random":
        n_eval = min(len(docs) - 1, max(1, round(len(docs) * p.eval_fraction)))
        chosen = set(random.Random(seed).sample(range(len(docs)), n_eval))
        return ([d for i, d in enumerate(docs) if i not in chosen], [d for i, d in enumerate(docs) if i in chosen])
    target, chars, cut = p.eval_fraction * sum(len(d.text) for d in docs), 0, len(docs)
    while cut > 1 and chars < target:
        cut -= 1
        chars += len(docs[cut].text)
    return docs[:cut], docs[cut:]


def leak_key(text: str) -> str:
    """Case, spacing and punctuation do not make an eval document new."""
    return " ".join(re.findall(r"\w+", text.casefold()))


def drop_leakage(train: list[Document], eval_: list[Document]) -> tuple[list[Document], list[Quarantined]]:
    """Eval documents that repeat a train document (up to case, spacing, punctuation) measure memory."""
    seen = {leak_key(d.text): d for d in train}
    keep, leaked = [], []
    for doc in eval_:
        twin = seen.get(leak_key(doc.text))
        if twin is None:
            keep.append(doc)
        else:
            leaked.append(
                Quarantined(
                    doc.file, doc.line, f"leakage: eval document repeats train {twin.file}:{twin.line}", doc.text
                )
            )
    return keep, leaked


def check_bad_fraction(total: int, quarantine: list[Quarantined], max_fraction: float, files: list[Path]) -> None:
    bad = [q for q in quarantine if reason_key(q.reason) in BAD_KEYS]
    if total and len(bad) / total > max_fraction:
        common = Counter(reason_key(q.reason) for q in bad).most_common(3)
        first = bad[0]
        raise TooManyBad(
            f"{', '.join(map(str, files))}: {len(bad)} of {total} documents ({len(bad) / total:.1%}) are unusable, over "
            f"story.prepare.max_bad_fraction={max_fraction}; most common: {common}; first at {first.file}:{first.line} "
            f"({first.reason}). Each one is in quarantine.jsonl.",
            quarantine,
        )


def expectations(p: StoryPrepareParams) -> list[Any]:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToNotBeNull(column="text"),
        gxe.ExpectColumnValuesToNotMatchRegex(column="text", regex=r"^\s*$"),
        gxe.ExpectColumnValueLengthsToBeBetween(column="text", min_value=p.min_chars, max_value=p.max_chars),
        gxe.ExpectColumnValuesToMatchRegex(
            column="text", regex=rf"\A(?:{p.allowed_chars})*\Z", meta={"check": "only story.prepare.allowed_chars"}
        ),
    ]


def validate(splits: dict[str, list[Document]], p: StoryPrepareParams) -> dict[str, Any]:
    """GX 1.x on each split, and no text in both splits (the same report shape as the sentiment task)."""
    import logging

    import great_expectations as gx
    import great_expectations.expectations as gxe
    import pandas as pd
    from great_expectations.data_context.types.base import ProgressBarsConfig

    from textops.validation import _summarise

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    batches = (
        ctx.data_sources.add_pandas("story")
        .add_dataframe_asset("documents")
        .add_batch_definition_whole_dataframe("whole")
    )

    def run(name: str, texts: list[str], suite: list[Any]) -> list[dict[str, Any]]:
        s = ctx.suites.add(gx.ExpectationSuite(name=f"story_{name}", expectations=suite))
        frame = pd.DataFrame({"text": pd.Series(texts, dtype=object)})
        return _summarise(batches.get_batch(batch_parameters={"dataframe": frame}).validate(s), name)

    checks = []
    for name, docs in splits.items():
        checks += run(name, [d.text for d in docs], expectations(p))
    checks += run(
        "all",
        [d.text for docs in splits.values() for d in docs],
        [gxe.ExpectColumnValuesToBeUnique(column="text", meta={"check": "no eval text in train"})],
    )
    return {"success": all(c["success"] for c in checks), "checks": checks}


def prepare_corpus(p: StoryPrepareParams, seed: int) -> dict[str, Any]:
    """Read, screen, dedupe, split, drop leakage, validate. Raises when too much is unusable."""
    files = source_files(p.source)
    docs, quarantine = [], []
    for path in files:
        found, undecodable = read_documents(path)
        docs += found
        quarantine += undecodable
    total = len(docs) + len(quarantine)
    docs, bad = screen(docs, p)
    quarantine += bad
    check_bad_fraction(total, quarantine, p.max_bad_fraction, files)
    docs, dups = drop_duplicates(docs)
    train, eval_ = split_documents(docs, p, seed)
    eval_, leaked = drop_leakage(train, eval_)
    if not eval_:
        raise ValidationFailed(f"{p.source}: every eval document repeats a train document; add text")
    quarantine += dups + leaked
    return {
        "files": files,
        "documents_read": total,
        "splits": {"train": train, "eval": eval_},
        "quarantine": quarantine,
        "validation": validate({"train": train, "eval": eval_}, p),
    }
