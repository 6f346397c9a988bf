"""Registry mode: `champion` moves while 8 clients send /classify; every worker follows within a
poll plus a load, no request fails, and answers switch to the new version's probabilities. A version
that does not load, or a registry that cannot be reached, leaves the old version serving."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.conftest import NAME, PROBE, SERVE, positive, set_champion, wait_for_version
from service.servers import classify, metadata

CLIENTS = 8
# Registry look-up + copy of the package + ONNX session + warm-up of the tiny model, on 2 cores
# shared with the load and the other worker: about 0.1-0.5 s here; the rest is room for a busy machine.
LOAD_BUDGET_S = 3.0
SWITCH_BOUND_S = SERVE["poll_interval_s"] + LOAD_BUDGET_S


@dataclass(frozen=True)
class Reply:
    sent: float
    done: float
    status: int
    positive: float | None
    error: str = ""


def send_until(url: str, stop: threading.Event, replies: list[Reply]) -> None:
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                response = classify(url, PROBE, client)
                ok = response.status_code == 200
                replies.append(
                    Reply(
                        sent,
                        time.monotonic(),
                        response.status_code,
                        response.json()[0]["probabilities"]["positive"] if ok else None,
                        "" if ok else response.text[:200],
                    )
                )
            except httpx.HTTPError as error:  # a dropped connection counts as a failed request
                replies.append(Reply(sent, time.monotonic(), 0, None, repr(error)))


@contextmanager
def load(url: str, clients: int = CLIENTS):
    """`clients` threads sending PROBE back to back; yields the list their replies go to."""
    stop, replies = threading.Event(), []
    threads = [threading.Thread(target=send_until, args=(url, stop, replies), daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        yield replies
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)


def version_of(p_positive: float, expected: dict[str, float]) -> str:
    """Which version gave this P(positive). Requests all hold PROBE, so batching them together changes
    nothing: identical rows give identical INT8 activation scales."""
    version = min(expected, key=lambda v: abs(expected[v] - p_positive))
    assert abs(expected[version] - p_positive) < 1e-5, (p_positive, expected)
    return version


def settle(url: str, version: str, expected: dict[str, float], timeout: float = 30) -> None:
    """Until 20 answers in a row come from `version`: each worker follows the alias on its own."""
    deadline, streak = time.monotonic() + timeout, 0
    while streak < 20:
        assert time.monotonic() < deadline, f"the workers did not all serve v{version} within {timeout} s"
        streak = (
            streak + 1
            if version_of(classify(url, PROBE).json()[0]["probabilities"]["positive"], expected) == version
            else 0
        )


@pytest.fixture(scope="module")
def expected(models) -> dict[str, float]:
    return {v: positive(package, PROBE) for v, package in models.items()}


@pytest.fixture
def on_v1(registry_server, expected):
    set_champion("1")
    settle(registry_server.url, "1", expected)
    yield registry_server
    set_champion("1")


def test_alias_move_under_load_switches_every_worker_without_a_failed_request(on_v1, expected):
    from textops import registry

    url = on_v1.url
    with load(url) as replies:
        time.sleep(1.5)  # steady load on v1
        registry.force(NAME, "2", "hot swap test")
        moved = time.monotonic()
        first_switch_s = wait_for_version(url, "2", timeout=SWITCH_BOUND_S + 10)
        time.sleep(max(0.0, moved + SWITCH_BOUND_S + 1 - time.monotonic()))  # past every worker's bound
    failed = [r for r in replies if r.status != 200]
    assert not failed, f"{len(failed)} of {len(replies)} requests failed, e.g. {failed[:3]}"
    assert len(replies) >= 100
    served = [(r, version_of(r.positive, expected)) for r in replies]
    assert {v for r, v in served if r.done < moved} == {"1"}
    last_v1_s = max(r.sent for r, v in served if v == "1") - moved  # when the slowest worker switched
    # What the workers logged about the move, for a late switch (seen twice in ~10 full runs, cause unknown).
    story = "\n".join(
        line
        for line in on_v1.output().splitlines()[-200:]
        if any(k in line for k in ("moved to", "now serving", "could not follow"))
    )
    late = sum(1 for r, v in served if v == "1" and r.sent > moved + SWITCH_BOUND_S)
    assert not late, (
        f"{late} v1 answers sent over {SWITCH_BOUND_S} s after the move, the last "
        f"{last_v1_s:.2f} s after it; /metadata showed v2 after {first_switch_s:.2f} s. Server log:\n{story}"
    )
    assert any(v == "2" for r, v in served if r.sent > moved + SWITCH_BOUND_S)
    print(
        f"\n/metadata showed v2 after {first_switch_s:.2f} s; last v1 answer sent {last_v1_s:.2f} s after "
        f"the move; {len(replies)} requests, {sum(v == '2' for _, v in served)} answered by v2"
    )
    assert first_switch_s <= SWITCH_BOUND_S and last_v1_s <= SWITCH_BOUND_S
    assert "moved to v2: loading it beside v1" in on_v1.output() and f"now serving {NAME} v2" in on_v1.output()


def broken_version(tmp_path: Path, like: str) -> str:
    """A new registry version: a copy of version `like` whose model.onnx is not an ONNX file."""
    import mlflow
    from textops import registry

    copy = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/{like}", dst_path=str(tmp_path / "broken")))
    (copy / "artifacts" / "package" / "model.onnx").write_bytes(b"not an ONNX model")
    source = registry.require_version(NAME, like)
    return str(registry.client().create_model_version(NAME, str(copy), run_id=source.run_id, tags=source.tags).version)


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(on_v1, expected, tmp_path):
    url, log_start = on_v1.url, len(on_v1.output())
    version = broken_version(tmp_path, like="2")
    set_champion(version)
    time.sleep(3 * SERVE["poll_interval_s"] + 1)  # three tries at least
    assert metadata(url)["version"] == "1"
    settle(url, "1", expected, timeout=5)
    log = on_v1.output()[log_start:]
    assert f"moved to v{version}: loading it beside v1" in log
    # Each worker tries the broken version once, not on every poll.
    tries = log.count(f"v{version} failed to load")
    assert 1 <= tries <= SERVE["workers"] and "still serving v1 until the alias moves again" in log


def test_registry_outage_keeps_serving_then_the_alias_is_followed_again(on_v1, store, expected):
    url, log_start = on_v1.url, len(on_v1.output())
    away = store.with_name("mlflow.db.away")
    store.rename(away)
    store.mkdir()  # SQLite cannot open a folder: every registry call of the servers fails
    try:
        time.sleep(3 * SERVE["poll_interval_s"] + 1)
        assert metadata(url)["version"] == "1"
        settle(url, "1", expected, timeout=5)
    finally:
        store.rmdir()
        away.rename(store)
    log = on_v1.output()[log_start:]
    assert "is unreachable" in log and "still serving v1" in log
    set_champion("2")  # the store is back: the next poll must see the move
    assert wait_for_version(url, "2", timeout=SWITCH_BOUND_S + 10) <= SWITCH_BOUND_S
    settle(url, "2", expected, timeout=SWITCH_BOUND_S + 5)


def test_a_champion_moved_by_hand_is_followed_and_logged_by_the_service(on_v1, expected):
    """As in the MLflow UI: the alias set through the raw client. The service follows it and, having no registry
    operation to wait for, writes the manual move into the audit log itself (textops.registry.reconcile)."""
    from textops import registry

    url = on_v1.url
    registry.client().set_registered_model_alias(NAME, registry.CHAMPION, "2")
    assert wait_for_version(url, "2", timeout=SWITCH_BOUND_S + 10) <= SWITCH_BOUND_S
    deadline = time.monotonic() + 10
    while not (manual := [e for e in registry.audit_log(NAME) if e["evidence"].get("manual")]):
        assert time.monotonic() < deadline, f"no manual move in the audit log; server log:\n{on_v1.output()[-3000:]}"
        time.sleep(0.2)
    assert (manual[-1]["alias"], manual[-1]["from"], manual[-1]["to"]) == ("champion", "1", "2")
    # reconcile logs the champion, then moves previous, under the lock: read as rollback does, under it too
    # (read between the two writes, previous was still the v2 an earlier test had left there).
    with registry.promotion_lock(NAME):
        assert registry.version_of(NAME, registry.PREVIOUS) == "1"  # so rollback returns to the replaced version
