"""One real `prefect server start` per test run, shared by the tests/pipelines modules.

Not a session fixture in tests/pipelines/conftest.py: conftest.py files outside packages are all imported as
the module `conftest`, so a second one hides tests/conftest.py from the `from conftest import ...` of every
test module collected after it (other folders' included). Each module's fixture calls `api_url()` instead:
the first call starts the server, and pytest's config cleanup stops it when the run ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

_url: str | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """The server and everything it started (its own process group)."""
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait_s)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _start(home: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        PREFECT_HOME=str(home),  # its own SQLite database, deleted with the folder
        PREFECT_SERVER_ANALYTICS_ENABLED="false",  # it looks up an outside host otherwise (STACK_NOTES)
        PREFECT_UI_ENABLED="false",
        DO_NOT_TRACK="1",
    )
    log = open(home / "server.log", "wb")  # noqa: SIM115 - the server writes to it until it stops
    cmd = [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"prefect server exited ({proc.returncode}):\n{(home / 'server.log').read_text()[-3000:]}"
            )
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    _stop(proc)
    raise RuntimeError(f"prefect server not healthy after 120 s:\n{(home / 'server.log').read_text()[-3000:]}")


def _drain() -> None:
    """Send what this process's Prefect still buffers (logs, events) while the server is up: once it is
    stopped, a late flush only prints connection errors."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        with contextlib.suppress(RuntimeError):  # a worker that never started
            for result in (APILogWorker.instance().drain(), EventsWorker.drain_all()):
                if inspect.isawaitable(result):
                    await result

    run_coro_as_sync(drain())


def _set_env(value: str | None) -> None:
    if value is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = value


def api_url(config: pytest.Config) -> str:
    """The shared server's API URL, also set for this process's Prefect client and for child processes."""
    global _url
    if _url is None:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        stack = ExitStack()
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="prefect-server-")))
        proc, url = _start(home)
        stack.callback(_stop, proc)
        stack.enter_context(temporary_settings(updates={PREFECT_API_URL: url}))
        stack.callback(_set_env, os.environ.get("PREFECT_API_URL"))
        _set_env(url)  # flows run in child processes talk to it too
        stack.callback(globals().update, _url=None)
        stack.callback(_drain)  # callbacks run last first: before the server stops
        config.add_cleanup(stack.close)
        _url = url
    return _url
