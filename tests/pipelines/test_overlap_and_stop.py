"""Runs that overlap, stop and restart (issue 16), against the test run's real Prefect server: flows started
together queue on their workspace instead of killing each other's stages; a cancelled, SIGTERM-ed or
SIGKILL-ed run leaves no stage process, no MLflow run RUNNING and no Prefect task run Running, and the next
run resumes. Real `dvc repro` stages on tiny settings of both tasks; deployments served by a real runner
(`python -m pipelines.serve`)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import prefect_server
import pytest
import yaml

from conftest import ROOT, copy_repo, git_commit_all, sentences, write_tsv
from pipelines.flows import pipeline
from pipelines.processes import RECORDS, reap_orphans, started

STEPS = ["prepare", "tokenize", "train", "evaluate", "quantize", "package"]
FINAL = "Data and pipelines are up to date."


@pytest.fixture(scope="module", autouse=True)
def prefect_api(request) -> str:
    return prefect_server.api_url(request.config)


def set_params(repo: Path, **sections: dict) -> None:
    """params.yaml with `task__section={key: value}` merged in."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, values in sections.items():
        task, section = key.split("__")
        params[task][section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model_dir) -> Path:
    """The repository with tiny settings for both tasks: the tiny BERT on 160 toy reviews, a 2-layer char GPT
    on the bundled stories; no retries, so a killed stage would fail its run."""
    repo = copy_repo(tmp_path_factory.mktemp("workspace")).resolve()
    write_tsv(repo / "data" / "tiny.tsv", sentences(80))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["orchestrate"].update(retries=0)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    set_params(
        repo,
        sentiment__model={"name": str(tiny_model_dir), "max_length": 16},
        sentiment__prepare={"source": "data/tiny.tsv"},
        sentiment__train={"epochs": 3, "batch_size": 8, "learning_rate": 3e-3, "warmup_ratio": 0.0},
        sentiment__evaluate={"attention_sentences": ["a dull plot"]},
        sentiment__quantize={
            "latency_requests": 10,
            "latency_warmup": 1,
            "min_agreement": 0.0,
            "max_accuracy_drop": 1.0,
        },
        sentiment__promote={"max_latency_ms": 1000},
        story__model={"n_layer": 2, "n_head": 2, "n_embd": 32, "context": 32},
        story__tokenize={"kind": "char"},
        story__train={
            "max_steps": 40,
            "batch_size": 8,
            "eval_batch_size": 16,
            "learning_rate": 3e-3,
            "min_learning_rate": 3e-4,
            "warmup_steps": 5,
            "eval_steps": 1000,
            "save_steps": 1000,
            "logging_steps": 5,
            "num_threads": 1,
        },
        story__evaluate={"prompts": ["Tom had"], "seeds": [0], "max_new_tokens": 8, "batch_size": 8},
        story__quantize={
            "min_greedy_agreement": 0.0,
            "max_perplexity_change": 10.0,
            "speed_new_tokens": 8,
            "speed_repeats": 1,
        },
    )
    return git_commit_all(repo)


def flow_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_RUNNER_POLL_FREQUENCY": "1"}


@pytest.fixture(scope="module")
def runner(workspace, tmp_path_factory):
    """`python -m pipelines.serve` for the workspace: every task's deployments, run by a real runner (which
    is what cancels a run the UI cancels). Run from the code's folder, so flow processes are not in the
    workspace: a process whose working directory is there belongs to a stage."""
    from prefect.client.orchestration import get_client

    log = tmp_path_factory.mktemp("runner") / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.serve", "--repo", str(workspace)],
            cwd=ROOT,
            env=flow_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        with get_client(sync_client=True) as client:
            while True:
                assert proc.poll() is None, log.read_text()[-3000:]
                try:
                    for task in ("sentiment", "story"):
                        client.read_deployment_by_name(f"pipeline/{task}-pipeline")
                    break
                except Exception:
                    assert time.monotonic() < deadline, "the deployments never appeared:\n" + log.read_text()[-3000:]
                    time.sleep(1)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start_deployment(name: str) -> uuid.UUID:
    from prefect.deployments import run_deployment

    return run_deployment(name, timeout=0).id


def wait_final(run_id: uuid.UUID, timeout_s: float = 900):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(run_id)
            if run.state and run.state.is_final():
                return run
            assert time.monotonic() < deadline, f"flow run {run.name} still {run.state.name} after {timeout_s} s"
            time.sleep(1)


def task_runs(run_id: uuid.UUID) -> dict:
    """The flow run's task runs by stage name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    return {run.name.rsplit("-", 1)[0]: run for run in runs}


def logs_with(run_id: uuid.UUID, text: str) -> list[str]:
    """The flow run's log lines holding `text` (the server's own text search fails on SQLite: HTTP 500)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    flt = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
    found, offset = [], 0
    with get_client(sync_client=True) as client:
        while page := client.read_logs(log_filter=flt, limit=200, offset=offset):
            found += [log.message for log in page if text in log.message]
            offset += len(page)
    return found


def flow_run_named(name: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
    return run


def processes_in(folder: Path) -> list[str]:
    """Live processes working in `folder` (a stage's dvc, shell and python), with their command lines."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cwd = Path(os.readlink(entry / "cwd")) if entry.name.isdigit() else None
            if cwd and (cwd == folder or folder in cwd.parents):
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append(f"{entry.name}: {cmdline[:150]}")
        except OSError:  # gone, or a zombie
            continue
    return found


def mlflow_runs(task_run_id) -> list:
    """The MLflow runs a stage opened, found by the Prefect task run id the flow tags them with."""
    import mlflow

    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, f"tags.prefect_task_run_id = '{task_run_id}'")


def dvc_status(repo: Path, *stages: str) -> str:
    return subprocess.run(["dvc", "status", *stages], cwd=repo, capture_output=True, text=True, check=True).stdout


def wait_for(predicate, what: str, timeout_s: float = 300):
    deadline = time.monotonic() + timeout_s
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.2)
    return found


def gone_within(folder: Path, seconds: float) -> float:
    """Seconds until no process works in `folder`; fails after `seconds`."""
    t0 = time.monotonic()
    while left := processes_in(folder):
        assert time.monotonic() - t0 < seconds, f"stage processes still running after {seconds} s: {left}"
        time.sleep(0.2)
    return time.monotonic() - t0


def test_both_tasks_started_together_take_turns_and_both_finish(workspace, runner):
    runs = {task: start_deployment(f"pipeline/{task}-pipeline") for task in ("sentiment", "story")}
    for task, run_id in runs.items():
        state = wait_final(run_id).state
        assert state.is_completed(), f"{task}: {state.name} {state.message}"
    spans = []
    for task, run_id in runs.items():
        steps = task_runs(run_id)  # the stages, then the gate
        assert sorted(steps) == sorted([*(f"{task}_{s}" for s in STEPS), "promotion_gate"])
        assert all(t.state.is_completed() for t in steps.values()), {n: t.state.name for n, t in steps.items()}
        spans.append((min(t.start_time for t in steps.values()), max(t.end_time for t in steps.values())))
    first, second = sorted(spans)
    assert first[1] <= second[0], "the two runs' stages overlapped"
    assert sum(bool(logs_with(r, "waiting for the run that holds")) for r in runs.values()) == 1
    assert FINAL in dvc_status(workspace, "sentiment_package", "story_package")
    assert (workspace / "outputs/sentiment/package/model.onnx").is_file()


def test_the_same_task_started_twice_runs_once_then_finds_nothing_to_do(workspace, runner):
    set_params(workspace, sentiment__quantize={"latency_requests": 11})  # quantize and package must rerun
    runs = [start_deployment("pipeline/sentiment-pipeline") for _ in range(2)]
    for run_id in runs:
        state = wait_final(run_id).state
        assert state.is_completed(), f"{state.name} {state.message}"
    ran = [bool(logs_with(r, "stage sentiment_quantize ran")) for r in runs]
    waited = [bool(logs_with(r, "waiting for the run that holds")) for r in runs]
    assert sorted(ran) == [False, True] and waited == [not r for r in ran]
    assert logs_with(runs[ran.index(False)], "stage sentiment_quantize skipped by DVC")
    assert FINAL in dvc_status(workspace, "sentiment_package")


def checkpoint_after(folder: Path, step: int) -> bool:
    """A complete checkpoint past `step` exists (trainer_state.json is written last)."""
    return any(int(c.parent.name.split("-")[1]) > step for c in folder.glob("checkpoint-*/trainer_state.json"))


def assert_stopped_cleanly(workspace: Path, run, stage: str, seconds: float) -> None:
    """No stage process left within `seconds` of the stop (checked by the caller), the run and the stage's
    task run ended (not Running, not Completed), and the stage's MLflow run FAILED."""
    assert run.state.is_final() and not run.state.is_completed(), run.state
    task_run = task_runs(run.id)[stage]
    assert task_run.state.is_final() and not task_run.state.is_completed(), task_run.state
    assert [r.info.status for r in mlflow_runs(task_run.id)] == ["FAILED"]
    print(f"stopped in {seconds:.1f} s: flow run {run.state.name}, task run {task_run.state.name}, MLflow FAILED")


def test_a_run_stopped_mid_train_leaves_nothing_running_and_the_next_run_resumes(workspace, runner):
    """Cancelled through the API (what the UI's Cancel does), then the next run SIGTERM-ed, then one more
    run: each stop leaves no stage process within 10 s, and each next run resumes from a checkpoint."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    # Long enough to stop in mid-training, with checkpoints to resume from.
    set_params(workspace, story__train={"max_steps": 500, "save_steps": 25})
    checkpoints = workspace / "outputs/story/checkpoints"

    cancelled = start_deployment("pipeline/story-pipeline")
    wait_for(lambda: checkpoint_after(checkpoints, 0), "a checkpoint")
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(cancelled, Cancelling(message="cancelled by the test"))
    seconds = gone_within(workspace, 10)
    run = wait_final(cancelled, timeout_s=60)
    assert run.state.is_cancelled(), run.state
    assert_stopped_cleanly(workspace, run, "story_train", seconds)

    reached = max(int(c.name.split("-")[1]) for c in checkpoints.glob("checkpoint-*"))
    name = f"sigterm-{uuid.uuid4().hex[:8]}"
    code = (
        "from pipelines.flows import pipeline; "
        f"pipeline.with_options(flow_run_name={name!r})(task_name='story', repo={str(workspace)!r})"
    )
    flow = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=flow_env(), stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: checkpoint_after(checkpoints, reached), "a checkpoint of the second run")
        flow.send_signal(signal.SIGTERM)
        seconds = gone_within(workspace, 10)
        assert flow.wait(timeout=30) == -signal.SIGTERM
    finally:
        flow.kill()
        flow.wait()
    terminated = flow_run_named(name)
    assert logs_with(terminated.id, "resuming from outputs/story/checkpoints/checkpoint-")
    assert_stopped_cleanly(workspace, terminated, "story_train", seconds)

    result = pipeline(task_name="story", repo=str(workspace))
    assert [s["stage"] for s in result["stages"] if s["ran"]] == [f"story_{s}" for s in STEPS[2:]]
    report = json.loads((workspace / "outputs/story/reports/train.json").read_text())
    assert report["resumed_from_step"] > reached and report["global_step"] == 500
    assert FINAL in dvc_status(workspace, "story_package")


# A stage that opens its MLflow run (as the train stages do, tagged by the flow), then hangs on its first start.
TRACKED_SLOW = (
    "import pathlib, time\n"
    "from textops.tracking import ModelRun\n"
    "mark = pathlib.Path('.started')\n"
    "if not mark.exists():\n"
    "    run = ModelRun(True, 'scratch').start('scratch', {})\n"
    "    mark.write_text(run.run_id); time.sleep(300)\n"
    "pathlib.Path('out.txt').write_text('ok')\n"
)


def scratch(tmp_path: Path) -> Path:
    """A one-stage DVC repository (named as the sentiment task's last stage) running TRACKED_SLOW."""
    repo = tmp_path / "scratch"
    repo.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["orchestrate"].update(retries=0)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    stage = {"cmd": "python step.py", "outs": ["out.txt"], "meta": {"task": "sentiment", "final": True}}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"sentiment_package": stage}}))
    (repo / "step.py").write_text(TRACKED_SLOW)
    (repo / ".gitignore").write_text(".started\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=repo, check=True)
    return git_commit_all(repo)


def mlflow_status(run_id: str) -> str:
    import mlflow

    return mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(run_id).info.status


def test_a_stage_sigkilled_under_a_live_flow_ends_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # step.py imports textops
    repo = scratch(tmp_path)

    def kill_the_stage() -> None:  # what the kernel's OOM killer does: no cleanup at all
        wait_for(lambda: (repo / ".started").exists(), "the stage start", timeout_s=120)
        (record,) = (repo / RECORDS).glob("*.json")
        os.killpg(json.loads(record.read_text())["pgid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_the_stage)
    killer.start()
    state = pipeline(repo=str(repo), gate=False, return_state=True)
    killer.join()
    assert state.is_failed()
    assert mlflow_status((repo / ".started").read_text()) == "FAILED"
    assert processes_in(repo.resolve()) == []


def test_a_stage_orphaned_by_a_sigkilled_flow_is_stopped_and_closed_by_the_next_run(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # step.py imports textops
    repo = scratch(tmp_path).resolve()
    flow = subprocess.Popen(
        [sys.executable, "-c", f"from pipelines.flows import pipeline; pipeline(repo={str(repo)!r}, gate=False)"],
        cwd=ROOT,
        env=flow_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: (repo / ".started").exists(), "the stage start", timeout_s=120)
    (record,) = (repo / RECORDS).glob("*.json")
    task_run_id = json.loads(record.read_text())["task_run_id"]
    flow.send_signal(signal.SIGKILL)
    flow.wait()
    time.sleep(1)
    assert processes_in(repo), "the stage should outlive a SIGKILLed flow (nothing in it could stop the stage)"
    result = pipeline(repo=str(repo), gate=False)
    assert result["stages"][0]["ran"] and (repo / "out.txt").read_text() == "ok"
    assert processes_in(repo) == []
    assert mlflow_status((repo / ".started").read_text()) == "FAILED"
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        orphan = client.read_task_run(uuid.UUID(task_run_id))
        assert orphan.state.is_crashed(), orphan.state
        assert client.read_flow_run(orphan.flow_run_id).state.is_crashed()


def test_only_groups_whose_owner_is_dead_are_reaped(tmp_path):
    (tmp_path / RECORDS).mkdir(parents=True)
    finished = subprocess.Popen(["true"])
    finished.wait()
    owners = {
        "alive": (os.getpid(), started(os.getpid())),
        "exited": (finished.pid, 1),
        "pid reused": (os.getpid(), started(os.getpid()) - 1),  # same pid, another process
    }
    groups = {}
    for name, (owner, owner_started) in owners.items():
        groups[name] = subprocess.Popen(["sleep", "60"], start_new_session=True)
        record = {
            "pgid": groups[name].pid,
            "owner": owner,
            "owner_started": owner_started,
            "stage": name,
            "task_run_id": str(uuid.uuid4()),
            "mlflow_uri": f"sqlite:///{tmp_path}/no-store/mlflow.db",
        }
        (tmp_path / RECORDS / f"{groups[name].pid}.json").write_text(json.dumps(record))
    try:
        reap_orphans(tmp_path, logging.getLogger("test"))
        assert groups["alive"].poll() is None, "a live flow's stage was killed"
        assert (tmp_path / RECORDS / f"{groups['alive'].pid}.json").is_file()
        for name in ("exited", "pid reused"):
            assert groups[name].wait(timeout=10) == -signal.SIGTERM
            assert not (tmp_path / RECORDS / f"{groups[name].pid}.json").exists()
    finally:
        for proc in groups.values():
            proc.kill()
            proc.wait()


STAGE_MAIN = (
    "import pathlib, sys, time\n"
    "from textops import cli\n"
    "def run(params, out):\n"
    "    out.write_text('started')\n"
    "    try:\n"
    "        time.sleep(60)\n"
    "    finally:\n"
    "        out.write_text('cleaned up')\n"
    "sys.exit(cli.main('sentiment_prepare', 'a stage', ['out'], run))\n"
)


def test_sigterm_reaches_a_stage_as_an_exception(tmp_path):
    out = tmp_path / "out.txt"
    proc = subprocess.Popen(
        [sys.executable, "-c", STAGE_MAIN, "--out", str(out)],
        cwd=ROOT,
        env=flow_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: out.exists(), "the stage start", timeout_s=60)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 1
    assert out.read_text() == "cleaned up"  # `finally` blocks ran: an MLflow run there ends FAILED
    assert "error in stage 'sentiment_prepare': stopped by SIGTERM" in proc.stderr.read()
