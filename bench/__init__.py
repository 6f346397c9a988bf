"""Benchmarks, by area (index: bench/README.md). Run them as modules from the repository root,
e.g. `python -m bench.serving.load_test`, like the stages (`python -m stages.sentiment_train`)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository
RESULTS = ROOT / "bench" / "results"  # where the benches' reports are kept
