"""Real `bentoml serve` processes for the service tests, and the HTTP calls the tests make to them.

Each server runs on 127.0.0.1 at a free port in a process group of its own (BentoML starts a
supervisor and worker processes), and is stopped by signalling the whole group.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from serving.processes import free_port, stop_process  # shared with bench/serving/

BENTOML = str(Path(sys.executable).with_name("bentoml"))
READY_TIMEOUT_S = 180


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def start(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> Server:
    """`bentoml serve ARGS` in `cwd`, returned once /readyz answers 200 (else stopped, with its log in the error)."""
    port = free_port()
    cmd = [BENTOML, "serve", *args, "--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        wait_ready(server)
    except BaseException:
        stop(server)
        raise
    return server


def wait_ready(server: Server, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {server.proc.returncode}; its log:\n{server.output()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.5)
    raise TimeoutError(f"bentoml serve was not ready within {timeout} s; its log:\n{server.output()}")


def stop(server: Server) -> None:
    stop_process(server.proc)


def classify(url: str, texts, client: httpx.Client | None = None) -> httpx.Response:
    return (client or httpx).post(f"{url}/classify", json={"texts": texts}, timeout=60)


def probabilities(response: httpx.Response) -> list[dict[str, float]]:
    assert response.status_code == 200, response.text
    return [row["probabilities"] for row in response.json()]


def metadata(url: str) -> dict:
    response = httpx.get(f"{url}/metadata", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()
