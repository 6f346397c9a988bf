"""Outputs appear whole or not at all (textops.atomic): a stage killed while it writes leaves no output that
`dvc status` calls current and no half-written model; an error mid-write (a full disk) leaves the old output."""

from __future__ import annotations

import contextlib
import copy
import errno
import importlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from conftest import copy_repo, sentences, write_tsv
from textops.atomic import atomic_dir, atomic_file, atomic_write_text
from textops.training import unreadable

STAGE = "sentiment_train"
MODEL = "outputs/sentiment/model"
MODEL_FILES = {"config.json", "model.safetensors", "labels.json", "tokenizer.json"}
JSON_OUTS = ("outputs/sentiment/reports/train.json", "outputs/sentiment/metrics/train.json")
CSV_OUTS = ("outputs/sentiment/plots/train/loss.csv", "outputs/sentiment/plots/train/eval.csv")


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# ---------------------------------------------------------------- the helper


def test_a_folder_replaces_the_old_one_only_once_complete(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.bin").write_text("old")
    with atomic_dir(out) as tmp:
        (tmp / "weights.bin").write_text("new")
        assert names(out) == {"old.bin"}  # readers see the old folder until the new one is whole
    assert names(out) == {"weights.bin"}
    assert names(tmp_path) == {"model"}  # neither the temporary nor the old folder is left


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_an_error_mid_write_leaves_the_old_output_and_deletes_the_partial_one(tmp_path, kind):
    out = tmp_path / "out"
    if kind == "folder":
        out.mkdir()
        (out / "weights.bin").write_text("old")
    else:
        out.write_text("old")
    with pytest.raises(OSError, match="No space left"):
        with atomic_dir(out) if kind == "folder" else atomic_file(out) as tmp:
            (tmp / "weights.bin" if kind == "folder" else tmp).write_text("half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert (out / "weights.bin" if kind == "folder" else out).read_text() == "old"
    assert names(tmp_path) == {"out"}  # the partial temporary is gone, its space given back


def test_the_next_write_clears_what_a_killed_run_left_and_only_that(tmp_path):
    (tmp_path / ".model.tmp-999999").mkdir()
    (tmp_path / ".model.tmp-999999" / "config.json").write_text("{")
    (tmp_path / ".model.tmp-999998-old").mkdir()  # killed between the two renames of a folder swap
    (tmp_path / ".report.json.tmp-999999").write_text("{")  # another output's: its own next write clears it
    atomic_write_text(tmp_path / "model", "whole")
    assert names(tmp_path) == {"model", ".report.json.tmp-999999"}
    atomic_write_text(tmp_path / "report.json", "{}")
    assert names(tmp_path) == {"model", "report.json"}


# ---------------------------------------------------------------- a real stage under DVC, killed


def env() -> dict[str, str]:
    # The stage's `python` and `dvc` are this interpreter's; HF offline settings come from conftest.
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(["dvc", *args], cwd=repo, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def status(repo: Path, *targets: str) -> dict[str, dict]:
    """`dvc status --json` by stage, each stage's list of changes merged into one dict."""
    shown = json.loads(dvc(repo, "status", "--json", *targets).stdout or "{}")
    return {stage: {k: v for change in changes for k, v in change.items()} for stage, changes in shown.items()}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, repo_params_raw, tiny_model_dir) -> Path:
    """A copy of the repository on the tiny model, with sentiment_train reproduced once (dvc.lock holds it)."""
    repo = copy_repo(tmp_path_factory.mktemp("atomic"))
    write_tsv(repo / "data" / "tiny.tsv", sentences(40))
    raw = copy.deepcopy(repo_params_raw)
    s = raw["sentiment"]
    s["model"].update(name=str(tiny_model_dir), max_length=16)
    s["prepare"]["source"] = "data/tiny.tsv"
    s["train"].update(epochs=1, batch_size=8, learning_rate=3e-3, logging_steps=2, save_steps=1000, num_threads=1)
    s["tracking"]["enabled"] = False
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    for upstream in ("sentiment_prepare", "sentiment_tokenize"):
        run_in_process(repo, upstream)
    dvc(repo, "commit", "--force", "sentiment_prepare", "sentiment_tokenize")
    dvc(repo, "repro", STAGE)
    return repo


def run_in_process(repo: Path, stage: str) -> None:
    """A stage's own dvc.yaml command, run in this process to save its start-up; `dvc commit` then records it
    in dvc.lock as `dvc repro` would."""
    cmd = shlex.split(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"][stage]["cmd"])
    assert cmd[:2] == ["python", "-m"], cmd
    with contextlib.chdir(repo):
        assert importlib.import_module(cmd[2]).main(cmd[3:]) == 0


def model_folders(repo: Path) -> list[Path]:
    """The model out and any temporary sibling of it."""
    out = repo / MODEL
    return [out, *out.parent.glob(f".{out.name}.tmp-*")]


def after(seconds: float) -> Callable[[Path, float], bool]:
    return lambda repo, elapsed: elapsed >= seconds


class StageRunning:
    """The moment the stage's own process (`python -m stages...`, under DVC and its shell) has run `seconds`: in
    its imports or its training. A fixed time after `dvc repro` started is not that moment: on a fast CPU the tiny
    stage had finished, and DVC was recording it, 5 s in."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, repo: Path, elapsed: float) -> bool:
        for proc in psutil.process_iter(["cmdline", "create_time", "cwd"]):
            cmdline, cwd = proc.info["cmdline"] or [], proc.info["cwd"]
            if cwd == str(repo) and cmdline[1:3] == ["-m", f"stages.{STAGE}"]:
                return time.time() - proc.info["create_time"] >= self.seconds
        return False


class FirstModelFile:
    """The moment the first file of the new model lands, in the out or in a new temporary. DVC removes the old
    model before it runs the stage, so once it is gone, a file there is the new model's."""

    def __init__(self) -> None:
        self.before: set[Path] | None = None
        self.old_gone = False

    def __call__(self, repo: Path, elapsed: float) -> bool:
        if self.before is None:
            self.before = set(model_folders(repo)[1:])  # what earlier kills left
        self.old_gone = self.old_gone or not (repo / MODEL).exists()
        fresh = [d for d in model_folders(repo) if d not in self.before and d.is_dir()]
        return self.old_gone and any(f.is_file() for d in fresh for f in d.iterdir())


def repro_killed(repo: Path, moment: Callable[[Path, float], bool]) -> None:
    """`dvc repro` of the stage, its whole process group (DVC, shell, stage) SIGKILLed at `moment`, as a flow's
    stage timeout or the OOM killer would."""
    proc = subprocess.Popen(
        ["dvc", "repro", STAGE],
        cwd=repo,
        env=env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started = time.monotonic()
    try:
        while not moment(repo, time.monotonic() - started):
            assert proc.poll() is None, "the stage finished before the moment to kill it"
            assert time.monotonic() - started < 180, "the moment never came"
            time.sleep(0.001)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group is gone when the stage ended first
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def assert_whole_or_absent(repo: Path, when: str) -> None:
    model = repo / MODEL
    if model.exists():
        assert MODEL_FILES <= names(model), f"{when}: a partial model {sorted(names(model))}"
        assert unreadable(model) is None, f"{when}: a model file does not load"
    for path in map(repo.joinpath, JSON_OUTS):
        if path.exists():
            json.loads(path.read_text())
    for path in map(repo.joinpath, CSV_OUTS):
        if path.exists():
            assert {"step"} <= set(pd.read_csv(path).columns), f"{when}: {path} is cut"


@pytest.mark.slow
def test_a_stage_killed_while_writing_leaves_no_output_dvc_calls_current(workspace):
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["sentiment"]["train"]["learning_rate"] = 2e-3  # the stage must rerun (and DVC's run cache lacks it)
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    moments = {"1 s in": after(1.0), "stage running 2 s": StageRunning(2.0), "first model file": FirstModelFile()}
    for when, moment in moments.items():
        repro_killed(workspace, moment)
        changed = status(workspace, STAGE, "--with-deps")
        assert set(changed) == {STAGE}, f"{when}: {changed}"  # the leftovers disturb no other stage
        if MODEL not in changed[STAGE].get("changed outs", {}):  # DVC holds the model for the one in dvc.lock:
            assert "params.yaml" in changed[STAGE]["changed deps"], when  # the param alone makes it rerun
        assert_whole_or_absent(workspace, when)

    assert model_folders(workspace)[1:], "the last kill did not land while the model was written"

    dvc(workspace, "repro", STAGE)  # the next run: whole outputs, no leftovers, and DVC agrees
    assert status(workspace, STAGE) == {}
    assert_whole_or_absent(workspace, "after a finished run")
    assert (workspace / MODEL).is_dir()
    assert not [p for p in (workspace / "outputs").rglob("*") if ".tmp-" in p.name]
