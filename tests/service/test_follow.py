"""serving.hosting.follow, the registry-mode poll loop, on a scripted registry (no server, no MLflow) and a real
state folder: what it retries, what it sets aside, and that a version set aside stays aside across restarts."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from serving import hosting, models
from serving.models import Source
from serving.state import State
from serving.webhooks import Wake
from textops.integrity import IntegrityError


class Registry:
    """Scripted answers for champion_version and fetch; each call pops the next one."""

    def __init__(self, versions: list, fetches: list):
        self.versions, self.fetches, self.fetched = versions, fetches, []

    def champion_version(self, name, alias):
        answer = self.versions.pop(0) if len(self.versions) > 1 else self.versions[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def fetch(self, name, alias, version, state):
        self.fetched.append(version)
        answer = self.fetches.pop(0) if self.fetches else None
        if isinstance(answer, Exception):
            raise answer
        return Source(Path("/nowhere") / version, {"version": version})


class Host:
    """What follow() drives (serving.hosting.Followed): serves v1 at first; `swap` may raise."""

    def __init__(self, swap):
        self.version, self.degraded, self.swapped, self._swap = "1", None, [], swap

    def serving(self):
        return None if self.degraded else self.version

    def label(self):
        return f"v{self.version}"

    def swap(self, source: Source):
        self._swap(source)
        self.version, self.degraded = source.metadata["version"], None
        self.swapped.append(self.version)

    def degrade(self, reason):
        self.degraded = reason


def run_follow(monkeypatch, registry: Registry, swap, polls: int, state: State, log=None) -> list[str]:
    """Runs follow() for `polls` polls; returns the versions swapped in."""
    monkeypatch.setattr(models, "champion_version", registry.champion_version)
    monkeypatch.setattr(models, "fetch", registry.fetch)
    stop, host, count = threading.Event(), Host(swap), [0]

    def wait(_interval):  # one poll per call, then stop
        count[0] += 1
        return count[0] > polls

    stop.wait = wait
    hosting.follow("m", "champion", 0.0, stop, host, state, log or logging.getLogger("test"))
    return host.swapped


def test_a_failed_fetch_is_retried_at_the_next_poll(monkeypatch, tmp_path):
    """A registry error while fetching the new version (a remote store's timeout, say) must not set
    the version aside: the worker would stay on the old version until the alias moved again."""
    registry = Registry(["2"], [RuntimeError("database is locked"), None])
    assert run_follow(monkeypatch, registry, lambda s: None, polls=3, state=State(tmp_path)) == ["2"]
    assert registry.fetched == ["2", "2"]


def test_a_version_that_fails_to_load_is_tried_once_until_the_alias_moves(monkeypatch, tmp_path):
    def swap(source):
        if source.metadata["version"] == "2":
            raise ValueError("not an ONNX model")

    registry = Registry(["2", "2", "2", "3"], [])
    assert run_follow(monkeypatch, registry, swap, polls=5, state=State(tmp_path)) == ["3"]
    assert registry.fetched == ["2", "3"]


def test_a_registry_outage_keeps_the_version_in_service(monkeypatch, tmp_path):
    registry = Registry([ConnectionError("refused"), ConnectionError("refused"), "1"], [])
    assert (
        run_follow(monkeypatch, registry, lambda s: pytest.fail("nothing to swap"), polls=4, state=State(tmp_path))
        == []
    )
    assert registry.fetched == []


def test_a_version_whose_files_differ_from_their_digests_is_set_aside_naming_the_hashes(monkeypatch, tmp_path, caplog):
    mismatch = "model.onnx: expected sha256 " + "a" * 64 + ", actual " + "b" * 64
    registry = Registry(["2"], [IntegrityError(f"'m' version 2: files in /x are not the registered ones: {mismatch}")])
    state = State(tmp_path)
    with caplog.at_level(logging.WARNING, logger="test"):
        assert run_follow(monkeypatch, registry, lambda s: pytest.fail("nothing to swap"), polls=3, state=state) == []
    assert registry.fetched == ["2"]  # refused once, not fetched again at every poll
    (line,) = [r.getMessage() for r in caplog.records if "failed to load" in r.getMessage()]
    assert mismatch in line and "still serving v1 until the alias moves again" in line
    assert state.aside()["version"] == "2" and mismatch in state.aside()["reason"]


def test_a_version_set_aside_stays_aside_across_restarts_until_the_alias_moves(monkeypatch, tmp_path):
    def swap(source):
        if source.metadata["version"] == "2":
            raise ValueError("not an ONNX model")

    first = Registry(["2"], [])
    assert run_follow(monkeypatch, first, swap, polls=2, state=State(tmp_path)) == []
    assert first.fetched == ["2"]
    # A restart: a new process with the same state folder, and now v2 would load. It is not tried while the
    # alias stays on it; once the alias has moved (to v3), v2 is a candidate again.
    restarted = Registry(["2", "2", "3", "2"], [])
    assert run_follow(monkeypatch, restarted, lambda s: None, polls=4, state=State(tmp_path)) == ["3", "2"]
    assert restarted.fetched == ["3", "2"]
    assert State(tmp_path).aside() is None


def test_a_pushed_event_wakes_the_poll_of_every_worker(monkeypatch, tmp_path):
    """A webhook event lands on one worker (serving/webhooks.py): it signals through the shared state folder, and
    every worker's follow loop polls at once instead of after its interval."""
    monkeypatch.setattr(models, "champion_version", lambda name, alias: "2")
    monkeypatch.setattr(models, "fetch", lambda name, alias, version, state: Source(tmp_path, {"version": version}))
    monkeypatch.setattr(hosting, "record_hand_moves", lambda name, log: None)
    workers = [Host(lambda s: None) for _ in range(2)]
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=hosting.follow,
            args=(
                "m",
                "champion",
                3600.0,
                stop,
                host,
                State(tmp_path),
                logging.getLogger("test"),
                Wake(tmp_path / "w"),
            ),
        )
        for host in workers
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    assert [host.swapped for host in workers] == [[], []]  # an hour's interval: no poll yet
    Wake(tmp_path / "w").signal()  # what /registry_events does in the worker that got the event
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and [host.swapped for host in workers] != [["2"], ["2"]]:
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join(timeout=5)
    assert [host.swapped for host in workers] == [["2"], ["2"]]
