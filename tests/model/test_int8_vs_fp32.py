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


SCHEMES = ("dynamic", "static", "matmulnbits", "rowwise")


@pytest.fixture(scope="module")
def schemes(built, tmp_path_factory, params_for) -> dict:
    """Every INT8 scheme of the tiny model's ONNX export, built as the quantize stage builds them."""
    from transformers import AutoTokenizer

    from textops.quantization import build

    q = params_for(write_tsv(tmp_path_factory.mktemp("p") / "r.tsv", sentences(8))).sentiment.quantize
    tokenizer = AutoTokenizer.from_pretrained(built["fp32"])
    calibration = [t for t, _ in sentences(40, seed=7)]
    root = tmp_path_factory.mktemp("schemes")
    for name in SCHEMES:
        build(name, built["fp32"], root / name, q, tokenizer, calibration, 16)
    return {name: OnnxClassifier(root / name, "model_quantized.onnx", 16) for name in SCHEMES}


def test_onnx_runs_one_text_per_call_unless_asked(schemes, texts):
    """Dynamic INT8 scales a call's activations together: the default is the service's one text per
    call, so the package, the pyfunc and the quantize gate give each text the answer the service gives."""
    model = schemes["dynamic"]
    one_by_one = np.vstack([model.predict_proba([t]) for t in texts])
    assert np.array_equal(model.predict_proba(texts), one_by_one)
    batched = model.predict_proba(texts, batch_size=len(texts))
    assert not np.array_equal(batched, one_by_one)  # why the default matters: neighbours move the numbers
    assert np.abs(batched - one_by_one).max() < 0.15


@pytest.mark.parametrize("scheme", ["static", "matmulnbits", "rowwise"])
def test_batch_invariant_schemes_answer_a_text_the_same_alone_batched_and_padded(schemes, texts, scheme):
    from textops.quantization import invariance

    model = schemes[scheme]
    one_by_one = np.vstack([model.predict_proba([t]) for t in texts])
    assert np.array_equal(model.predict_proba(texts, batch_size=8), one_by_one)  # length-sorted batches
    longest = sorted(texts, key=len)[-7:]
    beside_long = np.vstack([model.predict_proba([t, *longest], batch_size=8)[:1] for t in texts])
    assert np.array_equal(beside_long, one_by_one)  # padded up to the longest texts
    assert invariance(model.predict_proba, texts, 8) == {"length_sorted": 0.0, "padded": 0.0, "labels_changed": 0}


def test_the_invariance_check_sees_dynamic_int8_move(schemes, texts):
    from textops.quantization import invariance

    found = invariance(schemes["dynamic"].predict_proba, texts, 8)
    assert found["length_sorted"] > 1e-4 and found["padded"] > 1e-4


def test_the_packaged_default_is_batch_invariant(built, texts):
    model = OnnxClassifier(built["package"], "model.onnx")
    assert model.batch_invariant  # recorded in the manifest from the quantize stage's measurement
    one_by_one = np.vstack([model.predict_proba([t]) for t in texts])
    assert np.array_equal(model.predict_proba(texts, batch_size=len(texts)), one_by_one)


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
