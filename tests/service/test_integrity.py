"""One flipped byte in a registered model.onnx: the running service refuses that version, logs the hash mismatch
(file, registered and actual sha256) and keeps serving the old one; `bentoml build` refuses to bundle it.

The flipped version is a new registry version holding a copy of v2's files and tags; the byte is flipped in the
folder the registry hands out for it, as a corrupted or tampered artifact store would."""

from __future__ import annotations

import pytest

from service.conftest import NAME, PROBE, SERVE, all_workers, copied_version, flipped, positive, set_champion
from service.servers import build, classify, probabilities


@pytest.fixture
def on_v1(registry_server):
    set_champion("1")
    all_workers(registry_server.url, lambda m: m["version"] == "1" and not m["degraded"])
    yield registry_server
    set_champion("1")


def test_the_running_service_refuses_a_flipped_byte_and_keeps_serving_the_old_version(on_v1, models, tmp_path):
    url, log_start = on_v1.url, len(on_v1.output())
    version, package = copied_version("2", tmp_path)
    with flipped(package / "model.onnx") as (good, bad):
        set_champion(version)
        meta = all_workers(url, lambda m: m["degraded"], timeout=3 * SERVE["poll_interval_s"] + 10)
        log = on_v1.output()[log_start:]
    mismatch = f"model.onnx: expected sha256 {good}, actual {bad}"
    assert meta["version"] == "1" and meta["source"] == "registry"
    assert f"is v{version}, set aside" in meta["degraded_reason"] and mismatch in meta["degraded_reason"]
    assert f"v{version} failed to load (IntegrityError" in log and mismatch in log
    assert "still serving v1 until the alias moves again" in log
    assert probabilities(classify(url, PROBE))[0]["positive"] == pytest.approx(positive(models["1"], PROBE), abs=1e-5)
    # The alias moves (back to v1): the set-aside version is forgotten and the service is whole again.
    set_champion("1")
    all_workers(url, lambda m: m["version"] == "1" and not m["degraded"], timeout=3 * SERVE["poll_interval_s"] + 10)


def test_bentoml_build_refuses_to_bundle_a_version_whose_bytes_differ(models, service_repo, server_env, tmp_path):
    version, package = copied_version("2", tmp_path)
    with flipped(package / "model.onnx") as (good, bad):
        set_champion(version)
        try:
            run = build(service_repo, server_env)
        finally:
            set_champion("1")
    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    assert f"'{NAME}' version {version}" in output and f"model.onnx: expected sha256 {good}, actual {bad}" in output
    assert "__tag__:" not in output
