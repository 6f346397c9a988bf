"""Prefect flows: run a task's DVC stages as tasks in dvc.yaml's order, then the promotion gate.

Each task shells out to `dvc repro --single-item <stage>`, so DVC decides what is stale and records
what ran; the flows hold no ML logic. A run with overrides (or another data source) is a DVC
experiment, `dvc exp run --temp -S ...`: DVC records it (dvc exp show), and the working tree,
params.yaml included, is left exactly as it was. Which stages belong to a task, its final stage and
its eval set come from dvc.yaml (textops.dag); what differs between tasks from textops.tasks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import task_run
from prefect.states import Completed

from pipelines.processes import hold_workspace, stream
from textops import dag, tasks
from textops.dag import stage_order
from textops.params import load_params


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message carries the end of its output."""


def check_overrides(repo: Path, overrides: list[str]) -> None:
    """Fail by key name before any stage runs: the overrides applied to a scratch copy of params.yaml with
    DVC's own -S grammar (the tracked file is never written)."""
    from dvc.utils.hydra import apply_overrides as dvc_apply

    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "params.yaml"
        copy.write_bytes((repo / "params.yaml").read_bytes())
        dvc_apply(copy, list(overrides))
        load_params(copy)


def absolute_source(repo: Path, source: str) -> str:
    """A data source outside the repository as an absolute path: an experiment runs in a temporary copy of
    the repository, where a path such as ../shared/data/sst2 would point elsewhere."""
    path = Path(source)
    if path.is_absolute() or not (repo / path).exists():
        return source  # absolute already, or not a path (a Hub id)
    inside = (repo / path).resolve().is_relative_to(repo.resolve())
    return source if inside else str((repo / path).resolve())


def experiment_rev(repo: Path, name: str) -> str:
    """The commit DVC recorded the experiment `name` as (refs/exps/.../<name>)."""
    refs = subprocess.run(
        ["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    found = [line.split()[0] for line in refs if line.endswith(f"/{name}")]
    if not found:
        raise StageFailed(f"dvc exp run finished but no experiment named '{name}' is recorded")
    return found[-1]


@task
def run_experiment(final: str, overrides: list[str], repo: str, name: str, timeout_s: float) -> dict:
    """`dvc exp run --temp`: the task's stages in a temporary copy; DVC records the result as experiment `name`."""
    log = get_run_logger()
    cmd = ["dvc", "exp", "run", "--temp", "--name", name, *[a for o in overrides for a in ("-S", o)], final]
    code, tail, seconds = stream(cmd, Path(repo), timeout_s, log, f"[{name}]", task_run.get_id())
    if code != 0:
        raise StageFailed(f"experiment '{name}' failed (exit {code}):\n" + "\n".join(tail[-25:]))
    log.info("experiment %s (%s) done in %.1f s", name, " ".join(overrides), seconds)
    return {
        "stage": f"experiment {name}",
        "ran": True,
        "seconds": round(seconds, 2),
        "experiment": name,
        "overrides": list(overrides),
        "rev": experiment_rev(Path(repo), name),
    }


@task
def run_stage(stage: str, repo: str, timeout_s: float) -> dict:
    log = get_run_logger()
    cmd = ["dvc", "repro", "--single-item", stage]
    code, tail, seconds = stream(cmd, Path(repo), timeout_s, log, f"[{stage}]", task_run.get_id())
    if code != 0:
        raise StageFailed(f"stage '{stage}' failed (exit {code}):\n" + "\n".join(tail[-25:]))
    ran = any(f"Running stage '{stage}'" in line for line in tail) or not any("didn't change" in line for line in tail)
    log.info("stage %s %s in %.1f s", stage, "ran" if ran else "skipped by DVC (unchanged)", seconds)
    return {"stage": stage, "ran": ran, "seconds": round(seconds, 2)}


@task
def promotion_gate(repo: str, timeout_s: float, task_name: str, eval_set: str) -> dict:
    log = get_run_logger()
    cmd = [sys.executable, "-m", "textops.promote", "gate", "--task", task_name, "--eval", eval_set]
    done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=timeout_s)
    for line in (done.stdout + done.stderr).splitlines():
        log.info("[gate] %s", line)
    if done.returncode not in (0, 2):
        raise StageFailed(f"promotion gate failed (exit {done.returncode}): {done.stderr.strip()[-1500:]}")
    return json.loads(done.stdout)


def metrics_table(repo: Path, task_name: str, rev: str | None = None) -> dict:
    """The task's metrics files (dvc.yaml), by stem: evaluate, quantize...; at `rev` (an experiment) or in the
    working tree. A file a run has not written yet is left out."""
    import dvc.api
    from dvc.exceptions import DvcException

    out = {}
    for path in dag.metrics_files(repo / "dvc.yaml", task_name).values():
        try:
            text = dvc.api.read(path, repo=str(repo), rev=rev) if rev else (repo / path).read_text()
            out[Path(path).stem] = json.loads(text)
        except (OSError, ValueError, DvcException):  # not written yet (a stage that has not run)
            continue
    return out


def eval_set_at(repo: Path, task_name: str, rev: str, folder: Path) -> Path:
    """The experiment's frozen eval set, read from DVC's cache at `rev` into `folder` (the gate scores on it)."""
    import dvc.api

    relative = dag.eval_set(repo / "dvc.yaml", task_name).relative_to(repo)
    target = folder / relative.name
    with dvc.api.open(str(relative), repo=str(repo), rev=rev, mode="rb") as src:
        target.write_bytes(src.read())
    return target


def report(stages: list[dict], gate: dict | None, metrics: dict, task_name: str) -> str:
    lines = [f"# {task_name} pipeline", "", "| stage | result | seconds |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {'ran' if s['ran'] else 'skipped (unchanged)'} | {s['seconds']} |" for s in stages]
    lines += ["", "| metric | value |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in tasks.get(task_name).headline(metrics)]
    if gate:
        run_id = gate.get("evidence", {}).get("run_id")
        ui = os.environ.get("MLFLOW_UI_URL", "http://127.0.0.1:5000")
        lines += ["", f"**Gate:** {gate['decision']} (version {gate.get('version')})"]
        lines += [f"- {r}" for r in gate.get("reasons", [])]
        if run_id:
            lines += ["", f"MLflow run: [{run_id}]({ui}/#/runs/{run_id})"]
    return "\n".join(lines) + "\n"


def run_dag(task_name: str, repo: Path, final: str, overrides: list[str]) -> tuple[list[dict], str | None]:
    """The task's stages as Prefect tasks (or, with overrides, one DVC experiment); returns their results and
    the experiment's commit (None without one)."""
    from prefect.runtime import flow_run

    settings = load_params(repo / "params.yaml").orchestrate  # read once the run holds the workspace
    if overrides:
        step = run_experiment.with_options(
            name="experiment", retries=settings.retries, retry_delay_seconds=settings.retry_delay_s
        )
        name = f"{task_name}-{flow_run.get_name() or int(time.time())}"
        result = step(final, overrides, str(repo), name, settings.stage_timeout_s)
        return [result], result["rev"]
    results = []
    for stage in stage_order(repo / "dvc.yaml", targets=[final]):
        step = run_stage.with_options(name=stage, retries=settings.retries, retry_delay_seconds=settings.retry_delay_s)
        results.append(step(stage, str(repo), settings.stage_timeout_s))
    return results, None


def holder() -> str:
    """Who holds the workspace, as a run waiting for it logs it."""
    from prefect.runtime import flow_run

    return f"flow run {flow_run.get_name()} ({flow_run.get_id()}), pid {os.getpid()}, since {time.strftime('%H:%M:%S')}"


@flow(name="pipeline", log_prints=True)
def pipeline(
    task_name: str = "sentiment",
    overrides: list[str] | None = None,
    data_source: str | None = None,
    repo: str = ".",
    gate: bool = True,
) -> dict:
    """Run one task's DVC stages in dvc.yaml's order, then the promotion gate. With overrides or another data
    source, the run is a DVC experiment in a temporary copy, and the working tree is left as it was. One run
    per workspace at a time: a run that finds another one there waits for it to finish."""
    t = tasks.get(task_name)
    repo_path = Path(repo).resolve()
    final = dag.final_stage(repo_path / "dvc.yaml", t.name)
    overrides = list(overrides or [])
    if data_source:
        overrides.append(f"{t.source_key}={absolute_source(repo_path, data_source)}")
    if overrides:
        check_overrides(repo_path, overrides)  # a typo fails now, not after waiting for the workspace
    with hold_workspace(repo_path, holder(), get_run_logger()):
        results, rev = run_dag(t.name, repo_path, final, overrides)
        decision = None
        if gate:
            timeout_s = load_params(repo_path / "params.yaml").orchestrate.stage_timeout_s
            with tempfile.TemporaryDirectory() as scratch:
                eval_path = (
                    eval_set_at(repo_path, t.name, rev, Path(scratch))
                    if rev
                    else dag.eval_set(repo_path / "dvc.yaml", t.name)
                )
                decision = promotion_gate(str(repo_path), timeout_s, t.name, str(eval_path))
        metrics = metrics_table(repo_path, t.name, rev)
    create_markdown_artifact(
        markdown=report(results, decision, metrics, t.name),
        key=f"{t.name}-pipeline",
        description="stages, metrics and the gate decision",
    )
    return {"stages": results, "gate": decision}


def data_hash(repo: Path, source: str, task_name: str) -> str:
    from textops.sources import hash_files

    path = Path(source)
    path = path if path.is_absolute() or not (repo / path).exists() else repo / path
    return hash_files(tasks.get(task_name).source_files(path))


@flow(name="retrain", log_prints=True)
def retrain(
    task_name: str = "sentiment",
    data_source: str | None = None,
    overrides: list[str] | None = None,
    repo: str = ".",
    force: bool = False,
):
    """Retrain only when the data source's content changed since the last successful run."""
    from prefect.variables import Variable

    repo_path = Path(repo).resolve()
    source = data_source or tasks.get(task_name).source(load_params(repo_path / "params.yaml"))
    digest = data_hash(repo_path, source, task_name)
    key = f"{task_name}-last-trained-data-sha256"
    last = Variable.get(key, default=None)
    if last == digest and not force:
        note = f"skipped: {source} is unchanged since the last successful run (sha256 {digest[:12]})"
        get_run_logger().info(note)
        return Completed(name="Skipped", message=note)
    result = pipeline(task_name=task_name, overrides=overrides, data_source=data_source, repo=str(repo_path))
    Variable.set(key, digest, overwrite=True)
    return result
