"""The test run's one team stack (scripts/stack.sh) in a temporary folder, on free ports: each module asks for the
services it needs (`up(config, "prefect")`, `up(config, "mlflow")`); the first ask starts them, later ones share
them, and pytest's config cleanup stops everything and deletes the folder when the run ends.

A plain module, not a conftest.py fixture, for the reason tests/pipelines/prefect_server.py gives.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from pathlib import Path

import pytest

from serving.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
_settings: dict[str, str] | None = None


def _run(*args: str) -> str:
    env = {**os.environ, **(_settings or {})}
    # Started services must not inherit a client setting of an outer stack; the test worker polls every second.
    for key in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "AWS_ENDPOINT_URL"):
        env.pop(key, None)
    env.update(PREFECT_UI_ENABLED="false", PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_WORKER_QUERY_SECONDS="1")
    done = subprocess.run(["bash", str(ROOT / "scripts/stack.sh"), *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"scripts/stack.sh {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


def up(config: pytest.Config, *services: str) -> dict[str, str]:
    """Start `services` (and what they need) unless running; returns the client settings (scripts/stack.sh env)."""
    global _settings
    if _settings is None:
        folder = tempfile.mkdtemp(prefix="textops-stack-")
        _settings = {
            "TEXTOPS_STACK_DIR": folder,
            **{f"TEXTOPS_{s}_PORT": str(free_port()) for s in ("PG", "S3", "MLFLOW", "PREFECT")},
        }
        config.add_cleanup(_destroy)
    _run("up", *services)
    return client_env()


def client_env() -> dict[str, str]:
    """What a client of the stack sets: MLFLOW_TRACKING_URI, PREFECT_API_URL, AWS_* (the S3 server)."""
    out = {}
    for line in _run("env").splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        out[key] = shlex.split(value)[0] if value else ""
    return out


def postgres() -> dict[str, str | int]:
    """psycopg2.connect() arguments for the stack's MLflow database."""
    assert _settings is not None, "stack.up() first"
    return {"host": "127.0.0.1", "port": int(_settings["TEXTOPS_PG_PORT"]), "user": "mlflow", "dbname": "mlflow"}


def _destroy() -> None:
    global _settings
    try:
        _run("destroy")
    finally:
        _settings = None
