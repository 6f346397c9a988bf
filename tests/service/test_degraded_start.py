"""Start-up that degrades instead of failing: a service started with its champion broken, or with the registry
unreachable, serves the last verified local copy (or `previous`), says on /metadata and /readyz that it is
degraded and why, and returns to the champion once the fault is gone. A broken version stays set aside across a
restart until the alias moves.

Each server here has a BENTOML_HOME of its own, so its state folder (serving/state.py) starts as the test says."""

from __future__ import annotations

import time

import httpx
import pytest

from service.conftest import NAME, SERVE, all_workers, copied_version, flipped, set_champion
from service.servers import classify, mlflow_server, start, stop
from serving.processes import free_port

FOLLOW_S = 3 * SERVE["poll_interval_s"] + 10  # a few polls, and a load, on a busy machine


@pytest.fixture
def env(server_env, tmp_path) -> dict[str, str]:
    return {**server_env, "BENTOML_HOME": str(tmp_path / "bentoml-home")}


@pytest.fixture
def champion_back():
    yield
    set_champion("1")


def readyz(url: str) -> dict:
    response = httpx.get(f"{url}/readyz", timeout=10)
    assert response.status_code == 200, response.text  # degraded is still ready: it serves
    return response.json()


def test_a_broken_champion_at_start_is_set_aside_across_restarts_until_the_alias_moves(
    models, service_repo, env, tmp_path, champion_back
):
    set_champion("1")
    version, package = copied_version("2", tmp_path / "copy")
    with flipped(package / "model.onnx") as (good, bad):
        set_champion(version)  # `previous` is now v1
        server = start([], service_repo, env, tmp_path / "first.log")
        try:
            meta = all_workers(server.url, lambda m: m["degraded"], answers=6)
            ready = readyz(server.url)
            assert classify(server.url, "a fine film").status_code == 200
        finally:
            stop(server)
    mismatch = f"model.onnx: expected sha256 {good}, actual {bad}"
    # No local copy yet in this BentoML home: it serves `previous`, fetched and verified from the registry.
    assert (meta["version"], meta["alias"], meta["source"]) == ("1", "previous", "registry")
    assert f"is v{version}" in meta["degraded_reason"] and mismatch in meta["degraded_reason"]
    assert ready["ready"] and ready["degraded"] and mismatch in ready["reason"] and ready["version"] == "1"
    assert mismatch in server.output() and "degraded:" in server.output()

    # The byte is back, so v{version} would verify now; but it was set aside, and the alias has not moved.
    server = start([], service_repo, env, tmp_path / "restart.log")
    try:
        meta = all_workers(server.url, lambda m: m["degraded"], answers=6)
        assert (meta["version"], meta["source"]) == ("1", "local copy")  # the copy the first run verified and served
        assert f"is v{version}, set aside at" in meta["degraded_reason"] and mismatch in meta["degraded_reason"]
        set_champion("2")  # the alias moves: the service follows it and is whole again
        meta = all_workers(server.url, lambda m: m["version"] == "2" and not m["degraded"], timeout=FOLLOW_S)
        assert meta["source"] == "registry" and meta["degraded_reason"] is None
        assert readyz(server.url)["degraded"] is False
    finally:
        stop(server)


def test_an_unreachable_registry_at_start_serves_the_last_verified_copy_until_it_returns(
    models, service_repo, env, store, tmp_path, champion_back
):
    """The registry is a tracking server (as in team mode) that is down when the service starts, then comes up."""
    from serving import models as sources
    from serving.state import State

    set_champion("1")
    # The last verified copy is v2's, made by the service's own code, as a run on v2 would have left it.
    state = State(tmp_path / "bentoml-home" / "textops" / NAME)
    state.mark_last(sources.fetch(NAME, "champion", "2", state))
    port = free_port()  # nothing listens there yet
    env = {**env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
    began = time.monotonic()
    server = start([], service_repo, env, tmp_path / "offline.log")
    registry = None
    try:
        ready_after = time.monotonic() - began
        meta = all_workers(server.url, lambda m: m["degraded"], answers=6)
        ready = readyz(server.url)
        assert (meta["version"], meta["source"]) == ("2", "local copy")
        assert "is unreachable" in meta["degraded_reason"] and f"127.0.0.1:{port}" in meta["degraded_reason"]
        assert ready["degraded"] and "is unreachable" in ready["reason"] and ready["source"] == "local copy"
        # Ready in seconds: the service does not wait out MLflow's two minutes of retries (bound_registry_calls).
        assert ready_after < 90, f"ready only after {ready_after:.0f} s"
        # The registry comes up: the champion (v1) is followed again.
        registry = mlflow_server(store, port, tmp_path / "mlflow-server.log", env)
        meta = all_workers(server.url, lambda m: m["version"] == "1" and not m["degraded"], timeout=FOLLOW_S)
        assert meta["source"] == "registry"
    finally:
        stop(server)
        if registry is not None:
            stop(registry)
