"""The thin shell every stage's main() shares: argument parsing, logging, user-facing errors."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from textops.atomic import atomic_write_text
from textops.errors import PipelineError
from textops.params import for_stage, load_params

log = logging.getLogger("textops")


def parser(description: str, paths: Sequence[str]) -> argparse.ArgumentParser:
    """Paths come from dvc.yaml's cmd, so the DAG stays the one place that names them."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    for name in paths:
        p.add_argument(f"--{name}", required=True, type=Path)
    return p


def main(
    stage: str, description: str, paths: Sequence[str], run: Callable[..., Any], argv: Sequence[str] | None = None
) -> int:
    import signal
    import threading

    args = parser(description, paths).parse_args(argv)
    # Only our own loggers speak at INFO; libraries (GX logs hundreds of lines) stay at WARNING.
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s {stage} %(levelname)s %(message)s")
    log.setLevel(logging.INFO)

    def stop(signum: int, _frame) -> None:
        # SIGTERM (the flow stopping this stage: cancelled, timed out or itself terminated) as an exception
        # rather than instant death, so `except`/`finally` blocks run: the MLflow run ends FAILED, not RUNNING.
        raise SystemExit(f"error in stage '{stage}': stopped by {signal.Signals(signum).name}")

    in_main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    previous = signal.signal(signal.SIGTERM, stop) if in_main else None
    try:
        # Only the keys dvc.yaml lists for this stage: reading another one is an error naming it.
        params = for_stage(load_params(args.params), stage)
        run(params, **{name.replace("-", "_"): getattr(args, name.replace("-", "_")) for name in paths})
    except PipelineError as error:
        print(f"error in stage '{stage}': {error}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_results(report_path: Path, metrics_path: Path, report: dict, headline: dict) -> None:
    """A stage's results in two files: the whole report (a declared out, read by later stages, model cards and
    people) and its few headline numbers (its metrics file), so `dvc metrics show` fits a terminal."""
    write_json(report_path, report)
    write_json(metrics_path, headline)


def sha256(path: Path) -> str:
    """A file's sha256, read in 1 MiB chunks (model files are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
