"""train resumes from its last checkpoint when rerun after a kill (and starts over when params change)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from conftest import ROOT, sentences, write_tsv
from stages import sentiment_prepare as prepare
from stages import sentiment_tokenize as tokenize


def train_cmd(root: Path, params_file: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "stages.sentiment_train",
        "--params",
        str(params_file),
        "--tokenized",
        str(root / "tok"),
        "--prepare-report",
        str(root / "prepare.json"),
        "--out",
        str(root / "model"),
        "--checkpoints",
        str(root / "ckpt"),
        "--curve",
        str(root / "curve"),
        "--metrics",
        str(root / "train.metrics.json"),
        "--report-file",
        str(root / "train.json"),
    ]


def test_rerun_after_kill_resumes_from_last_checkpoint(tmp_path, params_for):
    params = params_for(
        write_tsv(tmp_path / "reviews.tsv", sentences(40)),
        tracking__enabled=False,
        train__epochs=60,
        train__save_steps=5,
        train__save_total_limit=2,
    )
    prepare.run(params, tmp_path / "prepared", tmp_path / "prepare.metrics.json", tmp_path / "prepare.json")
    tokenize.run(
        params, tmp_path / "prepared", tmp_path / "tok", tmp_path / "tokenize.metrics.json", tmp_path / "t.json"
    )
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump()))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    proc = subprocess.Popen(
        train_cmd(tmp_path, params_file), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 180
    while not any(int(p.name.split("-")[1]) >= 10 for p in (tmp_path / "ckpt").glob("checkpoint-*")):
        assert proc.poll() is None, "training finished before it could be killed; raise epochs"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    time.sleep(0.5)  # let the checkpoint finish writing (Trainer writes then renames nothing: give it a moment)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "train.json").exists()

    done = subprocess.run(
        train_cmd(tmp_path, params_file), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "train.json").read_text())
    assert metrics["resumed_from_step"] >= 10
    assert metrics["global_step"] == 60 * 64 // 8  # the whole schedule: 64 train rows, batch 8, 60 epochs
    assert "resuming from" in done.stderr


def test_changed_params_clear_stale_checkpoints(tmp_path):
    from textops.training import last_checkpoint

    ckpt = tmp_path / "ckpt"
    (ckpt / "checkpoint-5").mkdir(parents=True)
    (ckpt / "fingerprint.txt").write_text("old")
    assert last_checkpoint(ckpt, "new") is None and not (ckpt / "checkpoint-5").exists()
    (ckpt / "checkpoint-7").mkdir()
    (ckpt / "checkpoint-7" / "trainer_state.json").write_text("{}")
    assert last_checkpoint(ckpt, "new").endswith("checkpoint-7")


def test_an_unreadable_newest_checkpoint_is_skipped_for_the_one_before(tmp_path, caplog):
    """A truncated file in the newest checkpoint (a full disk, a kill while the OS flushed it) would make
    every rerun fail in the Trainer: the checkpoint before it is resumed instead, and the skip is logged."""
    import logging

    import torch
    from safetensors.torch import save_file

    from textops.training import last_checkpoint

    ckpt = tmp_path / "ckpt"
    for step in (5, 10):
        folder = ckpt / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        save_file({"weight": torch.randn(64, 64)}, str(folder / "model.safetensors"))
        torch.save({"state": {}, "param_groups": []}, folder / "optimizer.pt")
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (ckpt / "fingerprint.txt").write_text("run")
    assert last_checkpoint(ckpt, "run").endswith("checkpoint-10")  # both load: the newest

    newest = ckpt / "checkpoint-10" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # cut in half
    with caplog.at_level(logging.WARNING, logger="textops.training"):
        assert last_checkpoint(ckpt, "run").endswith("checkpoint-5")
    assert "skipping checkpoint" in caplog.text and "model.safetensors" in caplog.text
    assert not (ckpt / "checkpoint-10").exists()

    (ckpt / "checkpoint-5" / "optimizer.pt").write_bytes(b"\x80\x02 not a whole pickle")
    assert last_checkpoint(ckpt, "run") is None  # none loads: training starts over
