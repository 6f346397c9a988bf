"""Trust in what the registry hands out: sha256 tags checked before a load, nothing unpickled, hand moves logged.

One tiny trained package, registered several times under this module's own model name (a re-registration is
a new version with the same files), on the session's SQLite store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import copy_repo, run_all_stages, sentences, write_tsv
from textops import integrity, registry, tasks
from textops.cli import sha256
from textops.promote import main as promote_main

NAME = "sentiment-test-trust"


@pytest.fixture(scope="module")
def built(tmp_path_factory, params_for) -> dict:
    """One trained and packaged model, registered as v1 by its package stage."""
    from textops.tracking import configure

    root = tmp_path_factory.mktemp("trust")
    data = write_tsv(root / "reviews.tsv", sentences(80))
    params = params_for(data, package__model_name=NAME, train__learning_rate=3e-3, train__epochs=3)
    out = run_all_stages(root / "v1", params)
    configure(params.sentiment.tracking.experiment)
    return out


def register_again(built: dict, python_model=None) -> str:
    """A new version of the same package (as a second `dvc repro` would make); `python_model`: the pyfunc to log
    instead of the task's models-from-code file (the malicious version below)."""
    import mlflow

    task = tasks.get("sentiment")

    def flavour(package_dir: Path):
        code, *rest = task.flavour(package_dir)
        return (python_model or code, *rest)

    tags = registry.require_version(NAME, "1").tags
    evidence = {k: v for k, v in tags.items() if not k.startswith((integrity.TAG, "gate.")) and k != "run_id"}
    with mlflow.start_run() as run:
        pass
    return registry.register(NAME, run.info.run_id, built["package"], built["model"], evidence, flavour)


def stored_package(version: str) -> Path:
    """The version's package folder in the (local) artifact store itself: what every loader downloads from."""
    from urllib.parse import urlparse

    import mlflow

    source = registry.require_version(NAME, version).source  # models:/m-<logged model id>
    location = mlflow.get_logged_model(source.removeprefix("models:/")).artifact_location
    return Path(urlparse(location).path) / "artifacts" / "package"


def test_registration_records_every_served_file_as_a_sha256_tag(built):
    tags = registry.require_version(NAME, "1").tags
    recorded = integrity.expected(tags)
    package = built["package"]
    assert recorded["model.onnx"] == sha256(package / "model.onnx")
    assert set(recorded) == {p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file()}


def test_one_flipped_byte_is_refused_naming_file_and_both_hashes(built, capsys):
    version = register_again(built)
    model = stored_package(version) / "model.onnx"
    good = sha256(model)
    original = model.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    try:
        model.write_bytes(bytes(flipped))
        with pytest.raises(integrity.IntegrityError) as error:
            registry.fetch_package(NAME, version)
        message = str(error.value)
        assert "model.onnx" in message and good in message and sha256(model) in message
        # The gate scores through the same check: it stops with that error, and moves no alias.
        params_file = write_params(built)
        code = promote_main(
            ["gate", "--params", str(params_file), "--version", version, "--eval", str(eval_set(built))]
        )
        assert code == 1 and "model.onnx" in capsys.readouterr().err
        assert registry.version_of(NAME, registry.CHAMPION) != version
    finally:
        model.write_bytes(original)
    assert (registry.fetch_package(NAME, version) / "model.onnx").read_bytes() == original  # restored: passes again


def test_a_file_added_to_a_version_is_refused(built):
    version = register_again(built)
    extra = stored_package(version) / "tokenizer_config.extra.json"
    extra.write_text("{}")
    try:
        with pytest.raises(integrity.IntegrityError, match="tokenizer_config.extra.json: not registered"):
            registry.fetch_package(NAME, version)
    finally:
        extra.unlink()


def test_champion_moved_by_hand_is_logged_and_rollback_returns_to_the_replaced_version(built):
    first, second = register_again(built), register_again(built)
    registry.force(NAME, first, "trust tests: a known champion")
    registry.client().set_registered_model_alias(NAME, registry.CHAMPION, second)  # as the MLflow UI does
    back = registry.rollback(NAME, "the hand move was a mistake")
    assert back["version"] == first and registry.version_of(NAME, registry.CHAMPION) == first
    assert registry.version_of(NAME, registry.PREVIOUS) == second
    log = registry.audit_log(NAME)
    manual = [e for e in log if e["evidence"].get("manual")]
    assert manual[-1]["alias"] == "champion" and (manual[-1]["from"], manual[-1]["to"]) == (first, second)
    assert manual[-1]["who"] == "unknown (hand move)" and "noticed by" in manual[-1]["reason"]
    # In order: the hand move, previous pointed at the version it replaced, then the rollback's two moves.
    moves = [(e["alias"], e["from"], e["to"]) for e in log[-4:]]
    assert moves[0] == ("champion", first, second) and moves[1][0] == "previous" and moves[1][2] == first
    assert moves[2] == ("champion", second, first) and moves[3] == ("previous", first, second)


def test_an_alias_removed_by_hand_is_logged_once(built):
    version = register_again(built)  # challenger
    registry.client().delete_registered_model_alias(NAME, registry.CHALLENGER)
    assert registry.version_of(NAME, registry.CHALLENGER) is None  # removed, not "deleted version"
    assert registry.notice_hand_moves(NAME)[0] | {"when": None} == registry.audit_log(NAME)[-1] | {"when": None}
    assert registry.audit_log(NAME)[-1]["from"] == version and registry.audit_log(NAME)[-1]["to"] is None
    assert registry.notice_hand_moves(NAME) == []  # already recorded


@pytest.fixture(scope="module")
def booby_trapped(built, tmp_path_factory) -> tuple[str, Path]:
    """A version whose pyfunc is a pickle that writes a marker when loaded, with the genuine package's files
    and tags, so the gate scores it and promotes it like any other."""
    import mlflow

    marker = tmp_path_factory.mktemp("marker") / "unpickled.txt"

    class Trapped(mlflow.pyfunc.PythonModel):
        def __reduce__(self):  # what cloudpickle stores: unpickling it runs exec, which writes the marker
            return exec, (f"open({str(marker)!r}, 'w').write('unpickled')",)

        def predict(self, context, model_input, params=None):
            return model_input

    version = register_again(built, python_model=Trapped())
    # log_model loads the pickle back to check the input example, on the machine that registers it (the
    # attacker's); what counts is every machine that reads the registry afterwards.
    marker.unlink(missing_ok=True)
    return version, marker


def test_a_pickle_in_the_store_is_never_loaded(built, booby_trapped, tmp_path, capsys):
    version, marker = booby_trapped
    params_file = write_params(built)
    # The gate (challenger: the trapped version), status and rollback, through textops.promote.
    assert registry.version_of(NAME, registry.CHALLENGER) == version
    assert promote_main(["gate", "--params", str(params_file), "--eval", str(eval_set(built))]) == 0, (
        capsys.readouterr()
    )
    assert registry.version_of(NAME, registry.CHAMPION) == version
    assert promote_main(["status", "--params", str(params_file)]) == 0
    assert not marker.exists()
    # The documented consumer snippet (docs/registry.md), in a fresh process, on the champion.
    done = run_python(consumer_snippet(), tmp_path)
    assert done.returncode == 0 and "positive" in done.stdout, done.stderr[-2000:]
    assert not marker.exists()
    # The service in registry mode, serving the trapped champion.
    answer = serve_once(built, tmp_path)
    assert answer["label"] in ("positive", "negative")
    assert not marker.exists()
    # The control: MLflow's generic loader does unpickle it, so the marker would have shown any path that did.
    done = run_python(f"import mlflow; mlflow.pyfunc.load_model('models:/{NAME}/{version}')", tmp_path)
    assert marker.exists(), done.stderr[-2000:]


# ---------------------------------------------------------------- helpers


def eval_set(built: dict) -> Path:
    return built["prepared"] / "eval.parquet"


def write_params(built: dict) -> Path:
    path = built["root"] / "params-trust.yaml"
    if not path.exists():
        raw = built["params"].model_dump(mode="json")
        raw["sentiment"]["package"]["model_name"] = NAME
        path.write_text(yaml.safe_dump(raw))
    return path


def consumer_snippet() -> str:
    """The consumer code block of docs/registry.md, with this module's model name."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "registry.md").read_text()
    block = text.split("## Consumers", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert "sentiment-classifier" in block
    return block.replace("sentiment-classifier", NAME) + "\nprint(model.classify(['a charming , funny film .']))\n"


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def serve_once(built: dict, tmp_path: Path) -> dict:
    """`bentoml serve` from a repository copy whose params name this module's model; one /classify answer."""
    import httpx

    import mlflow
    from service.servers import classify, start, stop

    repo = copy_repo(tmp_path / "repo")
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["sentiment"]["package"]["model_name"] = NAME
    raw["sentiment"]["serve"]["workers"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
    }
    server = start([], repo, env, tmp_path / "serve.log")
    try:
        response = classify(server.url, ["a charming , funny film ."], httpx.Client())
        assert response.status_code == 200, response.text
        return response.json()[0]
    finally:
        stop(server)
        shutil.rmtree(repo, ignore_errors=True)
