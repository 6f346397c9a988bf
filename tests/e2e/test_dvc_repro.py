"""End to end: `dvc repro` on the bundled sample in a fresh copy of the repository, with the real
default model (all-MiniLM-L6-v2 from its offline package), in team mode: only the environment changed
(scripts/stack.sh env), the runs, registry, audit log and artifacts go to the test run's MLflow server on
PostgreSQL with artifacts in the S3 server, and the DVC remote is a bucket on that server; then the gate, two
promotions at once, a registry-mode service told of alias moves by the server's webhook, `bentoml build`, and a
colleague's clone that `dvc pull`s and has nothing to reproduce. Slow: about 4-5 minutes on 2 cores. The
embedded default (SQLite under mlflow/, no server) runs in every other test folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import team_stack
from conftest import git_commit_all

ROOT = Path(__file__).resolve().parents[2]
STEPS = ["prepare", "tokenize", "train", "evaluate", "quantize", "package"]
SENTIMENT = [f"sentiment_{s}" for s in STEPS]
STORY = [f"story_{s}" for s in STEPS]
STAGES = SENTIMENT + STORY
pytestmark = pytest.mark.slow


def tracked_files(root: Path) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [f for f in out.split("\0") if f and (root / f).is_file()]


TEAM: dict[str, str] = {}  # the stack's client settings (scripts/stack.sh env), set by the `stack` fixture


def environment(**more: str) -> dict[str, str]:
    return {
        **os.environ,
        **TEAM,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        **more,
    }


def run(cmd: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=environment(**env), capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module", autouse=True)
def stack(request) -> dict[str, str]:
    TEAM.update(team_stack.up(request.config, "mlflow"))
    yield TEAM
    TEAM.clear()


def ran(result: subprocess.CompletedProcess) -> list[str]:
    """The stages that ran, in the order DVC ran them."""
    return sorted(
        (s for s in STAGES if f"Running stage '{s}'" in result.stdout),
        key=lambda s: result.stdout.index(f"Running stage '{s}'"),
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("clone")
    for name in tracked_files(ROOT):
        if name.startswith(("outputs/", "dvc.lock")):
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    return git_commit_all(dest, "copy")


@pytest.fixture(scope="module")
def first(repo) -> subprocess.CompletedProcess:
    return run(["dvc", "repro"], repo)


def test_repro_runs_all_stages_of_both_tasks(repo, first):
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    order = ran(first)
    assert sorted(order) == sorted(STAGES)
    assert [s for s in order if s in SENTIMENT] == SENTIMENT and [s for s in order if s in STORY] == STORY
    package = repo / "outputs/sentiment/package"
    manifest = json.loads((package / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"model.onnx", "labels.json", "MODEL_CARD.md", "config.json", "tokenizer.json"}
    quantize = json.loads((repo / "outputs/sentiment/reports/quantize.json").read_text())
    assert quantize["int8_size_ratio"] < 0.3
    evaluate = json.loads((repo / "outputs/sentiment/reports/evaluate.json").read_text())
    assert evaluate["accuracy"] >= 0.6  # the params gate; the sample is small, so only a floor
    story = json.loads((repo / "outputs/story/package/manifest.json").read_text())
    assert "model.onnx" in story["files"]
    story_quantize = json.loads((repo / "outputs/story/reports/quantize.json").read_text())
    assert story_quantize["greedy_agreement"]["onnx_int8"]["teacher_forced"] >= 0.95  # the INT8 gate's default


def test_metrics_show_fits_a_terminal(repo, first):
    """dvc metrics show: the headline numbers of both tasks, at most 30 columns."""
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    files = next(iter(shown.values()))["data"]

    def leaves(data: dict, prefix: str = "") -> set[str]:
        out = set()
        for key, value in data.items():
            out |= leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
        return out

    columns = set().union(*(leaves(entry["data"]) for entry in files.values()))
    assert len(files) == 10 and len(columns) <= 30, sorted(columns)


def test_second_repro_has_nothing_to_do(repo, first):
    again = run(["dvc", "repro"], repo)
    assert again.returncode == 0 and ran(again) == []
    assert "Data and pipelines are up to date" in again.stdout or "didn't change" in again.stdout


def test_quantize_param_reruns_only_quantize_and_package(repo, first):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["sentiment"]["quantize"]["latency_requests"] = 50
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = run(["dvc", "repro"], repo)
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert ran(changed) == ["sentiment_quantize", "sentiment_package"]


def test_runs_registry_and_artifacts_are_on_the_server(repo, first):
    """Nothing in the copy's mlflow/: the registry and runs are rows in PostgreSQL, the artifacts objects in S3."""
    import boto3
    import psycopg2

    assert not (repo / "mlflow" / "db").exists() and not (repo / "mlflow" / "artifacts").exists()
    with psycopg2.connect(**team_stack.postgres()) as db, db.cursor() as cursor:
        cursor.execute("select name from registered_models")
        assert {"sentiment-classifier", "story-generator"} <= {row[0] for row in cursor.fetchall()}
        cursor.execute("select count(*) from runs where status = 'FINISHED'")
        assert cursor.fetchone()[0] >= 2
    s3 = boto3.client(
        "s3",
        endpoint_url=TEAM["AWS_ENDPOINT_URL"],
        aws_access_key_id=TEAM["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=TEAM["AWS_SECRET_ACCESS_KEY"],
        region_name=TEAM["AWS_DEFAULT_REGION"],
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="textops", Prefix="mlflow/").get("Contents", [])]
    assert any(k.endswith("model.onnx") for k in keys), keys[:20]


def decision(result: subprocess.CompletedProcess) -> str:
    return json.loads(result.stdout)["decision"]


def test_gate_and_two_promotions_at_once_on_the_server(repo, first):
    """The gate on the server; then v2 (the quantize rerun's package) promoted by two gates at once: one promotes,
    the other waits for the lock (a registered model the server creates once) and finds nothing to do."""
    story = run([sys.executable, "-m", "textops.promote", "gate", "--task", "story"], repo)
    assert story.returncode == 0 and decision(story) == "promoted", story.stdout + story.stderr
    reset = run(
        [sys.executable, "-m", "textops.promote", "promote", "--version", "1", "--force", "--reason", "race"], repo
    )
    assert reset.returncode == 0, reset.stderr
    cmd = [sys.executable, "-m", "textops.promote", "gate", "--version", "2"]
    procs = [
        subprocess.Popen(cmd, cwd=repo, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert sorted(json.loads(out)["decision"] for out, _ in outs) == ["promoted", "unchanged"]
    status = json.loads(run([sys.executable, "-m", "textops.promote", "status"], repo).stdout)
    keys = [e["when"] for e in status["audit"]]
    assert keys == sorted(keys) and status["aliases"]["champion"] == "2"
    champion_moves = [e for e in status["audit"] if e["alias"] == "champion"]
    assert (champion_moves[-1]["from"], champion_moves[-1]["to"]) == ("1", "2")


def test_service_hears_alias_moves_from_the_server(repo, first, tmp_path):
    """Registry mode on the server, polling every 60 s: a rollback reaches the service through the webhook it
    subscribed to, long before the next poll (bench/serving/webhook_latency.py measures how long)."""
    from service.servers import metadata, start, stop
    from serving.processes import free_port

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["sentiment"]["serve"]["poll_interval_s"] = 60
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    port = free_port()
    env = environment(
        BENTOML_HOME=str(tmp_path / "bentoml"),
        TEXTOPS_WEBHOOK_URL=f"http://127.0.0.1:{port}/registry_events",
        TEXTOPS_WEBHOOK_SECRET="e2e-secret",
    )
    server = start(["serving.service:Sentiment"], repo, env, tmp_path / "serve.log", port=port)
    try:
        before = metadata(server.url)["version"]
        deadline = time.monotonic() + 30
        while "subscribed to" not in server.output() and time.monotonic() < deadline:
            time.sleep(0.2)
        rolled = run([sys.executable, "-m", "textops.promote", "rollback", "--reason", "e2e"], repo)
        assert rolled.returncode == 0, rolled.stderr
        after = json.loads(run([sys.executable, "-m", "textops.promote", "status"], repo).stdout)["aliases"]["champion"]
        moved = time.monotonic()
        while metadata(server.url)["version"] != after and time.monotonic() - moved < 30:
            time.sleep(0.1)
        assert metadata(server.url)["version"] == after != before, server.output()[-3000:]
        assert "on a pushed alias event" in server.output()
    finally:
        stop(server)


def test_bentoml_build_from_the_server(repo, first, tmp_path):
    from service.servers import build

    built = build(repo, environment(BENTOML_HOME=str(tmp_path / "bentoml")))
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    assert "__tag__:sentiment:" in built.stdout


def test_a_colleague_pulls_and_has_nothing_to_reproduce(repo, first, tmp_path):
    """`dvc push` to the S3 remote (.dvc/config's `team`; the endpoint and keys from the environment only), a fresh
    clone, `dvc pull`: every stage is up to date there."""
    assert (
        "textops" in (repo / ".dvc" / "config").read_text() and "secret" not in (repo / ".dvc" / "config").read_text()
    )
    git_commit_all(repo, "ran")
    pushed = run(["dvc", "push"], repo)
    assert pushed.returncode == 0, pushed.stdout[-2000:] + pushed.stderr[-2000:]
    clone = tmp_path / "colleague"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    pulled = run(["dvc", "pull"], clone)
    assert pulled.returncode == 0, pulled.stdout[-2000:] + pulled.stderr[-2000:]
    again = run(["dvc", "repro"], clone)
    assert again.returncode == 0 and ran(again) == [], again.stdout[-3000:]


def test_an_experiment_is_shared_through_the_git_remote_and_the_bucket(repo, first, tmp_path):
    """docs/team.md: `dvc exp push origin <exp>` sends the experiment's commit to the git remote and its outputs to
    the DVC remote (`team`, the bucket); a colleague's clone `dvc exp pull`s it, and `dvc exp apply` gives them its
    params and outputs with nothing to reproduce. The last test here: the experiment stays in the workspace."""
    if subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout:
        git_commit_all(repo, "ran")  # unless the colleague's test above committed the run already
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(origin)], check=True)
    name, model_name = "shared-exp", "sentiment-shared-exp"
    exp = run(["dvc", "exp", "run", "-n", name, "-S", f"sentiment.package.model_name={model_name}"], repo)
    assert exp.returncode == 0, exp.stdout[-3000:] + exp.stderr[-3000:]
    assert ran(exp) == ["sentiment_package"], exp.stdout[-3000:]
    pushed = run(["dvc", "exp", "push", str(origin), name], repo)
    assert pushed.returncode == 0, pushed.stdout[-2000:] + pushed.stderr[-2000:]

    clone = tmp_path / "colleague"
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True)
    pulled = run(["dvc", "exp", "pull", "origin", name], clone)
    assert pulled.returncode == 0, pulled.stdout[-2000:] + pulled.stderr[-2000:]
    applied = run(["dvc", "exp", "apply", name], clone)
    assert applied.returncode == 0, applied.stdout[-2000:] + applied.stderr[-2000:]
    params = yaml.safe_load((clone / "params.yaml").read_text())
    assert params["sentiment"]["package"]["model_name"] == model_name
    manifest = "outputs/sentiment/package/manifest.json"
    assert (clone / manifest).read_text() == (repo / manifest).read_text()
    again = run(["dvc", "repro"], clone)
    assert again.returncode == 0 and ran(again) == [], again.stdout[-3000:]
