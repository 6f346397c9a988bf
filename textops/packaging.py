"""What both package stages share: the checksum manifest, and registering the package in MLflow."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from textops.params import TrackingParams
from textops.tracking import ModelRun, dvc_stage_hashes

log = logging.getLogger("textops.packaging")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest(folder: Path) -> dict:
    return {
        p.relative_to(folder).as_posix(): {"sha256": sha256(p), "bytes": p.stat().st_size}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def register(tracking: TrackingParams, model_name: str, model: Path, out: Path, tags: dict, task: str) -> None:
    """Both package stages: the package, model card, manifest and dvc.lock into the model's MLflow run, then a
    new registry version aliased challenger (skipped when tracking is off)."""
    from textops import registry

    tracker = ModelRun(tracking.enabled, tracking.experiment).reopen(model)
    if not tracker.run_id:
        return
    tracker.set_tags(dvc_stage_hashes())
    for path in (out / "MODEL_CARD.md", out / "manifest.json", Path("dvc.lock")):
        tracker.log_artifact(path, "package")
    version = registry.register(model_name, tracker.run_id, out, model, tags, task=task)
    tracker.set_tags({"registered_version": version})
    log.info("registered %s version %s as '%s'", model_name, version, registry.CHALLENGER)
