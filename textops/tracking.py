"""MLflow tracking: where the store is, and one run per trained model that later stages add to.

Default store: SQLite and an artifact folder under the workspace's mlflow/ (no server); the workspace is
DVC_ROOT, which DVC sets for every stage, also in `dvc exp run --temp/--queue` runs, whose stages run in
a temporary copy that DVC deletes afterwards. MLFLOW_TRACKING_URI switches to a team server. The train stage opens the run and writes its id into the model folder;
evaluate, quantize and package reopen that run, so a stage DVC skips logs nothing.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from textops.errors import PipelineError

ROOT = Path(__file__).resolve().parents[1]
RUN_FILE = "mlflow_run.json"
# The Prefect flow gives each stage it runs an id (its task run's); the runs the stage opens carry it as a tag,
# so the flow can end them FAILED when the stage dies before it could (SIGKILL, OOM).
STAGE_RUN_ENV = "TEXTOPS_TASK_RUN_ID"
STAGE_RUN_TAG = "prefect_task_run_id"


def workspace() -> Path:
    """The DVC workspace the store belongs to: DVC_ROOT under DVC (the real one, not an experiment's temporary
    copy), else the repository this code is in."""
    return Path(os.environ.get("DVC_ROOT") or ROOT)


def default_tracking_uri(root: Path | None = None) -> str:
    return f"sqlite:///{(root or workspace()) / 'mlflow' / 'db' / 'mlflow.db'}"


def connect() -> str:
    """Point MLflow at the store (offline-safe) without touching it; returns the URI."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # it looks up an outside host otherwise
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # log_model's requirement inference would query the Hub
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    return uri


def configure(experiment: str) -> str:
    """Point MLflow at the store and make sure the experiment exists; returns the URI."""
    from filelock import FileLock

    import mlflow

    uri = connect()
    setup = contextlib.nullcontext()
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        # Two first stages at once (queued experiments on a new workspace) would both create the schema
        # ("duplicate column name") and the experiment: one at a time, and the second finds both made.
        setup = FileLock(str(db.with_suffix(".setup.lock")))
    try:
        with setup:
            if mlflow.get_experiment_by_name(experiment) is None:
                location = None
                if uri.startswith("sqlite:///"):
                    # Without this, artifacts land in <cwd when the database was made>/mlruns.
                    location = (Path(uri.removeprefix("sqlite:///")).parent.parent / "artifacts").resolve().as_uri()
                mlflow.create_experiment(experiment, artifact_location=location)
            mlflow.set_experiment(experiment)
    except Exception as error:  # connection errors come as several types (requests, MlflowException)
        raise PipelineError(
            f"MLflow tracking store {uri} is unreachable or refused the request "
            f"({type(error).__name__}: {str(error)[:300]}). Start it, or unset "
            f"MLFLOW_TRACKING_URI to use the local SQLite store."
        ) from None
    return uri


def git_state(cwd: Path = Path(".")) -> dict:
    """The commit the code ran from, and whether tracked files had uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (subprocess.CalledProcessError, FileNotFoundError):
        return {"commit": "unknown", "dirty": None}


def git_tags() -> dict[str, str]:
    state = git_state()
    tags = {"git_commit": state["commit"], "git_dirty": str(state["dirty"]).lower()}
    if os.environ.get("DVC_EXP_NAME"):  # set by `dvc exp run`: links the run to its row in `dvc exp show`
        tags["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
    return tags


def dvc_stage_hashes(lock: Path = Path("dvc.lock")) -> dict[str, str]:
    """md5 of each stage's command, deps and outs as dvc.lock records them (what made this model)."""
    import hashlib

    import yaml

    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    return {
        f"dvc_stage.{name}": hashlib.md5(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:12]
        for name, entry in stages.items()
    }


def write_run_id(model_dir: Path, run_id: str, uri: str) -> None:
    (model_dir / RUN_FILE).write_text(json.dumps({"run_id": run_id, "tracking_uri": uri}) + "\n")


def read_run_id(model_dir: Path) -> str | None:
    path = model_dir / RUN_FILE
    return json.loads(path.read_text())["run_id"] if path.is_file() else None


def log_curve(client: Any, run_id: str, log_history: list[dict]) -> None:
    """Per-step training curves: loss, learning rate, gradient norm, eval accuracy."""
    from mlflow.entities import Metric

    keys = {
        "loss": "train_loss",
        "learning_rate": "learning_rate",
        "grad_norm": "grad_norm",
        "eval_accuracy": "eval_accuracy",
        "eval_loss": "eval_loss",
    }
    metrics = [
        Metric(keys[k], float(v), 0, int(e["step"]))
        for e in log_history
        for k, v in e.items()
        if k in keys and v is not None
    ]
    for start in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[start : start + 500])


def numeric(prefix: str, data: dict) -> dict[str, float]:
    """Flatten a metrics report to prefix.key -> number (MLflow metrics must be numbers)."""
    out: dict[str, float] = {}

    def walk(key: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{key}.{k}", v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)

    walk(prefix, data)
    return out


class ModelRun:
    """The MLflow run of one trained model, or a no-op when tracking is off in params."""

    def __init__(self, enabled: bool, experiment: str):
        self.enabled, self.experiment = enabled, experiment
        self.run_id: str | None = None
        self.uri: str | None = None

    def start(self, run_name: str, tags: dict[str, str]) -> ModelRun:
        if self.enabled:
            import mlflow

            self.uri = configure(self.experiment)
            self.run_id = (
                mlflow.MlflowClient()
                .create_run(
                    mlflow.get_experiment_by_name(self.experiment).experiment_id,
                    run_name=run_name,
                    tags={
                        **git_tags(),
                        "mlflow.user": getpass.getuser(),
                        "mlflow.source.name": "dvc repro",
                        **({STAGE_RUN_TAG: os.environ[STAGE_RUN_ENV]} if os.environ.get(STAGE_RUN_ENV) else {}),
                        **tags,
                    },
                )
                .info.run_id
            )
        return self

    def reopen(self, model_dir: Path) -> ModelRun:
        if self.enabled:
            self.uri = configure(self.experiment)
            self.run_id = read_run_id(model_dir)
            if self.run_id is None:
                raise PipelineError(
                    f"{model_dir / RUN_FILE} is missing: the model was trained with tracking off; "
                    f"rerun train (dvc repro -f -s train) or set tracking.enabled: false"
                )
        return self

    @property
    def client(self):
        import mlflow

        return mlflow.MlflowClient()

    def log_params(self, params: dict[str, Any]) -> None:
        if self.run_id:
            from mlflow.entities import Param

            items = [Param(k, str(v)[:6000]) for k, v in params.items()]
            for start in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float]) -> None:
        if self.run_id:
            import time

            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])

    def log_curve(self, log_history: list[dict]) -> None:
        if self.run_id:
            log_curve(self.client, self.run_id, log_history)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.run_id and Path(path).exists():
            if Path(path).is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path)
            else:
                self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.run_id:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, str(v))

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id:
            self.client.set_terminated(self.run_id, status=status)


def fail_running_runs(uri: str, stage_run_id: str) -> list[str]:
    """End FAILED the runs a stage opened (tagged with its `stage_run_id`) that are still RUNNING: a stage
    killed before its own `except` ran leaves them RUNNING for ever. Returns their ids."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return []  # no store, so no run (opening it would create it)
    import uuid

    import mlflow

    client = mlflow.MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    query = f"tags.{STAGE_RUN_TAG} = '{uuid.UUID(stage_run_id)}' and attributes.status = 'RUNNING'"
    runs = client.search_runs(experiments, query) if experiments else []
    for run in runs:
        client.set_terminated(run.info.run_id, status="FAILED")
    return [run.info.run_id for run in runs]
