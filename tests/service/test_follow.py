"""serving.models.follow, the registry-mode poll loop, on a scripted registry (no server, no MLflow):
what it retries and what it sets aside."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from serving import models
from serving.models import Source


class Registry:
    """Scripted answers for champion_version and from_registry; each call pops the next one."""

    def __init__(self, versions: list, fetches: list):
        self.versions, self.fetches, self.fetched = versions, fetches, []

    def champion_version(self, name, alias):
        answer = self.versions.pop(0) if len(self.versions) > 1 else self.versions[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def from_registry(self, name, alias, version):
        self.fetched.append(version)
        answer = self.fetches.pop(0) if self.fetches else None
        if isinstance(answer, Exception):
            raise answer
        return Source(Path("/nowhere") / version, {"version": version})


def run_follow(monkeypatch, registry: Registry, swap, polls: int) -> list[str]:
    """Runs follow() for `polls` polls; returns the versions swapped in."""
    monkeypatch.setattr(models, "champion_version", registry.champion_version)
    monkeypatch.setattr(models, "from_registry", registry.from_registry)
    stop, serving, swapped, count = threading.Event(), ["1"], [], [0]

    def wait(_interval):  # one poll per call, then stop
        count[0] += 1
        return count[0] > polls

    stop.wait = wait

    def do_swap(source: Source):
        swap(source)
        serving[0] = source.metadata["version"]
        swapped.append(serving[0])

    models.follow("m", "champion", 0.0, stop, lambda: serving[0], do_swap, logging.getLogger("test"))
    return swapped


def test_a_failed_fetch_is_retried_at_the_next_poll(monkeypatch):
    """A registry error while fetching the new version (a remote store's timeout, say) must not set
    the version aside: the worker would stay on the old version until the alias moved again."""
    registry = Registry(["2"], [RuntimeError("database is locked"), None])
    assert run_follow(monkeypatch, registry, lambda s: None, polls=3) == ["2"]
    assert registry.fetched == ["2", "2"]


def test_a_version_that_fails_to_load_is_tried_once_until_the_alias_moves(monkeypatch):
    def swap(source):
        if source.metadata["version"] == "2":
            raise ValueError("not an ONNX model")

    registry = Registry(["2", "2", "2", "3"], [])
    assert run_follow(monkeypatch, registry, swap, polls=5) == ["3"]
    assert registry.fetched == ["2", "3"]


def test_a_registry_outage_keeps_the_version_in_service(monkeypatch):
    registry = Registry([ConnectionError("refused"), ConnectionError("refused"), "1"], [])
    assert run_follow(monkeypatch, registry, lambda s: pytest.fail("nothing to swap"), polls=4) == []
    assert registry.fetched == []
