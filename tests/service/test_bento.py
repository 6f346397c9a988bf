"""`bentoml build` bundles the champion version; `bentoml serve sentiment:<version>` from another
folder serves that copy with MLflow out of reach, and with the params.yaml it was built with."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from service.conftest import NAME, SERVE, flipped
from service.servers import build, classify, metadata, start, stop

TEXTS = ["the film was good", "a dull , lifeless plot", "truly wonderful acting"]


@pytest.fixture(scope="module")
def bento(models, service_repo, server_env) -> dict:
    """The built Bento's tag and folder, and the registry version it should hold."""
    from textops import registry

    version = registry.version_of(NAME, "champion")
    run = build(service_repo, server_env)
    assert run.returncode == 0, run.stdout + run.stderr
    tag = re.search(r"__tag__:(\S+)", run.stdout).group(1)
    name, _, bento_version = tag.partition(":")
    folder = Path(server_env["BENTOML_HOME"]) / "bentos" / name / bento_version
    return {"tag": tag, "folder": folder, "version": version, "run_id": registry.require_version(NAME, version).run_id}


@pytest.fixture(scope="module")
def bento_server(bento, server_env, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")  # neither serving/ nor params.yaml here
    # Nothing listens on the discard port: any MLflow call would fail (fast, with no retries).
    env = {
        **server_env,
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "3",
    }
    server = start([bento["tag"]], elsewhere, env, tmp_path_factory.mktemp("logs") / "bento-server.log")
    yield server
    stop(server)


def test_bento_records_the_explicit_model_version(bento):
    from textops import integrity, registry

    manifest = yaml.safe_load((bento["folder"] / "bento.yaml").read_text())
    model_tag = f"{NAME}:v{bento['version']}-{bento['run_id'][:12]}"
    (service,) = manifest["services"]
    assert [(m["tag"], m["alias"]) for m in service["models"]] == [(model_tag, f"{NAME}@champion")]
    assert manifest["name"] == "sentiment" and manifest["service"] == "serving.service:Sentiment"
    stored = yaml.safe_load(
        (Path(bento["folder"]).parents[2] / "models" / NAME / model_tag.split(":")[1] / "model.yaml").read_text()
    )
    assert stored["labels"]["registry_version"] == bento["version"] and stored["metadata"]["run_id"] == bento["run_id"]
    # The registered sha256 of every bundled file, checked when the Bento is served.
    assert stored["metadata"]["sha256"] == integrity.expected(registry.require_version(NAME, bento["version"]).tags)
    bundled = yaml.safe_load((bento["folder"] / "src" / "params.yaml").read_text())
    assert bundled["sentiment"]["serve"]["max_items"] == SERVE["max_items"]  # the params of the folder it was built in


def test_bento_serves_the_bundled_version_without_mlflow(bento, bento_server, models):
    from textops.inference import OnnxClassifier

    meta = metadata(bento_server.url)
    assert (meta["mode"], meta["source"], meta["version"]) == ("bento", "bento", bento["version"])
    assert meta["bento_model"] == f"{NAME}:v{bento['version']}-{bento['run_id'][:12]}"
    assert meta["poll_interval_s"] is None  # no alias to follow
    local = OnnxClassifier(models[bento["version"]], "model.onnx")
    for text in TEXTS:  # one text per request: a batch of one, so equal to the package's answer
        got = classify(bento_server.url, text).json()[0]["probabilities"]
        assert got == pytest.approx(local.classify([text])[0]["probabilities"], abs=1e-5)
    assert "could not follow" not in bento_server.output()


def test_bento_applies_its_bundled_limits(bento_server):
    response = classify(bento_server.url, ["good"] * (SERVE["max_items"] + 1))
    assert response.status_code == 400
    assert f"at most {SERVE['max_items']} items" in response.text


def test_bento_explains_with_the_bundled_version(bento, bento_server, models):
    """/explain and its page through the built Bento: the bundled model's own explanation."""
    import httpx

    from textops.explain import explain
    from textops.inference import OnnxClassifier

    local = OnnxClassifier(models[bento["version"]], "model.onnx")
    response = httpx.post(f"{bento_server.url}/explain", json={"texts": TEXTS[0]}, timeout=60)
    assert response.status_code == 200, response.text
    (got,) = response.json()
    want = explain(local, TEXTS[0])
    assert [w["word"] for w in got["words"]] == [w["word"] for w in want["words"]]
    assert [w["score"] for w in got["words"]] == pytest.approx([w["score"] for w in want["words"]], abs=1e-5)
    page = httpx.get(f"{bento_server.url}/explain/view", params={"text": TEXTS[2]}, timeout=60)
    assert page.status_code == 200 and page.text.count('class="w"') == len(TEXTS[2].split())


def test_a_bundled_copy_changed_after_the_build_is_not_served(bento, server_env, tmp_path):
    """One flipped byte in the BentoML model store's copy: the served Bento checks it against the digests the build
    recorded before loading it, and stays up but not ready, saying why, instead of serving it."""
    import httpx

    model_tag = f"{NAME}:v{bento['version']}-{bento['run_id'][:12]}"
    stored = Path(server_env["BENTOML_HOME"]) / "models" / NAME / model_tag.split(":")[1]
    env = {**server_env, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    with flipped(stored / "package" / "model.onnx") as (good, bad):
        server = start([bento["tag"]], tmp_path, env, tmp_path / "tampered.log", probe="/livez")
        try:
            ready = httpx.get(f"{server.url}/readyz", timeout=10)
            answer = classify(server.url, "a fine film")
            meta = httpx.get(f"{server.url}/metadata", timeout=10)
        finally:
            stop(server)
    mismatch = f"model.onnx: expected sha256 {good}, actual {bad}"
    assert ready.status_code == 503 and ready.json()["ready"] is False and mismatch in ready.json()["reason"]
    assert answer.status_code == 503  # BentoML keeps a 5xx's message to the log; /readyz and /metadata say why
    assert meta.status_code == 503 and mismatch in meta.json()["reason"]
