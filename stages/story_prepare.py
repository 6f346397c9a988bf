"""story_prepare: plain text -> cleaned, deduplicated, validated train/eval documents.

In:  params story.prepare.source (a .txt file or a folder of .txt files; documents at blank lines).
Out: --out/train.txt and eval.txt (documents joined by one blank line), quarantine.jsonl (each left-out
     document: file, line, reason, text), validation.json + validation.md (Great Expectations);
     --report-file (documents and characters per split, quarantine counts by reason, data hash, source).
     --metrics: the report's headline numbers (dvc metrics show).
Params: story.seed, story.prepare.*.
Run: python -m stages.story_prepare --out ... --metrics ... --report-file ... (dvc.yaml passes the paths)
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from textops import cli
from textops.atomic import atomic_dir
from textops.params import Params
from textops.sources import hash_files
from textops.story.corpus import SEPARATOR, TooManyBad, prepare_corpus, reason_key
from textops.validation import ValidationFailed, failures, render_markdown

log = logging.getLogger("textops.story_prepare")


def summary(result: dict, source: str) -> dict:
    splits, quarantine = result["splits"], result["quarantine"]
    return {
        "source": source,
        "source_files": [str(f) for f in result["files"]],
        "data_hash": hash_files(result["files"]),
        "documents_read": result["documents_read"],
        "documents": {name: len(docs) for name, docs in splits.items()},
        "chars": {name: sum(len(d.text) for d in docs) for name, docs in splits.items()},
        "quarantined": len(quarantine),
        "quarantine_reasons": dict(Counter(reason_key(q.reason) for q in quarantine)),
        "validation_success": result["validation"]["success"],
    }


def write_quarantine(path: Path, quarantine: list) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for q in quarantine:
            fh.write(json.dumps(asdict(q), ensure_ascii=False) + "\n")


def headline(report: dict) -> dict:
    return {"documents": report["documents"], "quarantined": report["quarantined"]}


def run(params: Params, out: Path, metrics: Path, report_file: Path) -> None:
    p = params.story.prepare
    try:
        result = prepare_corpus(p, params.story.seed)
    except TooManyBad as error:
        with atomic_dir(out) as folder:  # the quarantine alone, so the user can see each one
            write_quarantine(folder / "quarantine.jsonl", error.quarantine)
        raise
    report, validation = summary(result, p.source), result["validation"]
    leaked = report["quarantine_reasons"].get("leakage", 0)
    counts = {
        "splits": {
            "source": {
                "kept": report["documents_read"] - report["quarantined"] + leaked,
                "quarantined": report["quarantined"] - leaked,
            },
            "train": {"kept": report["documents"]["train"], "quarantined": 0},
            "eval": {"kept": report["documents"]["eval"], "quarantined": leaked},
        },
        "quarantine_reasons": report["quarantine_reasons"],
    }
    with atomic_dir(out) as folder:
        for name, docs in result["splits"].items():
            (folder / f"{name}.txt").write_text(SEPARATOR.join(d.text for d in docs), encoding="utf-8")
        write_quarantine(folder / "quarantine.jsonl", result["quarantine"])
        cli.write_json(folder / "validation.json", validation)
        (folder / "validation.md").write_text(render_markdown(validation, counts), encoding="utf-8")
    cli.write_results(report_file, metrics, report, headline(report))
    log.info(
        "documents %s, chars %s, quarantined %d %s",
        report["documents"],
        report["chars"],
        report["quarantined"],
        report["quarantine_reasons"],
    )
    if not validation["success"]:
        raise ValidationFailed(
            "data validation failed for "
            + ", ".join(report["source_files"])
            + ":\n  - "
            + "\n  - ".join(failures(validation))
            + f"\nReport: {out / 'validation.md'}"
        )


def main(argv=None) -> int:
    return cli.main("story_prepare", __doc__, ["out", "metrics", "report-file"], run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
