"""ONNX export and dynamic INT8, shared by both quantize stages: the CPU preset and node exclusions."""

from __future__ import annotations

import re
from pathlib import Path

from textops.atomic import atomic_dir
from textops.modeling import cpu_flags  # noqa: F401  (the quantize stages and bench/ import it from here)

MODEL_FILE = "model.onnx"  # what Optimum's exporter writes, and the packaged model's name
INT8_FILE = "model_quantized.onnx"  # what ORTQuantizer writes


def choose_config(requested: str, flags: set[str], machine: str) -> str:
    """The dynamic-quantization preset that fits this CPU (or the one params name)."""
    if requested != "auto":
        return requested
    if machine.lower() in ("aarch64", "arm64"):
        return "arm64"
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


def nodes_matching(onnx_file: Path, patterns: list[str]) -> list[str]:
    import onnx

    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    return [n.name for n in graph.node if any(re.search(p, n.name) for p in patterns)]


def export_onnx(model: Path, out: Path) -> None:
    """Optimum's ONNX export of the trained classifier (either head) to out/model.onnx, with its config.
    Through the exporter itself rather than ORTModel's export=True, which rebuilds the model with
    AutoModelForSequenceClassification and would drop a mean-pooled head."""
    from optimum.exporters.onnx import export
    from optimum.exporters.tasks import TasksManager

    from textops.modeling import load_trained

    classifier = load_trained(model)
    onnx_config = TasksManager.get_exporter_config_constructor(
        exporter="onnx",
        model_type=classifier.config.model_type,
        task="text-classification",
        library_name="transformers",
    )(classifier.config)
    out.mkdir(parents=True, exist_ok=True)
    export(classifier, onnx_config, out / "model.onnx", opset=onnx_config.DEFAULT_ONNX_OPSET)
    classifier.config.save_pretrained(out)


def export_and_quantize(
    model: Path, fp32: Path, int8: Path, config_name: str, per_channel: bool, exclude: list[str], optimize: bool
) -> list[str]:
    """Optimum export to fp32/, then (optionally O1 graph fusions and) dynamic INT8 into int8/. Each folder
    replaces the old one only once both are complete (textops.atomic)."""
    from transformers import AutoTokenizer

    with atomic_dir(fp32) as fp32_tmp, atomic_dir(int8) as int8_tmp:
        export_onnx(model, fp32_tmp)
        excluded = quantize(fp32_tmp, int8_tmp, config_name, per_channel, exclude, optimize)
        for folder in (fp32_tmp, int8_tmp):
            AutoTokenizer.from_pretrained(model).save_pretrained(folder)
    return excluded


def quantize(
    fp32: Path, int8: Path, config_name: str, per_channel: bool, exclude: list[str], optimize: bool
) -> list[str]:
    """Dynamic INT8 of fp32/model.onnx into int8/model_quantized.onnx; returns the node names kept in FP32."""
    import tempfile

    from optimum.onnxruntime import ORTOptimizer, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig, AutoQuantizationConfig

    with tempfile.TemporaryDirectory() as scratch:
        source, file_name = fp32, "model.onnx"
        if optimize:
            # O1 (constant folding, redundant-node removal, basic fusions) is exact in fp32 and made
            # INT8 single requests ~25% faster here; O2's fused attention breaks the quantizer.
            ORTOptimizer.from_pretrained(fp32).optimize(AutoOptimizationConfig.O1(), scratch)
            source, file_name = Path(scratch), "model_optimized.onnx"
        excluded = nodes_matching(source / file_name, exclude)
        config = getattr(AutoQuantizationConfig, config_name)(
            is_static=False, per_channel=per_channel, nodes_to_exclude=excluded
        )
        ORTQuantizer.from_pretrained(source, file_name=file_name).quantize(save_dir=int8, quantization_config=config)
    produced = [p for p in int8.glob("*.onnx")]
    if produced and produced[0].name != INT8_FILE:
        produced[0].rename(int8 / INT8_FILE)
    return excluded
