"""The packaged INT8 ONNX model against the FP32 PyTorch model it came from (and its behaviour)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import run_all_stages, sentences, write_tsv
from textops.inference import OnnxClassifier, TorchClassifier


@pytest.fixture(scope="module")
def built(tmp_path_factory, params_for):
    root = tmp_path_factory.mktemp("int8")
    params = params_for(write_tsv(root / "reviews.tsv", sentences(80)), tracking__enabled=False)
    return run_all_stages(root, params)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [t for t, _ in sentences(40, seed=99)]


def test_onnx_fp32_export_matches_pytorch(built, texts):
    torch_probs = TorchClassifier(built["model"], 16).predict_proba(texts)
    onnx_probs = OnnxClassifier(built["fp32"], "model.onnx", 16).predict_proba(texts)
    assert np.abs(torch_probs - onnx_probs).max() < 1e-4


def test_int8_package_agrees_with_fp32(built, texts):
    torch_probs = TorchClassifier(built["model"], 16).predict_proba(texts)
    int8_probs = OnnxClassifier(built["package"], "model.onnx").predict_proba(texts)
    agreement = (torch_probs.argmax(1) == int8_probs.argmax(1)).mean()
    assert agreement >= 0.95
    assert np.abs(torch_probs - int8_probs).max() < 0.15


def test_package_reads_its_max_length_from_the_manifest(built):
    assert OnnxClassifier(built["package"], "model.onnx").max_length == 16


def test_onnx_runs_one_text_per_call_unless_asked(built, texts):
    """Dynamic INT8 scales a call's activations together: the default is the service's one text per
    call, so the package, the pyfunc and the quantize gate give each text the answer the service gives."""
    model = OnnxClassifier(built["package"], "model.onnx")
    one_by_one = np.vstack([model.predict_proba([t]) for t in texts])
    assert np.array_equal(model.predict_proba(texts), one_by_one)
    batched = model.predict_proba(texts, batch_size=len(texts))
    assert not np.array_equal(batched, one_by_one)  # why the default matters: neighbours move the numbers
    assert np.abs(batched - one_by_one).max() < 0.15


def test_direction_and_invariance(built):
    """Behaviour: sentiment words move the label; extra spaces and case do not."""
    model = OnnxClassifier(built["package"], "model.onnx")
    out = model.classify(
        [
            "the film was good and wonderful",
            "the film was awful and dull",
            "THE FILM WAS GOOD AND WONDERFUL",
            "the  film   was good and wonderful",
        ]
    )
    assert out[0]["label"] == "positive" and out[1]["label"] == "negative"
    assert out[2]["label"] == out[3]["label"] == "positive"
    assert sum(out[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
