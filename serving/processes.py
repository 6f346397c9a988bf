"""Server processes on loopback: a free port, and stopping a server with every worker it started.

Shared by the service tests (tests/service/servers.py) and the load benches (bench/serving/), which
start `bentoml serve` or uvicorn with `start_new_session=True`, so that a server and its workers
form a process group of their own.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the time of the call."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group of `proc` (started with start_new_session), then SIGKILL to what is left.

    BentoML's workers run in process groups of their own, so they are found as the leader's
    descendants first, and killed one by one if the leader's shutdown left them behind.
    """
    import psutil

    try:
        workers = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        workers = []
    group = proc.pid  # start_new_session: the leader's pid is the group id
    try:
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)
    _, alive = psutil.wait_procs(workers, timeout=10)
    for worker in alive:
        worker.kill()
    psutil.wait_procs(alive, timeout=10)
