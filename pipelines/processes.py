"""What a pipeline run owns in its workspace, and how it gives it back when the run ends or dies.

- The workspace lock (.dvc/tmp/orchestrator.lock): one pipeline run per workspace at a time; later runs wait
  for it. An OS lock (flock): the kernel drops it when the holder dies, however it dies.
- Stage process groups: each stage runs in a process group of its own, recorded in
  .dvc/tmp/orchestrator/<pgid>.json with the flow process that owns it. A run stops its own group when the
  stage fails, times out, or the flow is cancelled or gets SIGTERM; a group whose owner is dead (SIGKILL, OOM)
  is stopped by the next run. Groups of a live owner are never touched.
- A stage that died leaves no "running" records: its MLflow runs still RUNNING end FAILED, and an orphan's
  Prefect task run ends Crashed.
- DVC's rwlock entries of dead processes are dropped (DVC refuses to start until they are).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from textops import tracking

# SIGTERM lets a stage end its MLflow run FAILED (textops.cli.main); this is how long it gets before SIGKILL.
STOP_GRACE_S = 5.0
LOCK_FILE = Path(".dvc") / "tmp" / "orchestrator.lock"
RECORDS = Path(".dvc") / "tmp" / "orchestrator"


class WorkspaceError(RuntimeError):
    """The repository cannot hold a pipeline run (not a DVC repository)."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # If the flow process is killed, the dvc child goes too; its stage is left to the next run's reaping.
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (which may hold spaces): state is [0], pgrp [2],
    start time [19]; None when the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def started(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), or None when it is gone or a zombie. With the pid, it
    names one process: a pid alone may have been reused by the time someone checks it."""
    fields = _stat(pid)
    return None if fields is None or fields[0] in "ZX" else int(fields[19])


def alive(pid: int) -> bool:
    """Running (a zombie, killed but not yet reaped by its parent, counts as gone)."""
    return started(pid) is not None


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and fields[0] not in "ZX":
            if int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def stop_group(pgid: int, grace_s: float = STOP_GRACE_S) -> bool:
    """SIGTERM the group, SIGKILL what is left after `grace_s`; wait until none of it runs. True if any ran."""
    if not group_members(pgid):
        return False
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait_s
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not group_members(pgid):
            break
    return True


@contextlib.contextmanager
def hold_workspace(repo: Path, holder: str, log) -> Iterator[None]:
    """Wait for, then hold, the workspace lock: runs on one workspace go one at a time, in turn, never killing
    each other. Prefect's global concurrency limits were measured and not taken: a SIGKILLed holder keeps its
    slot until its lease (at least 60 s) expires, and a slot held across a server restart stays taken for good
    (leases live in the server's memory); see docs/orchestration.md."""
    if not (repo / ".dvc").is_dir():
        raise WorkspaceError(f"{repo} is not a DVC repository (no .dvc folder): pass the repository as repo=")
    path = repo / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for the run that holds %s: %s", repo, path.read_text().strip() or "(starting)")
            fcntl.flock(fh, fcntl.LOCK_EX)  # a signal (SIGTERM, cancellation) still interrupts the wait
            log.info("workspace %s is free; starting", repo)
        fh.seek(0)
        fh.truncate()
        fh.write(holder)
        fh.flush()
        try:
            yield
        finally:
            fh.truncate(0)
            fcntl.flock(fh, fcntl.LOCK_UN)


def mlflow_uri(repo: Path) -> str:
    """The store the workspace's stages log to (MLFLOW_TRACKING_URI, else the workspace's SQLite store)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or tracking.default_tracking_uri(repo)


def fail_mlflow_runs(record: dict, log) -> None:
    """The stage's MLflow runs still RUNNING end FAILED (a stage killed before its own `except` ran)."""
    try:
        failed = tracking.fail_running_runs(record["mlflow_uri"], record["task_run_id"])
    except Exception as error:  # an unreachable store must not hide why the stage stopped
        log.warning("could not mark the stage's MLflow runs FAILED in %s: %s", record["mlflow_uri"], error)
        return
    if failed:
        log.warning("marked MLflow run(s) %s FAILED: their stage stopped before it could", ", ".join(failed))


def crash_prefect_runs(task_run_id: str, reason: str, log) -> None:
    """An orphan's Prefect task run (and its flow run), left Running by a flow process that was killed, end
    Crashed. Runs of another Prefect server are not found here and are left alone."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    try:
        with get_client(sync_client=True) as client:
            task_run = client.read_task_run(uuid.UUID(task_run_id))
            if task_run.state and task_run.state.is_running():
                client.set_task_run_state(task_run.id, Crashed(message=reason), force=True)
            flow_run = client.read_flow_run(task_run.flow_run_id) if task_run.flow_run_id else None
            if flow_run and flow_run.state and flow_run.state.is_running():
                client.set_flow_run_state(flow_run.id, Crashed(message=reason), force=True)
    except Exception as error:  # not on this server, or it is down: the processes are what matters
        log.info("left Prefect task run %s as it is (%s)", task_run_id, type(error).__name__)


def reap_orphans(repo: Path, log) -> None:
    """Stop stage process groups whose owning flow process is dead, and close their records."""
    folder = repo / RECORDS
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text())
            owner, owner_started, pgid = int(record["owner"]), int(record["owner_started"]), int(record["pgid"])
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)  # unreadable: cut off mid-write, so its stage never started
            continue
        if started(owner) == owner_started:
            continue  # its flow is alive and stops its own stage
        if stop_group(pgid):
            log.warning("stopped stage %s left running by a dead flow process (pid %d)", record["stage"], owner)
        fail_mlflow_runs(record, log)
        crash_prefect_runs(record["task_run_id"], f"its flow process (pid {owner}) died mid-stage", log)
        path.unlink(missing_ok=True)


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
            live = [e for e in entries if alive(int(e.get("pid", 0)))]
            dropped += len(entries) - len(live)
            if not live:
                del locks[mode][target]
            else:
                locks[mode][target] = live if isinstance(holders, list) else live[0]
    if dropped:
        path.write_text(json.dumps(locks))
        log.warning("released %d DVC lock(s) held by processes that no longer exist", dropped)


def _record(repo: Path, pgid: int, stage: str, task_run_id: str) -> tuple[Path, dict]:
    record = {
        "pgid": pgid,
        "owner": os.getpid(),
        "owner_started": started(os.getpid()),
        "stage": stage,
        "task_run_id": task_run_id,
        "mlflow_uri": mlflow_uri(repo),
    }
    path = repo / RECORDS / f"{pgid}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)  # whole or absent: a reaper never reads half a record
    return path, record


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGTERM/SIGINT while a stopped stage is cleaned up: a second signal (a user pressing Ctrl-C
    twice) must not cut the cleanup short and leave the stage running. Only the main thread can do this."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _pump(proc: subprocess.Popen, log, prefix: str, tail: deque) -> None:
    """Send each output line (progress bars included, throttled) to the log, keeping the last ones in `tail`."""
    last_progress = 0.0
    buffer = b""
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


def stream(
    cmd: list[str], repo: Path, timeout_s: float, log, prefix: str, task_run_id: str | None = None
) -> tuple[int, list[str], float]:
    """Run a stage command in its own recorded process group, streaming its output to the log. However the
    command ends (done, failed, timed out, or this process told to stop), none of its processes outlive it."""
    started_at = time.perf_counter()
    task_run_id = task_run_id or str(uuid.uuid4())
    reap_orphans(repo, log)
    release_stale_dvc_locks(repo, log)
    # The stage tags the MLflow runs it opens with this id (textops.tracking), so they can be found and failed.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", tracking.STAGE_RUN_ENV: task_run_id}
    proc = subprocess.Popen(
        cmd,
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # its own session: the pid is the process group id
        preexec_fn=_die_with_parent,
    )
    path, record = _record(repo, proc.pid, prefix.strip("[]"), task_run_id)
    timed_out = threading.Event()

    def on_timeout() -> None:
        timed_out.set()
        stop_group(proc.pid)

    timer = threading.Timer(timeout_s, on_timeout)
    timer.start()
    tail: deque[str] = deque(maxlen=60)
    stopped = True
    try:
        _pump(proc, log, prefix, tail)
        code = proc.wait()
        stopped = code != 0
    finally:
        # Reached with an exception too: Prefect's TerminationSignal (SIGTERM: the runner cancelling the flow,
        # or a kill) or Ctrl-C. The stage goes with its flow instead of running on unseen.
        with _signals_deferred():
            timer.cancel()
            if stop_group(proc.pid):
                log.warning("%s stopped the stage's processes", prefix)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)  # the leader is our child: reap it
            if stopped:
                fail_mlflow_runs(record, log)
            path.unlink(missing_ok=True)
            proc.stdout.close()
    if timed_out.is_set():
        tail.append(f"killed after the stage timeout of {timeout_s:.0f} s (orchestrate.stage_timeout_s)")
        code = code or -signal.SIGTERM
    return code, list(tail), time.perf_counter() - started_at
