"""Orchestration overhead of the Prefect pipeline flow against a real local Prefect server.

Starts `prefect server start` on 127.0.0.1 (a temporary PREFECT_HOME), serves the deployments
from a fresh clone of this repository (offline defaults), triggers `pipeline/sentiment-pipeline`
twice the way a person would (`prefect deployment run`), and prints, per run: flow wall time, the
sum of the stage task times, the overhead (their difference), and which stages DVC ran.
Target: overhead <= max(10% of the flow time, 15 s).

Run: python -m bench.orchestration.prefect_overhead [--port 4277]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench import ROOT as REPO


def wait_healthy(url: str, seconds: int = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"Prefect server at {url} did not become healthy")


async def timings(flow_run_id: str) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        run = await client.read_flow_run(flow_run_id)
        tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    stages = {t.name.split("-")[0]: t.total_run_time.total_seconds() for t in tasks}
    wall = (run.end_time - run.start_time).total_seconds()
    return {"state": run.state.name, "wall": wall, "tasks": stages}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=4277)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="prefect-bench-"))
    url = f"http://127.0.0.1:{args.port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(work / "prefect-home"),
        "PREFECT_API_URL": url,
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(args.port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
    }
    os.environ.update(env)
    subprocess.run(["git", "clone", "-q", str(REPO), str(work / "repo")], check=True)
    server = subprocess.Popen(
        ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(args.port)],
        env=env,
        stdout=open(work / "server.log", "w"),
        stderr=subprocess.STDOUT,
    )
    served = None
    try:
        wait_healthy(url)
        served = subprocess.Popen(
            [sys.executable, "-m", "pipelines.serve", "--repo", str(work / "repo")],
            cwd=work / "repo",
            env=env,
            stdout=open(work / "serve.log", "w"),
            stderr=subprocess.STDOUT,
        )
        time.sleep(8)
        ls = subprocess.run(["prefect", "deployment", "ls"], env=env, capture_output=True, text=True)
        print(ls.stdout)
        for attempt in (1, 2):
            started = time.perf_counter()
            out = subprocess.run(
                ["prefect", "deployment", "run", "pipeline/sentiment-pipeline", "--watch"],
                env=env,
                capture_output=True,
                text=True,
            )
            flow_run_id = next(line.split()[-1] for line in out.stdout.splitlines() if "UUID" in line)
            t = asyncio.run(timings(flow_run_id))
            stage_sum = sum(v for k, v in t["tasks"].items() if k not in ("apply_overrides", "promotion_gate"))
            overhead = t["wall"] - stage_sum
            print(
                f"run {attempt}: state {t['state']}, flow wall {t['wall']:.1f} s, stages {stage_sum:.1f} s, "
                f"overhead {overhead:.1f} s ({100 * overhead / t['wall']:.1f}%), budget "
                f"{max(0.1 * t['wall'], 15):.1f} s; trigger-to-done {time.perf_counter() - started:.1f} s"
            )
            print("  tasks:", {k: round(v, 1) for k, v in t["tasks"].items()})
    finally:
        for proc in (served, server):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
        print(f"logs: {work}")


if __name__ == "__main__":
    main()
