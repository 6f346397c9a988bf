"""Real `bentoml serve` processes for the service tests, and the HTTP calls the tests make to them.

Each server runs on 127.0.0.1 at a free port in a process group of its own (BentoML starts a
supervisor and worker processes), and is stopped by signalling the whole group.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from serving.processes import free_port, stop_process  # shared with bench/serving/

BENTOML = str(Path(sys.executable).with_name("bentoml"))
MLFLOW = str(Path(sys.executable).with_name("mlflow"))
READY_TIMEOUT_S = 180


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def start(
    args: list[str],
    cwd: Path,
    env: dict[str, str],
    log: Path,
    host: str | None = "127.0.0.1",
    probe: str = "/readyz",
    port: int | None = None,
) -> Server:
    """`bentoml serve ARGS` in `cwd`, returned once `probe` answers 200 (else stopped, with its log in the error).
    `host` None: no --host, so the service's own bind address applies (it must be loopback for the tests).
    `port` None: a free one."""
    port = port or free_port()
    cmd = [BENTOML, "serve", *args, *(["--host", host] if host else []), "--port", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        wait_ready(server, probe=probe)
    except BaseException:
        stop(server)
        raise
    return server


def wait_ready(server: Server, timeout: float = READY_TIMEOUT_S, probe: str = "/readyz") -> None:
    name = " ".join(Path(arg).name for arg in server.proc.args[:2])  # "bentoml serve", "mlflow server"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {server.proc.returncode}; its log:\n{server.output()}")
        try:
            if httpx.get(f"{server.url}{probe}", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.5)
    raise TimeoutError(f"{name}'s {probe} did not answer 200 within {timeout} s; its log:\n{server.output()}")


def stop(server: Server) -> None:
    stop_process(server.proc)


def classify(url: str, texts, client: httpx.Client | None = None) -> httpx.Response:
    return (client or httpx).post(f"{url}/classify", json={"texts": texts}, timeout=60)


def probabilities(response: httpx.Response) -> list[dict[str, float]]:
    assert response.status_code == 200, response.text
    return [row["probabilities"] for row in response.json()]


def metadata(url: str, headers: dict | None = None) -> dict:
    response = httpx.get(f"{url}/metadata", timeout=10, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


class Held:
    """A POST whose body is held back: from its headers on, the server counts it as in progress (one of its
    max_concurrency slots), as it would a slow client's, until `finish()` sends the rest or `close()` gives up."""

    def __init__(self, url: str, path: str, headers: dict[str, str], body: bytes = b'{"texts": "a fine film"}'):
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json", "Connection: close"]
        lines += [f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
        self.rest = body[len(body) // 2 :]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body[: len(body) // 2])

    def finish(self) -> tuple[int, bytes]:
        """Sends the rest of the body; the answer's status and body (read until the server closes)."""
        self.sock.sendall(self.rest)
        answer = b""
        while chunk := self.sock.recv(65536):
            answer += chunk
        self.sock.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body

    def close(self) -> None:
        self.sock.close()


def until(probe, timeout: float = 10):
    """Calls `probe()` until it returns something true (its last answer is returned); fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (answer := probe()):
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(0.1)
    return answer


def build(cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`bentoml build --output tag` in `cwd` (its stdout names the Bento's tag as __tag__:NAME:VERSION)."""
    return subprocess.run(
        [BENTOML, "build", "--output", "tag"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def mlflow_server(db: Path, port: int, log: Path, env: dict[str, str]) -> Server:
    """`mlflow server` on the SQLite store `db` at 127.0.0.1:`port`, returned once /health answers: one worker and
    no job runner (STACK_NOTES.md: 8 s and 0.5 GB instead of 14 s and 2 GB). Stop it with stop()."""
    cmd = [MLFLOW, "server", "--backend-store-uri", f"sqlite:///{db}", "--workers", "1"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd,
            env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        wait_ready(server, timeout=60, probe="/health")
    except BaseException:
        stop(server)
        raise
    return server
