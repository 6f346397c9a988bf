"""The MLflow registry and promotion gate, on a real SQLite store with tiny models.

Each test module registers its own model name, so tests share the session's store without
seeing each other's versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from conftest import run_all_stages, sentences, write_tsv
from textops import registry, tasks
from textops.errors import PipelineError
from textops.inference import OnnxClassifier
from textops.promote import main as promote_main
from textops.tracking import configure

NAME = "sentiment-test-gate"


@pytest.fixture(scope="module")
def models(tmp_path_factory, params_for) -> dict:
    """Three trained and registered models: good (v1), bad (v2, barely trained), good again (v3)."""
    root = tmp_path_factory.mktemp("registry")
    data = write_tsv(root / "reviews.tsv", sentences(80))
    built = {}
    for tag, lr, epochs in (("good", 3e-3, 3), ("bad", 1e-6, 1), ("better", 3e-3, 5)):
        params = params_for(
            data, package__model_name=NAME, train__learning_rate=lr, train__epochs=epochs, promote__min_accuracy=0.7
        )
        built[tag] = run_all_stages(root / tag, params)
    configure(params.sentiment.tracking.experiment)
    return built


def gate(models, tag="good", **kw):
    p = models[tag]
    return tasks.get("sentiment").gate(NAME, p["prepared"] / "eval.parquet", p["params"], **kw)


def test_package_stage_registered_three_versions_as_challenger(models):
    versions = sorted(int(v.version) for v in registry.client().search_model_versions(f"name='{NAME}'"))
    assert versions == [1, 2, 3]
    assert registry.version_of(NAME, registry.CHALLENGER) == "3"  # the newest
    tags = registry.require_version(NAME, "1").tags
    assert tags["int8_gate"] == "passed" and float(tags["eval_accuracy"]) >= 0.8
    assert (
        tags["fp32_model"].startswith("runs:/")
        and tags["data_hash"] == models["good"]["reports"]["prepare"]["data_hash"]
    )


def test_first_model_becomes_champion_by_the_floors(models):
    result = gate(models, version="1")
    assert result["decision"] == "promoted"
    assert registry.version_of(NAME, registry.CHAMPION) == "1"


def test_worse_model_is_refused_naming_metric_and_margin(models):
    result = gate(models, version="2")
    assert result["decision"] == "refused"
    text = " ".join(result["reasons"])
    assert "accuracy" in text and "trails champion v1" in text and "promote.accuracy_tolerance" in text
    assert "promote.min_accuracy" in text  # a barely trained model is also under the floor
    assert registry.version_of(NAME, registry.CHAMPION) == "1"
    tags = registry.require_version(NAME, "2").tags
    assert tags["gate.decision"] == "refused" and "trails champion" in tags["gate.reasons"]


def test_better_model_becomes_champion_then_rollback_restores(models):
    result = gate(models)  # the challenger alias: v3
    assert result["decision"] == "promoted" and result["version"] == "3", result
    assert registry.version_of(NAME, registry.CHAMPION) == "3"
    assert registry.version_of(NAME, registry.PREVIOUS) == "1"
    assert registry.version_of(NAME, registry.CHALLENGER) is None
    back = registry.rollback(NAME, "test rollback")
    assert back["version"] == "1" and registry.version_of(NAME, registry.CHAMPION) == "1"
    assert registry.version_of(NAME, registry.PREVIOUS) == "3"
    moves = [(e["alias"], e["from"], e["to"]) for e in registry.audit_log(NAME)]
    assert ("champion", "3", "1") in moves[-2:] and ("previous", "1", "3") in moves[-2:]


def test_force_needs_a_reason_and_records_it(models):
    with pytest.raises(registry.RegistryError, match="--reason"):
        registry.force(NAME, "3", "  ")
    registry.force(NAME, "3", "approved by the on-call reviewer")
    last = registry.audit_log(NAME)[-1]
    assert last["alias"] == "champion" and last["to"] == "3" and "on-call reviewer" in last["reason"]
    assert last["who"]


def test_promoting_a_missing_version_fails(models, capsys):
    with pytest.raises(registry.RegistryError, match="has no version 99"):
        registry.force(NAME, "99", "typo")
    code = promote_main(
        ["promote", "--version", "99", "--force", "--reason", "x", "--params", str(write_params(models, NAME))]
    )
    assert code == 1 and "has no version 99" in capsys.readouterr().err


def test_registering_before_the_package_exists_fails(models, tmp_path):
    run_id = registry.require_version(NAME, "1").tags["run_id"]
    before = len(registry.client().search_model_versions(f"name='{NAME}'"))
    with pytest.raises(registry.RegistryError, match="run the package stage first"):
        registry.register(NAME, run_id, tmp_path / "no-package", tmp_path, {}, tasks.get("sentiment").flavour)
    assert len(registry.client().search_model_versions(f"name='{NAME}'")) == before


def test_alias_on_a_deleted_version_is_named(models, tmp_path, params_for):
    name = "sentiment-test-deleted"
    params = params_for(models["good"]["params"].sentiment.prepare.source, package__model_name=name)
    built = run_all_stages(tmp_path / "one", params)
    tasks.get("sentiment").gate(name, built["prepared"] / "eval.parquet", params)
    registry.client().delete_model_version(name, "1")
    with pytest.raises(registry.RegistryError, match="pointed at version 1, which no longer exists"):
        registry.version_of(name, registry.CHAMPION)


def test_two_promotions_at_once_keep_the_audit_log_consistent(models):
    registry.force(NAME, "1", "reset for the race")
    results, errors = [], []

    def promote():
        try:
            results.append(gate(models, version="3"))
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=promote) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r["decision"] for r in results) == ["promoted", "unchanged"]  # the second waited, then saw it done
    keys = sorted(k for k in registry.client().get_registered_model(NAME).tags if k.startswith(registry.AUDIT))
    assert keys == [f"{registry.AUDIT}{i:05d}" for i in range(1, len(keys) + 1)]  # no gaps, no overwrites
    champion_moves = [e for e in registry.audit_log(NAME) if e["alias"] == "champion"]
    assert champion_moves[-1]["to"] == "3" and champion_moves[-1]["from"] == "1"


def test_unreachable_tracking_server_is_named(monkeypatch, models):
    import mlflow

    saved = mlflow.get_tracking_uri()
    before = len(registry.client().search_model_versions(f"name='{NAME}'"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    try:
        with pytest.raises(PipelineError, match=r"http://127.0.0.1:9 is unreachable"):
            configure("sentiment")
    finally:
        mlflow.set_tracking_uri(saved)  # set_tracking_uri is process-wide: later tests need the real store
    assert len(registry.client().search_model_versions(f"name='{NAME}'")) == before  # nothing half-registered


def test_champion_loads_in_a_fresh_offline_process_like_the_package(models, tmp_path):
    registry.force(NAME, "3", "serve the better model")
    package = models["better"]["package"]
    texts = ["the film was good and funny", "a dull boring plot", "truly awful acting"]
    expected = OnnxClassifier(package, "model.onnx").predict_proba(texts)
    script = (
        "import json, sys, mlflow, pandas as pd\n"
        f"m = mlflow.pyfunc.load_model('models:/{NAME}@champion')\n"
        f"out = m.predict(pd.DataFrame({{'text': {texts!r}}}))\n"
        "print(json.dumps(out[['prob_negative', 'prob_positive']].values.tolist()))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert pd.DataFrame(got).values == pytest.approx(expected, abs=1e-5)


def write_params(models, name) -> Path:
    import yaml

    raw = models["good"]["params"].model_dump(mode="json")
    raw["sentiment"]["package"]["model_name"] = name
    path = models["good"]["root"] / "params-cli.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path
