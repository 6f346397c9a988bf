"""Team mode's runs (issue 17): a process work pool with a real `prefect worker` (scripts/stack.sh) picking up a
scheduled run, a run by hand waiting for the workspace's queue limit instead of colliding; and DVC's queued
experiments run two at a time, each with its MLflow run tagged with its experiment name. Tiny settings of the
sentiment task (tests/pipelines/test_overlap_and_stop.py's workspace)."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import prefect_server
import psutil
import pytest
from test_overlap_and_stop import workspace  # noqa: F401 - the same tiny workspace, built again for this module

import team_stack


@pytest.fixture(scope="module", autouse=True)
def prefect_api(request) -> str:
    return prefect_server.api_url(request.config)


def wait_for(what: str, check, timeout: float):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.5)
    return found


def test_worker_runs_the_schedule_and_a_run_by_hand_waits_its_turn(request, workspace):  # noqa: F811
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter
    from prefect.schedules import Interval

    from pipelines.deploy import deploy

    team_stack.up(request.config, "worker")
    made = deploy(
        workspace, "textops", ["sentiment"], schedule=Interval(datetime.timedelta(seconds=5))
    )  # a short schedule instead of orchestrate.cron's daily one
    with get_client(sync_client=True) as client:

        def runs(name: str) -> list:
            only = DeploymentFilter(id=DeploymentFilterId(any_=[made[name]]))
            return client.read_flow_runs(deployment_filter=only, flow_run_filter=FlowRunFilter())

        first = wait_for(
            "a scheduled run picked up by the worker",
            lambda: next((r for r in runs("sentiment-retrain") if r.state and r.state.is_running()), None),
            120,
        )
        client.pause_deployment(made["sentiment-retrain"])
        for run in runs("sentiment-retrain"):
            if run.state and run.state.is_scheduled():
                client.delete_flow_run(run.id)
        by_hand = client.create_flow_run_from_deployment(made["sentiment-pipeline"]).id
        while not client.read_flow_run(first.id).state.is_final():
            state = client.read_flow_run(by_hand).state
            assert not (state.is_running() or state.is_final()), f"the run by hand started beside the first: {state}"
            time.sleep(0.5)
        first = client.read_flow_run(first.id)
        assert first.state.is_completed(), first.state
        done = wait_for("the run by hand", lambda: (r := client.read_flow_run(by_hand)).state.is_final() and r, 180)
        assert done.state.is_completed(), done.state
        assert done.start_time >= first.end_time  # it waited its turn


def test_queued_experiments_run_two_at_a_time_each_tracked(workspace):  # noqa: F811
    """`dvc exp run --queue` twice, `dvc queue start -j 2`: both finish, and each has its MLflow run in the
    workspace's store (not the temporary copy DVC runs it in), tagged dvc_experiment=<its name>."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the workspace's own store
    names = {"q-epochs-3": "3", "q-epochs-4": "4"}
    for name, epochs in names.items():
        queued = subprocess.run(
            ["dvc", "exp", "run", "--queue", "--name", name, "-S", f"sentiment.train.epochs={epochs}"]
            + ["sentiment_package"],
            cwd=workspace,
            env=env,
            capture_output=True,
            text=True,
        )
        assert queued.returncode == 0, queued.stderr
    # `dvc queue start` leaves a daemon behind that inherits its stdout and stderr: captured to pipes, they never
    # close and run() waits forever (seen in CI). A file does not wait for it.
    with (workspace / "queue-start.log").open("w+") as log:
        started = subprocess.run(
            ["dvc", "queue", "start", "-j", "2"], cwd=workspace, env=env, stdout=log, stderr=log, timeout=120
        )
        log.seek(0)
        assert started.returncode == 0, log.read()
    try:
        check_queued_runs(workspace, env, names)
    finally:  # nothing left running: the workers, and the daemon that started them (a worker idle after the
        # queue emptied was once seen not to exit: whatever still runs in the workspace is killed)
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=workspace, env=env, capture_output=True, timeout=120)
        kill_processes_in(workspace)


def kill_processes_in(folder: Path) -> None:
    for proc in psutil.process_iter(["cwd"]):
        if proc.info["cwd"] and Path(proc.info["cwd"]).is_relative_to(folder):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


def check_queued_runs(repo: Path, env: dict[str, str], names: dict[str, str]) -> None:
    def finished() -> str | None:
        shown = subprocess.run(["dvc", "queue", "status"], cwd=repo, env=env, capture_output=True, text=True)
        rows = [line for line in shown.stdout.splitlines() if any(n in line for n in names)]
        return shown.stdout if len(rows) == 2 and all(("Success" in r or "Failed" in r) for r in rows) else None

    status = wait_for("both queued experiments", finished, 600)
    logs = {
        n: subprocess.run(["dvc", "queue", "logs", n], cwd=repo, env=env, capture_output=True, text=True).stdout
        for n in names
    }
    assert status.count("Success") >= 2, status + "\n".join(f"--- {n}:\n{log[-3000:]}" for n, log in logs.items())
    query = (
        "import json, mlflow; mlflow.set_tracking_uri(__import__('textops.tracking').tracking.default_tracking_uri());"
        "print(json.dumps([r.data.tags.get('dvc_experiment') for r in mlflow.search_runs("
        "experiment_names=['sentiment'], output_format='list')]))"
    )
    tags = subprocess.run(
        [sys.executable, "-c", query],
        cwd=repo,
        env={**env, "PYTHONPATH": str(repo)},
        capture_output=True,
        text=True,
    )
    assert set(names) <= set(json.loads(tags.stdout.splitlines()[-1])), tags.stdout + tags.stderr
