"""End to end: `dvc repro` on the bundled sample in a fresh copy of the repository, with the real
default model (all-MiniLM-L6-v2 from its offline package). Slow: about 3-4 minutes on 2 cores."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import git_commit_all

ROOT = Path(__file__).resolve().parents[2]
STEPS = ["prepare", "tokenize", "train", "evaluate", "quantize", "package"]
SENTIMENT = [f"sentiment_{s}" for s in STEPS]
STORY = [f"story_{s}" for s in STEPS]
STAGES = SENTIMENT + STORY
pytestmark = pytest.mark.slow


def tracked_files(root: Path) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [f for f in out.split("\0") if f and (root / f).is_file()]


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the copy's own mlflow/ store
    env = {
        **env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)


def ran(result: subprocess.CompletedProcess) -> list[str]:
    """The stages that ran, in the order DVC ran them."""
    return sorted(
        (s for s in STAGES if f"Running stage '{s}'" in result.stdout),
        key=lambda s: result.stdout.index(f"Running stage '{s}'"),
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("clone")
    for name in tracked_files(ROOT):
        if name.startswith(("outputs/", "dvc.lock")):
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    return git_commit_all(dest, "copy")


@pytest.fixture(scope="module")
def first(repo) -> subprocess.CompletedProcess:
    return run(["dvc", "repro"], repo)


def test_repro_runs_all_stages_of_both_tasks(repo, first):
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    order = ran(first)
    assert sorted(order) == sorted(STAGES)
    assert [s for s in order if s in SENTIMENT] == SENTIMENT and [s for s in order if s in STORY] == STORY
    package = repo / "outputs/sentiment/package"
    manifest = json.loads((package / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"model.onnx", "labels.json", "MODEL_CARD.md", "config.json", "tokenizer.json"}
    quantize = json.loads((repo / "outputs/sentiment/reports/quantize.json").read_text())
    assert quantize["int8_size_ratio"] < 0.3
    evaluate = json.loads((repo / "outputs/sentiment/reports/evaluate.json").read_text())
    assert evaluate["accuracy"] >= 0.6  # the params gate; the sample is small, so only a floor
    story = json.loads((repo / "outputs/story/package/manifest.json").read_text())
    assert "model.onnx" in story["files"]
    story_quantize = json.loads((repo / "outputs/story/reports/quantize.json").read_text())
    assert story_quantize["greedy_agreement"]["onnx_int8"]["teacher_forced"] >= 0.95  # the INT8 gate's default


def test_metrics_show_fits_a_terminal(repo, first):
    """dvc metrics show: the headline numbers of both tasks, at most 30 columns."""
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    files = next(iter(shown.values()))["data"]

    def leaves(data: dict, prefix: str = "") -> set[str]:
        out = set()
        for key, value in data.items():
            out |= leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
        return out

    columns = set().union(*(leaves(entry["data"]) for entry in files.values()))
    assert len(files) == 10 and len(columns) <= 30, sorted(columns)


def test_second_repro_has_nothing_to_do(repo, first):
    again = run(["dvc", "repro"], repo)
    assert again.returncode == 0 and ran(again) == []
    assert "Data and pipelines are up to date" in again.stdout or "didn't change" in again.stdout


def test_quantize_param_reruns_only_quantize_and_package(repo, first):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["sentiment"]["quantize"]["latency_requests"] = 50
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = run(["dvc", "repro"], repo)
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert ran(changed) == ["sentiment_quantize", "sentiment_package"]
