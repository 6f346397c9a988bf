"""Each stage's contract on tiny data, run in DAG order once per module (tiny random BERT)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from conftest import run_all_stages, sentences, write_tsv
from stages import sentiment_evaluate as evaluate
from stages import sentiment_package as package
from textops.errors import GateFailed, PipelineError
from textops.packaging import sha256


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, params_for) -> dict:
    root = tmp_path_factory.mktemp("pipeline")
    params = params_for(write_tsv(root / "reviews.tsv", sentences(80)))
    return run_all_stages(root, params)


def test_prepare_splits_stratified(pipeline):
    report = pipeline["reports"]["prepare"]
    assert report["rows"] == {"train": 128, "eval": 32}
    assert report["class_counts"]["eval"] == {"negative": 16, "positive": 16}
    assert report["validation_success"] is True


def test_tokenize_report_counts_truncation(pipeline):
    report = pipeline["reports"]["tokenize"]
    ids = pd.read_parquet(pipeline["tokenized"] / "train.parquet")
    assert report["train"]["texts"] == len(ids) == 128
    assert max(len(r) for r in ids["input_ids"]) <= 16
    assert report["train"]["truncated"] == 0  # toy sentences are 8 tokens with [CLS]/[SEP]


def test_train_learns_and_writes_curve(pipeline):
    metrics = pipeline["reports"]["train"]
    # Toy sentiment words carry the label: a tiny BERT must get well above chance in 3 epochs.
    assert metrics["eval_accuracy"] >= 0.8
    assert metrics["samples_per_second"] > 0 and metrics["precision"] == "fp32"
    curve = pd.read_csv(pipeline["curve"] / "loss.csv")
    assert {"step", "loss", "learning_rate"} <= set(curve.columns) and len(curve) >= 3
    assert curve["learning_rate"].iloc[-1] < curve["learning_rate"].iloc[0]  # linear decay
    assert (pipeline["model"] / "model.safetensors").is_file()
    assert json.loads((pipeline["model"] / "labels.json").read_text()) == ["negative", "positive"]
    assert not list(pipeline["checkpoints"].glob("checkpoint-*"))  # cleared after a finished run


def test_evaluate_report_and_figures(pipeline):
    report = pipeline["reports"]["evaluate"]
    assert report["accuracy"] >= 0.8
    assert sum(map(sum, report["confusion_matrix"])) == report["examples"] == 32
    assert 0 <= report["ece"] <= 1
    assert set(report["per_class"]) == {"negative", "positive"}
    assert (pipeline["figures"] / "confusion.png").stat().st_size > 1000
    assert len(list((pipeline["figures"] / "attention").glob("*.png"))) == 2


def test_evaluate_gate_fails_below_min_accuracy(pipeline, params_for, tmp_path):
    # Flipped labels turn a good model into a bad one: the gate must stop it and name the key.
    flipped = pd.read_parquet(pipeline["prepared"] / "eval.parquet")
    flipped["label"] = flipped["label"].map({"negative": "positive", "positive": "negative"})
    (tmp_path / "prepared").mkdir()
    flipped.to_parquet(tmp_path / "prepared" / "eval.parquet")
    strict = params_for(pipeline["params"].sentiment.prepare.source, evaluate__min_accuracy=0.5)
    with pytest.raises(GateFailed, match="evaluate.min_accuracy=0.5"):
        evaluate.run(
            strict,
            pipeline["model"],
            tmp_path / "prepared",
            tmp_path / "m.json",
            tmp_path / "p.csv",
            tmp_path / "fig",
            tmp_path / "r.json",
        )
    assert json.loads((tmp_path / "m.json").read_text())["accuracy"] < 0.5  # reports are written before the gate


def test_quantize_report(pipeline):
    report = pipeline["reports"]["quantize"]
    assert report["examples"] == 32
    assert report["onnx_fp32_max_prob_diff"] < 1e-4  # export is exact up to float noise
    latency = report["latency_ms"]
    assert set(latency) == {"pytorch_fp32", "onnx_fp32", "onnx_int8", "pytorch_fp32_default_threads"}
    assert latency["pytorch_fp32_default_threads"]["threads"] == torch.get_num_threads()  # restored after the run
    assert report["int8_speedup_vs_pytorch_p50"] == round(
        latency["pytorch_fp32"]["p50"] / latency["onnx_int8"]["p50"], 2
    )
    assert (pipeline["int8"] / "model_quantized.onnx").stat().st_size < (pipeline["fp32"] / "model.onnx").stat().st_size


def test_package_manifest_matches_files(pipeline):
    folder = pipeline["package"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["model_file"] == "model.onnx" and manifest["labels"] == ["negative", "positive"]
    for name, entry in manifest["files"].items():
        assert sha256(folder / name) == entry["sha256"]
    card = (folder / "MODEL_CARD.md").read_text()
    assert manifest["data_hash"] in card and "Quantization" in card


def test_package_refuses_missing_inputs(pipeline, tmp_path):
    m = pipeline["root"] / "reports"
    with pytest.raises(PipelineError, match="missing"):
        package.run(
            pipeline["params"],
            pipeline["model"],
            tmp_path / "nothing",
            m / "prepare.json",
            m / "train.json",
            m / "evaluate.json",
            m / "quantize.json",
            tmp_path / "pkg",
        )


def test_metrics_files_hold_the_headline_of_each_report(pipeline):
    """dvc metrics show reads the metrics files: a few numbers each, every one taken from the stage's report."""

    def leaves(data: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in data.items():
            out.update(leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return out

    report_values = {step: set(map(repr, leaves(report).values())) for step, report in pipeline["reports"].items()}
    for step, headline in pipeline["metrics"].items():
        numbers = leaves(headline)
        assert 1 <= len(numbers) <= 5, (step, numbers)
        assert all(isinstance(v, (int, float)) for v in numbers.values()), (step, numbers)
        assert set(map(repr, numbers.values())) <= report_values[step], step


def test_quantize_auto_packages_the_fastest_scheme_that_passes():
    from stages.sentiment_quantize import choose

    problems = {"rowwise": [], "matmulnbits": [], "dynamic": ["not batch-invariant"], "static": ["agreement"]}
    p50 = {"rowwise": 2.5, "matmulnbits": 5.2, "dynamic": 2.2, "static": 2.4}
    assert choose("auto", problems, p50) == "rowwise"  # dynamic and static are faster but fail their gates
    assert choose("auto", {**problems, "rowwise": ["agreement 98.97 %"]}, p50) == "matmulnbits"
    assert choose("matmulnbits", problems, p50) == "matmulnbits"  # a named scheme is packaged as named
    assert choose("static", problems, p50) == "static"  # ... and its gate then fails the stage
    nothing = {"rowwise": ["a", "b"], "dynamic": ["c"], "static": ["d"]}
    assert choose("auto", nothing, p50) == "dynamic"  # none passes: the fewest problems, then the fastest
