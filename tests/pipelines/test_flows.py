"""Prefect flows against a real Prefect server: real `dvc repro` subprocesses in scratch repositories."""

from __future__ import annotations

import subprocess
from pathlib import Path

import prefect_server
import pytest
import yaml

from conftest import ROOT, copy_repo, git_commit_all, sentences, write_tsv
from pipelines.flows import data_hash, pipeline, retrain
from pipelines.serve import deployment
from textops import dag, tasks
from textops.dag import stage_order

STEPS = ["prepare", "tokenize", "train", "evaluate", "quantize", "package"]
STAGES = [f"sentiment_{s}" for s in STEPS]


@pytest.fixture(scope="module", autouse=True)
def prefect_api(request) -> str:
    return prefect_server.api_url(request.config)  # the test run's one Prefect server


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory, tiny_model_dir) -> Path:
    """The repository with the tiny model and tiny data in its params.yaml."""
    repo = copy_repo(tmp_path_factory.mktemp("flowrepo"))
    data = write_tsv(repo / "data" / "tiny.tsv", sentences(80))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["sentiment"]["model"].update(name=str(tiny_model_dir), max_length=16)
    params["sentiment"]["prepare"]["source"] = "data/tiny.tsv"
    params["sentiment"]["train"].update(epochs=3, batch_size=8, learning_rate=3e-3, warmup_ratio=0.0)
    params["sentiment"]["evaluate"]["attention_sentences"] = ["a dull plot"]
    params["sentiment"]["quantize"].update(
        latency_requests=10, latency_warmup=1, min_agreement=0.0, max_accuracy_drop=1.0
    )
    params["sentiment"]["promote"].update(max_latency_ms=1000)
    params["orchestrate"].update(retries=0)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert data.is_file()
    return git_commit_all(repo)


def test_stage_order_comes_from_dvc_yaml():
    assert stage_order(ROOT / "dvc.yaml", ["sentiment_package"]) == STAGES
    assert stage_order(ROOT / "dvc.yaml", ["story_package"]) == [f"story_{s}" for s in STEPS]
    assert sorted(stage_order(ROOT / "dvc.yaml")) == sorted(STAGES + [f"story_{s}" for s in STEPS])
    assert stage_order(ROOT / "dvc.yaml", ["sentiment_evaluate"]) == STAGES[:4]
    with pytest.raises(ValueError, match="unknown stage"):
        stage_order(ROOT / "dvc.yaml", ["deploy"])


def test_each_task_names_its_last_stage_and_source_key():
    graph_stages = set(stage_order(ROOT / "dvc.yaml"))
    finals = {name: dag.final_stage(ROOT / "dvc.yaml", name) for name in tasks.names()}
    assert (
        finals == {"sentiment": "sentiment_package", "story": "story_package"} and set(finals.values()) <= graph_stages
    )
    assert tasks.get("story").source_key == "story.prepare.source"
    assert tasks.get("sentiment").source_key == "sentiment.prepare.source"
    with pytest.raises(ValueError, match="unknown task 'poems'"):
        tasks.get("poems")


def test_flow_runs_every_stage_then_dvc_skips_them(tiny_repo):
    first = pipeline(repo=str(tiny_repo))
    assert [s["stage"] for s in first["stages"]] == STAGES
    assert all(s["ran"] for s in first["stages"])
    assert first["gate"]["decision"] == "promoted"  # the first model, over the floors
    assert (tiny_repo / "outputs/sentiment/package/model.onnx").is_file()
    second = pipeline(repo=str(tiny_repo))
    assert not any(s["ran"] for s in second["stages"])
    assert second["gate"]["decision"] == "unchanged"


def test_overrides_become_a_dvc_experiment_and_leave_the_tree_as_it_was(tiny_repo):
    import json

    import mlflow

    before = {name: (tiny_repo / name).read_bytes() for name in ("params.yaml", "dvc.lock")}
    result = pipeline(repo=str(tiny_repo), overrides=["sentiment.quantize.latency_requests=12"])
    # The working tree, params.yaml and dvc.lock included, is exactly as it was.
    assert {name: (tiny_repo / name).read_bytes() for name in before} == before
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=tiny_repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert status == "", status
    # DVC recorded the run, with its override, as an experiment.
    name = result["stages"][0]["experiment"]
    shown = json.loads(
        subprocess.run(
            ["dvc", "exp", "show", "--json"], cwd=tiny_repo, capture_output=True, text=True, check=True
        ).stdout
    )
    runs = [
        run
        for row in shown
        for exp in row.get("experiments") or []
        for run in exp.get("revs") or []
        if run.get("name") == name
    ]
    assert runs, f"experiment {name} not in dvc exp show"
    params = runs[0]["data"]["params"]["params.yaml"]["data"]
    assert params["sentiment"]["quantize"]["latency_requests"] == 12
    # Its MLflow run sits in the configured store, linked to the experiment's name.
    found = mlflow.search_runs(experiment_names=["sentiment"], filter_string=f"tags.dvc_experiment = '{name}'")
    assert len(found) == 1
    # The gate scored the experiment's own frozen eval set (read from DVC's cache at the experiment's commit).
    assert result["gate"]["decision"] in {"promoted", "refused", "unchanged"}


def test_retrain_skips_when_the_data_is_unchanged(tiny_repo):
    from prefect.variables import Variable

    Variable.set(
        "sentiment-last-trained-data-sha256", data_hash(tiny_repo, "data/tiny.tsv", "sentiment"), overwrite=True
    )
    state = retrain(repo=str(tiny_repo), return_state=True)
    assert state.is_completed() and state.name == "Skipped" and "unchanged" in state.message


def test_retrain_runs_when_the_data_changed(tiny_repo):
    from prefect.variables import Variable

    Variable.set("sentiment-last-trained-data-sha256", "0" * 64, overwrite=True)
    result = retrain(repo=str(tiny_repo), overrides=[])
    assert [s["stage"] for s in result["stages"]] == STAGES
    assert Variable.get("sentiment-last-trained-data-sha256") == data_hash(tiny_repo, "data/tiny.tsv", "sentiment")


FLAKY = (
    "import pathlib, sys\n"
    "mark = pathlib.Path('.started')\n"
    "if not mark.exists():\n"
    "    mark.write_text('1'); print('transient failure: the disk was busy'); sys.exit(3)\n"
    "pathlib.Path('out.txt').write_text('ok')\n"
)
SLOW = (
    "import pathlib, time\n"
    "mark = pathlib.Path('.started')\n"
    "if not mark.exists():\n"
    "    mark.write_text('1'); time.sleep(300)\n"
    "pathlib.Path('out.txt').write_text('ok')\n"
)


def scratch(tmp_path: Path, cmd: str, retries: int, script: str = FLAKY) -> Path:
    """A one-stage DVC repository whose stage runs `cmd` (step.py holds `script`); named `package`, the
    sentiment task's last stage, which is what the flow runs."""
    repo = tmp_path / "scratch"
    repo.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["orchestrate"].update(retries=retries, retry_delay_s=0)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    stage = {"cmd": cmd, "outs": ["out.txt"], "meta": {"task": "sentiment", "final": True}}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"sentiment_package": stage}}))
    (repo / "step.py").write_text(script)
    (repo / ".gitignore").write_text(".started\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=repo, check=True)
    return git_commit_all(repo)


def test_a_transient_failure_is_retried(tmp_path):
    repo = scratch(tmp_path, "python step.py", retries=1)
    result = pipeline(repo=str(repo), gate=False)
    assert result["stages"][0]["ran"] and (repo / "out.txt").read_text() == "ok"


def test_a_failing_stage_fails_the_flow_with_its_error(tmp_path):
    repo = scratch(tmp_path, "python -c \"raise SystemExit('boom: the source file is empty')\"", retries=0)
    state = pipeline(repo=str(repo), gate=False, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="boom: the source file is empty"):
        state.result()


def test_schedule_comes_from_params(tiny_repo):
    params = yaml.safe_load((tiny_repo / "params.yaml").read_text())
    dep = deployment(tiny_repo)
    assert dep.name == "sentiment-retrain"
    assert dep.schedules[0].schedule.cron == params["orchestrate"]["cron"]
    assert dep.schedules[0].schedule.timezone == params["orchestrate"]["timezone"]


def test_a_run_killed_mid_stage_leaves_dvc_usable(tmp_path):
    import os
    import signal
    import sys
    import time

    repo = scratch(tmp_path, "python step.py", retries=0, script=SLOW)
    from prefect.settings import PREFECT_API_URL

    # The test run's server: left alone, the child would start an ephemeral server of its own, which
    # the SIGKILL below would orphan (it outlived the test run before).
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": PREFECT_API_URL.value()}
    flow = subprocess.Popen(
        [sys.executable, "-c", f"from pipelines.flows import pipeline; pipeline(repo={str(repo)!r}, gate=False)"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while not (repo / ".started").exists():
        assert flow.poll() is None and time.monotonic() < deadline, "the stage never started"
        time.sleep(0.5)
    flow.send_signal(signal.SIGKILL)  # no cleanup at all in the flow process
    flow.wait()
    result = pipeline(repo=str(repo), gate=False)  # must not hang on DVC's lock or race the orphan
    assert result["stages"][0]["ran"] and (repo / "out.txt").read_text() == "ok"
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-f", "python step.py"], capture_output=True, text=True).stdout.split()
    assert not left, f"stage processes still running: {left}"
