"""One real `prefect server start` per test run (the run's stack, tests/stack.py), shared by the modules that
need it.

Not a session fixture in tests/pipelines/conftest.py: conftest.py files outside packages are all imported as
the module `conftest`, so a second one hides tests/conftest.py from the `from conftest import ...` of every
test module collected after it (other folders' included). Each module's fixture calls `api_url()` instead:
the first call starts the server, and pytest's config cleanup stops it when the run ends.
"""

from __future__ import annotations

import contextlib
import os
from contextlib import ExitStack

import pytest

import team_stack

_url: str | None = None


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

        url = team_stack.up(config, "prefect")["PREFECT_API_URL"]
        stack = ExitStack()
        stack.enter_context(temporary_settings(updates={PREFECT_API_URL: url}))
        stack.callback(_set_env, os.environ.get("PREFECT_API_URL"))
        _set_env(url)  # flows run in child processes talk to it too
        stack.callback(globals().update, _url=None)
        stack.callback(_drain)  # callbacks run last first: before the server stops
        config.add_cleanup(stack.close)
        _url = url
    return _url
