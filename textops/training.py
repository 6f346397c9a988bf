"""What both train stages share: resuming from checkpoints, and the model's MLflow run around training."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textops import cli
from textops.atomic import atomic_dir, atomic_file
from textops.tracking import ModelRun, numeric, write_run_id

log = logging.getLogger("textops.training")


def unreadable(checkpoint: Path) -> str | None:
    """Why a checkpoint's files cannot be loaded (a truncated or corrupt file), or None when they all load.
    The Trainer would fail on such a checkpoint at every rerun, so it is better skipped for the one before."""
    import json

    for path in sorted(p for p in checkpoint.rglob("*") if p.is_file()):
        try:
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(path), "pt") as fh:
                    for key in fh.keys():
                        fh.get_tensor(key)
            elif path.suffix in (".pt", ".pth", ".bin"):
                import torch

                torch.load(path, map_location="cpu", weights_only=False)  # our own files, written by the Trainer
            elif path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
        except Exception as error:  # each loader raises its own types for a cut-off file
            return f"{path.name}: {type(error).__name__}: {str(error)[:200]}"
    return None


def last_checkpoint(checkpoints: Path, stamp_value: str) -> str | None:
    """The newest complete, loadable checkpoint of this exact run, or None (stale, incomplete and unreadable
    ones are cleared)."""
    stamp = checkpoints / "fingerprint.txt"
    if checkpoints.is_dir() and (not stamp.is_file() or stamp.read_text() != stamp_value):
        log.info("clearing checkpoints of a different run in %s", checkpoints)
        shutil.rmtree(checkpoints)
    checkpoints.mkdir(parents=True, exist_ok=True)
    stamp.write_text(stamp_value)
    found = sorted(checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for candidate in found:
        # trainer_state.json is written last: a kill in mid-save leaves a checkpoint without it.
        if not (candidate / "trainer_state.json").is_file():
            log.info("ignoring incomplete checkpoint %s", candidate)
        elif problem := unreadable(candidate):
            log.warning("skipping checkpoint %s, which does not load (%s); trying the one before", candidate, problem)
        else:
            return str(candidate)
        shutil.rmtree(candidate)
    return None


def start_run(tracking: Any, task: str, run_name: str, prepare_report: Path, base_model: str, params: dict) -> ModelRun:
    """The model's MLflow run, opened by a train stage: tagged with its task, data (hash and source, from
    prepare's report) and base model, with the stage's params (dotted keys) logged."""
    data = cli.read_json(prepare_report)
    tags = {
        "task": task,
        "data_hash": data["data_hash"],
        "data_source": data["source"],
        "base_model": base_model,
        "mlflow.source.name": f"dvc repro (stages.{task}_train)",
    }
    tracker = ModelRun(tracking.enabled, tracking.experiment).start(run_name=run_name, tags=tags)
    tracker.log_params(params)
    return tracker


def record_training(
    tracker: ModelRun,
    train_model: Callable[[Path], dict],
    curves_of: Callable,
    out: Path,
    checkpoints: Path,
    curve: Path,
    metrics: Path,
    report_file: Path,
    headline: tuple[str, ...],
) -> None:
    """Both train stages' tail: train inside the model's MLflow run (failed if training raises), then the
    curves as DVC plots, the report (its `headline` keys also as the metrics file), the run id beside the
    model; checkpoints cleared. train_model saves into the folder it is given, which becomes `out` only once
    it holds the whole model, run id included (textops.atomic)."""
    with atomic_dir(out) as model_dir:
        try:
            result = train_model(model_dir)
        except BaseException:
            tracker.finish("FAILED")
            raise
        if tracker.run_id:
            write_run_id(model_dir, tracker.run_id, tracker.uri)
    loss_curve, eval_curve = curves_of(result["log_history"])
    for frame, name in ((loss_curve, "loss.csv"), (eval_curve, "eval.csv")):
        with atomic_file(curve / name) as tmp:
            frame.to_csv(tmp, index=False)
    report = result["metrics"]
    cli.write_results(report_file, metrics, report, {key: report[key] for key in headline})
    tracker.log_curve(result["log_history"])
    tracker.log_metrics(numeric("train", result["metrics"]))
    tracker.finish()
    # A finished run needs no checkpoints: keep only the fingerprint, so a rerun starts clean.
    for stale in checkpoints.glob("checkpoint-*"):
        shutil.rmtree(stale)
    log.info("done: %s", result["metrics"])
