"""What both package stages share: the earlier stages' reports, the package folder with its model card and
checksum manifest, and registering the package in MLflow."""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path

from textops import cli
from textops.cli import sha256
from textops.errors import PipelineError
from textops.onnx_export import INT8_FILE, MODEL_FILE
from textops.params import TrackingParams
from textops.tracking import ModelRun, dvc_stage_hashes, git_state

log = logging.getLogger("textops.packaging")
REPORTS = ("prepare", "train", "evaluate", "quantize")  # the earlier stages whose reports a package reads


def read_reports(stage: str, int8: Path, paths: tuple[Path, ...]) -> dict[str, dict]:
    """The reports of prepare, train, evaluate and quantize, by step; a missing one, or a missing INT8 model,
    is an error naming it."""
    named = dict(zip(REPORTS, paths, strict=True))
    missing = [str(p) for p in [*named.values(), int8 / INT8_FILE] if not p.is_file()]
    if missing:
        raise PipelineError(
            f"{stage} needs the outputs of the earlier stages; missing: {missing} (run `dvc repro {stage}`)"
        )
    return {name: cli.read_json(path) for name, path in named.items()}


def fresh_package(int8: Path, out: Path) -> dict:
    """The empty folder `out` (the package's, staged by textops.atomic) filled with the INT8 model as model.onnx
    beside its tokenizer and config (not onnxruntime's own config). Returns the git state and creation time
    the card and manifest record."""
    for f in int8.iterdir():
        if f.is_file() and f.suffix != ".onnx" and f.name != "ort_config.json":
            shutil.copy2(f, out / f.name)
    shutil.copy2(int8 / INT8_FILE, out / MODEL_FILE)
    return {"git": git_state(), "created": datetime.now(UTC).isoformat(timespec="seconds")}


def write_card_and_manifest(out: Path, card: str, fields: dict, made: dict) -> None:
    """MODEL_CARD.md, then manifest.json: `fields`, the model file, git state, time, and every file's sha256."""
    (out / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    cli.write_json(out / "manifest.json", {**fields, "model_file": MODEL_FILE, **made, "files": manifest(out)})
    log.info("packaged %d files into %s", len(list(out.iterdir())), out)


def manifest(folder: Path) -> dict:
    return {
        p.relative_to(folder).as_posix(): {"sha256": sha256(p), "bytes": p.stat().st_size}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def register(tracking: TrackingParams, model_name: str, model: Path, out: Path, tags: dict, task: str) -> None:
    """Both package stages: the package, model card, manifest and dvc.lock into the model's MLflow run, then a
    new registry version aliased challenger (skipped when tracking is off)."""
    from textops import registry, tasks

    tracker = ModelRun(tracking.enabled, tracking.experiment).reopen(model)
    if not tracker.run_id:
        return
    tracker.set_tags(dvc_stage_hashes())
    for path in (out / "MODEL_CARD.md", out / "manifest.json", Path("dvc.lock")):
        tracker.log_artifact(path, "package")
    version = registry.register(model_name, tracker.run_id, out, model, tags, tasks.get(task).flavour)
    tracker.set_tags({"registered_version": version})
    log.info("registered %s version %s as '%s'", model_name, version, registry.CHALLENGER)
