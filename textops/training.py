"""What both train stages share: their main (and its launch on several processes), resuming from checkpoints,
saving the model, and the model's MLflow run around training. With several processes (textops.distributed),
rank 0 alone does what writes: the MLflow run, the model folder, checkpoint clean-up, curves and reports."""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from textops import cli, distributed, lora
from textops.atomic import atomic_dir, atomic_file
from textops.tracking import ModelRun, numeric, write_run_id

log = logging.getLogger("textops.training")
# Both train stages take the same paths (dvc.yaml passes them).
PATHS = ("tokenized", "prepare-report", "out", "checkpoints", "curve", "metrics", "report-file")


def main(task: str, description: str, run: Callable[..., None], argv: Sequence[str] | None = None) -> int:
    """Stage `<task>_train`'s main: cli.main around `run`, except that with `<task>.train.processes` over 1,
    outside a launch, it starts that many torchrun workers on this same module and arguments instead."""
    stage = f"{task}_train"
    argv = list(sys.argv[1:] if argv is None else argv)

    def launch_or_run(params, **paths) -> None:
        train = getattr(params, task).train
        if distributed.needs_launch(train.processes):
            distributed.per_device_batch(train.batch_size, train.processes, f"{task}.train")  # before any start
            distributed.relaunch(f"stages.{stage}", argv, train.processes)
            return
        distributed.check_launch(train.processes, f"{task}.train")
        if distributed.launched():
            distributed.join_launch()
        if not distributed.is_main():
            logging.getLogger("textops").setLevel(logging.WARNING)  # rank 0 speaks for all; errors still show
        run(params, **paths)

    return cli.main(stage, description, list(PATHS), launch_or_run, argv)


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


def resume_from(checkpoints: Path, stamp_value: str) -> str | None:
    """last_checkpoint as rank 0 finds it (it alone clears and stamps the folder), for every process: all of
    them must resume from the same step. Call it once the Trainer exists."""
    resume = distributed.from_main(lambda: last_checkpoint(checkpoints, stamp_value))
    if resume and distributed.world_size() > 1:
        distributed.load_onto_indexed_cpu()
    return resume


def save_model(model, tokenizer, out: Path, json_files: dict[str, Any] | None = None) -> None:
    """The trained model (LoRA adapters folded in, so later stages load a plain model), its tokenizer and
    `json_files` (name: content) into `out`, by rank 0: after DDP's averaged steps every process holds the
    same weights."""
    if not distributed.is_main():
        return
    lora.merge(model).save_pretrained(str(out))  # safetensors
    tokenizer.save_pretrained(str(out))
    for name, content in (json_files or {}).items():
        cli.write_json(out / name, content)


def start_run(tracking: Any, task: str, run_name: str, prepare_report: Path, base_model: str, params: dict) -> ModelRun:
    """The model's MLflow run, opened by a train stage: tagged with its task, data (hash and source, from
    prepare's report) and base model, with the stage's params (dotted keys) logged. On ranks other than 0,
    a tracker that is off: one run per model, however many processes train it."""
    data = cli.read_json(prepare_report)
    tags = {
        "task": task,
        "data_hash": data["data_hash"],
        "data_source": data["source"],
        "base_model": base_model,
        "mlflow.source.name": f"dvc repro (stages.{task}_train)",
    }
    tracker = ModelRun(tracking.enabled and distributed.is_main(), tracking.experiment).start(run_name, tags)
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
    it holds the whole model, run id included (textops.atomic). Ranks other than 0 train beside rank 0 and
    write nothing: their folder is None (save_model skips them too) and their tracker is off."""
    main = distributed.is_main()
    with atomic_dir(out) if main else nullcontext() as model_dir:
        try:
            result = train_model(model_dir)
        except BaseException:
            tracker.finish("FAILED")
            raise
        if tracker.run_id:
            write_run_id(model_dir, tracker.run_id, tracker.uri)
    if not main:
        return
    loss_curve, eval_curve = curves_of(result["log_history"])
    for frame, name in ((loss_curve, "loss.csv"), (eval_curve, "eval.csv")):
        with atomic_file(curve / name) as tmp:
            frame.to_csv(tmp, index=False)
    launch = {"processes": distributed.world_size(), "backend": distributed.backend()}
    report = {**result["metrics"], **launch}
    cli.write_results(report_file, metrics, report, {key: report[key] for key in headline})
    tracker.log_params({f"launch.{key}": value for key, value in launch.items()})
    # What `precision: auto` resolved to and the CPU flags it read: strings, which log_metrics below skips.
    tracker.log_params({f"train.{key}": report[key] for key in ("precision", "cpu_bf16_flags")})
    tracker.log_curve(result["log_history"])
    tracker.log_metrics(numeric("train", report))
    tracker.finish()
    # A finished run needs no checkpoints: keep only the fingerprint, so a rerun starts clean.
    for stale in checkpoints.glob("checkpoint-*"):
        shutil.rmtree(stale)
    log.info("done: %s", report)
