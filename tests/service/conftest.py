"""Two tiny registered models in a store of this package's own, and one registry-mode server on them.

The MLflow store is not the session's: other test folders register `sentiment-classifier` there
too, and the server must see exactly the versions made here (v1: champion, v2: a challenger).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from conftest import copy_repo, run_all_stages, sentences, write_tsv
from service.servers import metadata, start, stop

NAME = "sentiment-classifier"  # package.model_name in params.yaml: what the service serves
PROBE = "truly wonderful acting"  # the two versions must give it clearly different probabilities
# Small limits keep the bad-input requests small; a 1 s poll keeps the hot-swap test short.
# access_log: the tests read every answered status from the server log.
SERVE = {
    "max_items": 8,
    "max_chars": 200,
    "max_body_bytes": 4096,
    "poll_interval_s": 1.0,
    "workers": 2,
    "access_log": True,
    "explain_max_items": 4,
    "explain_max_words": 12,
}


@pytest.fixture(scope="package")
def store(tmp_path_factory):
    """MLFLOW_TRACKING_URI of a fresh SQLite store, for this process and the servers; restored afterwards.
    Registry downloads go to a folder of this session's own too: the default one (textops.registry.package_cache)
    is keyed by model name and version only, which another session's store reuses for different files."""
    import mlflow

    db = tmp_path_factory.mktemp("service-mlflow") / "db" / "mlflow.db"
    db.parent.mkdir()
    cache = tmp_path_factory.mktemp("registry-cache")
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "TEXTOPS_REGISTRY_CACHE")}
    saved_uri = mlflow.get_tracking_uri()
    os.environ.update(MLFLOW_TRACKING_URI=f"sqlite:///{db}", TEXTOPS_REGISTRY_CACHE=str(cache))
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    yield db
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    mlflow.set_tracking_uri(saved_uri)


@pytest.fixture(scope="package")
def server_env(store, tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("bentoml-home")
    return {
        **os.environ,
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{store}",
        # A new SQLite connection per registry call, so a test can take the store away under a server.
        "MLFLOW_SQLALCHEMYSTORE_POOLCLASS": "NullPool",
    }


@pytest.fixture(scope="package")
def models(store, tmp_path_factory, params_for) -> dict[str, Path]:
    """Registry version -> its package folder. Two learning rates, so the two give different probabilities."""
    from textops import registry

    root = tmp_path_factory.mktemp("service-models")
    data = write_tsv(root / "reviews.tsv", sentences(80))
    packages = {}
    for version, lr in (("1", 3e-3), ("2", 1e-3)):
        built = run_all_stages(root / f"v{version}", params_for(data, train__learning_rate=lr))
        packages[version] = built["package"]
    assert sorted(int(v.version) for v in registry.client().search_model_versions(f"name='{NAME}'")) == [1, 2]
    gap = abs(positive(packages["1"], PROBE) - positive(packages["2"], PROBE))
    assert gap > 1e-3, (
        f"v1 and v2 give '{PROBE}' nearly the same probability ({gap:.2g}): tests could not tell them apart"
    )
    set_champion("1")
    return packages


def positive(package: Path, text: str) -> float:
    """P(positive) of one text by the package's INT8 model, as a batch of one."""
    from textops.inference import OnnxClassifier

    return OnnxClassifier(package, "model.onnx").classify([text])[0]["probabilities"]["positive"]


def set_champion(version: str) -> None:
    from textops import registry

    registry.force(NAME, version, "service tests")


def copied_version(like: str, folder: Path) -> tuple[str, Path]:
    """A new registry version of NAME holding a copy of version `like`'s artifacts (in `folder`) and its tags, the
    sha256 ones included. Returns the version and its package folder: the files the registry hands out for it."""
    import mlflow
    from textops import registry

    copy = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/{like}", dst_path=str(folder)))
    source = registry.require_version(NAME, like)
    version = registry.client().create_model_version(NAME, str(copy), run_id=source.run_id, tags=source.tags).version
    return str(version), copy / "artifacts" / "package"


@contextmanager
def flipped(path: Path) -> Iterator[tuple[str, str]]:
    """One bit of one byte of `path` flipped (halfway in) until the block ends; yields its sha256 before and after."""
    from textops.cli import sha256

    original = path.read_bytes()
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0x01
    good = sha256(path)
    path.write_bytes(bytes(changed))
    try:
        yield good, sha256(path)
    finally:
        path.write_bytes(original)


@pytest.fixture(scope="package")
def service_repo(tmp_path_factory) -> Path:
    """A copy of the repository whose params.yaml has the test limits: the service reads the one beside it."""
    repo = copy_repo(tmp_path_factory.mktemp("service-repo"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["sentiment"]["serve"].update(SERVE)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return repo


@pytest.fixture(scope="package")
def serve_params(service_repo):
    """The `serve` section the test servers run with: the repository's, with SERVE applied."""
    from textops.params import load_params

    return load_params(service_repo / "params.yaml").sentiment.serve


@pytest.fixture(scope="package")
def registry_server(models, service_repo, server_env, tmp_path_factory):
    """`bentoml serve` from the repository copy: follows sentiment-classifier@champion."""
    server = start([], service_repo, server_env, tmp_path_factory.mktemp("logs") / "registry-server.log")
    yield server
    stop(server)


def wait_for_version(url: str, version: str, timeout: float) -> float:
    """Seconds until /metadata reports `version` (fails after `timeout`)."""
    began = time.monotonic()
    while (seen := metadata(url)["version"]) != version:
        assert time.monotonic() - began < timeout, f"still serving v{seen} after {timeout} s, expected v{version}"
        time.sleep(0.05)
    return time.monotonic() - began


def all_workers(url: str, check, timeout: float = 30, answers: int = 12) -> dict:
    """/metadata until `check` holds for `answers` in a row (each worker follows the alias on its own, and
    a request reaches either); returns the last answer."""
    deadline, streak = time.monotonic() + timeout, 0
    while streak < answers:
        meta = metadata(url)
        assert time.monotonic() < deadline, f"not every worker got there within {timeout} s; last /metadata: {meta}"
        streak = streak + 1 if check(meta) else 0
    return meta


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "fuzz: schemathesis against a live server; part of the default run (select alone with -m fuzz)"
    )
