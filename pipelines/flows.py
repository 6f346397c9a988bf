"""Prefect flows: run the DVC stages as tasks in dvc.yaml's order, then the promotion gate.

Each task shells out to `dvc repro --single-item <stage>`, so DVC decides what is stale and records
what ran; the flows hold no ML logic. Overrides go through DVC's own `-S` grammar.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed

from pipelines.dag import stage_order
from textops.params import load_params

# Each task's last stage (dvc.yaml), and where its params and outputs live: a run takes that stage
# and what it needs, so one task's flow never runs the other's stages.
TASKS = {"sentiment": {"final": "package", "params": "", "outputs": "outputs/sentiment"},
         "story": {"final": "story_package", "params": "story.", "outputs": "outputs/story"}}


def known_task(task_name: str) -> dict:
    if task_name not in TASKS:
        raise ValueError(f"unknown task '{task_name}'; known: {sorted(TASKS)}")
    return TASKS[task_name]


def source_key(task_name: str) -> str:
    return f"{known_task(task_name)['params']}prepare.source"


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message carries the end of its output."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # If the flow process is killed, the dvc child goes too, so nothing keeps running unseen.
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def reap_orphans(pgid_file: Path, log) -> None:
    """A flow killed mid-stage can leave the stage's processes running: stop them before going on."""
    if not pgid_file.is_file():
        return
    try:
        pgid = int(pgid_file.read_text().strip())
        os.killpg(pgid, signal.SIGKILL)
        log.warning("stopped processes left running by a killed earlier run (process group %d)", pgid)
        deadline = time.monotonic() + 10
        while _alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
    except (ValueError, ProcessLookupError, PermissionError):
        pass
    pgid_file.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """Running (a zombie, killed but not yet reaped by its new parent, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


def release_stale_dvc_locks(repo: Path, log) -> None:
    """Drop entries of dead processes from DVC's rwlock (what DVC's own error asks a person to do).

    A dvc process killed without cleanup leaves its pid in .dvc/tmp/rwlock, and every later
    `dvc repro` refuses to start until the file is removed by hand.
    """
    path = repo / ".dvc" / "tmp" / "rwlock"
    if not path.is_file():
        return
    try:
        locks = json.loads(path.read_text() or "{}")
    except ValueError:
        return
    dropped = 0
    for mode in ("read", "write"):
        for target, holders in list(locks.get(mode, {}).items()):
            entries = holders if isinstance(holders, list) else [holders]
            live = [e for e in entries if _alive(int(e.get("pid", 0)))]
            dropped += len(entries) - len(live)
            if not live:
                del locks[mode][target]
            else:
                locks[mode][target] = live if isinstance(holders, list) else live[0]
    if dropped:
        path.write_text(json.dumps(locks))
        log.warning("released %d DVC lock(s) held by processes that no longer exist", dropped)


def stream(cmd: list[str], cwd: Path, timeout_s: float, log, prefix: str) -> tuple[int, list[str], float]:
    """Run a command, sending each output line (progress bars included, throttled) to the log."""
    started = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    pgid_file = cwd / ".dvc" / "tmp" / "orchestrator.pgid"
    reap_orphans(pgid_file, log)
    release_stale_dvc_locks(cwd, log)
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, preexec_fn=_die_with_parent)
    pgid_file.parent.mkdir(parents=True, exist_ok=True)
    pgid_file.write_text(str(proc.pid))  # its own session: the pid is the process group id
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        os.killpg(proc.pid, signal.SIGTERM)

    timer = threading.Timer(timeout_s, kill)
    timer.start()
    tail: deque[str] = deque(maxlen=60)
    last_progress = 0.0
    buffer = b""
    try:
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):
            buffer += chunk
            *lines, buffer = buffer.replace(b"\r", b"\n").split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace").rstrip()
                if not line:
                    continue
                if "it/s]" in line or "s/it]" in line:  # tqdm: one line every few seconds is plenty
                    if time.monotonic() - last_progress < 5:
                        continue
                    last_progress = time.monotonic()
                tail.append(line)
                log.info("%s %s", prefix, line)
        code = proc.wait()
    finally:
        timer.cancel()
        pgid_file.unlink(missing_ok=True)
    if killed.is_set():
        tail.append(f"killed after the stage timeout of {timeout_s:.0f} s (orchestrate.stage_timeout_s)")
        code = code or -signal.SIGTERM
    return code, list(tail), time.perf_counter() - started


@task
def apply_overrides(repo: str, overrides: list[str]) -> list[str]:
    """Write `key=value` overrides into params.yaml with DVC's own -S grammar (dvc exp run -S)."""
    from dvc.utils.hydra import apply_overrides as dvc_apply

    if overrides:
        dvc_apply(Path(repo) / "params.yaml", list(overrides))
        load_params(Path(repo) / "params.yaml")  # fail here, by key name, not three stages later
        get_run_logger().info("params overrides applied: %s", overrides)
    return list(overrides)


@task
def run_stage(stage: str, repo: str, timeout_s: float) -> dict:
    log = get_run_logger()
    code, tail, seconds = stream(["dvc", "repro", "--single-item", stage], Path(repo), timeout_s, log, f"[{stage}]")
    if code != 0:
        raise StageFailed(f"stage '{stage}' failed (exit {code}):\n" + "\n".join(tail[-25:]))
    ran = any(f"Running stage '{stage}'" in line for line in tail) or not any("didn't change" in line for line in tail)
    log.info("stage %s %s in %.1f s", stage, "ran" if ran else "skipped by DVC (unchanged)", seconds)
    return {"stage": stage, "ran": ran, "seconds": round(seconds, 2)}


@task
def promotion_gate(repo: str, timeout_s: float, task_name: str = "sentiment") -> dict:
    log = get_run_logger()
    cmd = [sys.executable, "-m", "textops.promote", "gate", "--task", task_name]
    done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=timeout_s)
    for line in (done.stdout + done.stderr).splitlines():
        log.info("[gate] %s", line)
    if done.returncode not in (0, 2):
        raise StageFailed(f"promotion gate failed (exit {done.returncode}): {done.stderr.strip()[-1500:]}")
    return json.loads(done.stdout)


def metrics_table(repo: Path, task_name: str = "sentiment") -> dict:
    """The task's metrics files, by stage name (outputs/<task>/metrics/<stage>.json)."""
    done = subprocess.run(["dvc", "metrics", "show", "--json"], cwd=repo, capture_output=True, text=True)
    try:
        files = next(iter(json.loads(done.stdout).values()))["data"]
    except (ValueError, StopIteration, KeyError):
        return {}
    folder = known_task(task_name)["outputs"] + "/"
    return {Path(name).stem: content.get("data", {}) for name, content in files.items() if name.startswith(folder)}


def metric_rows(metrics: dict, task_name: str) -> list[str]:
    ev, q = metrics.get("evaluate", {}), metrics.get("quantize", {})
    if task_name == "story":
        return [f"| eval perplexity (FP32) | {ev.get('perplexity')} |",
                f"| INT8 perplexity change | {q.get('perplexity_change')} |",
                f"| INT8 greedy agreement (teacher-forced) | "
                f"{q.get('greedy_agreement', {}).get('onnx_int8', {}).get('teacher_forced')} |",
                f"| INT8 tokens/s (vs PyTorch FP32) | {q.get('speed', {}).get('onnx_int8_loop', {}).get('tokens_per_s')} "
                f"({q.get('int8_loop_speedup_vs_pytorch')}x) |"]
    return [f"| eval accuracy (FP32) | {ev.get('accuracy')} |", f"| macro F1 | {ev.get('macro_f1')} |",
            f"| INT8 accuracy | {q.get('accuracy', {}).get('onnx_int8')} |",
            f"| INT8/FP32 agreement | {q.get('agreement')} |",
            f"| INT8 p50 latency (ms) | {q.get('latency_ms', {}).get('onnx_int8', {}).get('p50')} |"]


def report(stages: list[dict], gate: dict | None, metrics: dict, task_name: str) -> str:
    lines = [f"# {task_name} pipeline", "", "| stage | result | seconds |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {'ran' if s['ran'] else 'skipped (unchanged)'} | {s['seconds']} |" for s in stages]
    lines += ["", "| metric | value |", "|---|---|"] + metric_rows(metrics, task_name)
    if gate:
        run_id = gate.get("evidence", {}).get("run_id")
        ui = os.environ.get("MLFLOW_UI_URL", "http://127.0.0.1:5000")
        lines += ["", f"**Gate:** {gate['decision']} (version {gate.get('version')})"]
        lines += [f"- {r}" for r in gate.get("reasons", [])]
        if run_id:
            lines += [f"", f"MLflow run: [{run_id}]({ui}/#/runs/{run_id})"]
    return "\n".join(lines) + "\n"


@flow(name="pipeline", log_prints=True)
def pipeline(task_name: str = "sentiment", overrides: list[str] | None = None, data_source: str | None = None,
             repo: str = ".", gate: bool = True) -> dict:
    """Run the DVC stages of one task in dvc.yaml's order, then the promotion gate."""
    final = known_task(task_name)["final"]
    repo_path = Path(repo).resolve()
    overrides = list(overrides or []) + ([f"{source_key(task_name)}={data_source}"] if data_source else [])
    apply_overrides(str(repo_path), overrides)
    settings = load_params(repo_path / "params.yaml").orchestrate
    results = []
    for stage in stage_order(repo_path / "dvc.yaml", targets=[final]):
        step = run_stage.with_options(name=stage, retries=settings.retries, retry_delay_seconds=settings.retry_delay_s)
        results.append(step(stage, str(repo_path), settings.stage_timeout_s))
    decision = promotion_gate(str(repo_path), settings.stage_timeout_s, task_name) if gate else None
    create_markdown_artifact(markdown=report(results, decision, metrics_table(repo_path, task_name), task_name),
                             key=f"{task_name}-pipeline", description="stages, metrics and the gate decision")
    return {"stages": results, "gate": decision}


def data_hash(repo: Path, source: str, task_name: str = "sentiment") -> str:
    from textops.sources import hash_files, locate

    path = Path(source)
    path = path if path.is_absolute() or not (repo / path).exists() else repo / path
    if task_name == "story":  # a text file, or a folder of them
        return hash_files(sorted(path.rglob("*.txt")) if path.is_dir() else [path])
    return hash_files(list(locate(str(path)).values()))


@flow(name="retrain", log_prints=True)
def retrain(task_name: str = "sentiment", data_source: str | None = None, overrides: list[str] | None = None,
            repo: str = ".", force: bool = False):
    """Retrain only when the data source's content changed since the last successful run."""
    from prefect.variables import Variable

    repo_path = Path(repo).resolve()
    params = load_params(repo_path / "params.yaml")
    source = data_source or (params.story.prepare.source if task_name == "story" else params.prepare.source)
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
