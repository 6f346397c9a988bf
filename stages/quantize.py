"""quantize: Optimum ONNX export, onnxruntime dynamic INT8, and an INT8-versus-FP32 gate.

In:  --model (train's out), --prepared/eval.parquet.
Out: --fp32 (model.onnx + tokenizer), --int8 (model_quantized.onnx + tokenizer),
     --metrics (accuracy of PyTorch FP32, ONNX FP32 and ONNX INT8 on the whole eval split, label
     agreement, largest probability difference, file sizes, single-request latency p50/p99 of all
     three measured side by side on the same quantize.onnx_threads cores, and PyTorch's on its default
     threads). ONNX runs one text per call, as served; the INT8 agreement of
     batches of 64 is reported beside (agreement_batch_64), as dynamic INT8 is batch-dependent.
Params: model.max_length, quantize.*.
Gate: INT8 accuracy drop over quantize.max_accuracy_drop, or agreement under quantize.min_agreement.
"""
from __future__ import annotations

import logging
import platform
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from textops import cli
from textops.errors import GateFailed
from textops.inference import OnnxClassifier, TorchClassifier
from textops.modeling import torch_threads
from textops.params import Params
from textops.tracking import ModelRun, numeric

log = logging.getLogger("textops.quantize")
BATCHED = 64  # a bulk caller's batch (the size the gate used before), for the INT8 agreement reported beside
LATENCY_BLOCK = 25  # single requests per backend before the next one takes its turn


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith(("flags", "Features")) for flag in line.split()}


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
        exporter="onnx", model_type=classifier.config.model_type, task="text-classification",
        library_name="transformers")(classifier.config)
    out.mkdir(parents=True, exist_ok=True)
    export(classifier, onnx_config, out / "model.onnx", opset=onnx_config.DEFAULT_ONNX_OPSET)
    classifier.config.save_pretrained(out)


def export_and_quantize(model: Path, fp32: Path, int8: Path, config_name: str, per_channel: bool,
                        exclude: list[str], optimize: bool) -> list[str]:
    """Optimum export to fp32/, then (optionally O1 graph fusions and) dynamic INT8 into int8/."""
    import tempfile

    from optimum.onnxruntime import ORTOptimizer, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig, AutoQuantizationConfig
    from transformers import AutoTokenizer

    export_onnx(model, fp32)
    with tempfile.TemporaryDirectory() as scratch:
        source, file_name = fp32, "model.onnx"
        if optimize:
            # O1 (constant folding, redundant-node removal, basic fusions) is exact in fp32 and made
            # INT8 single requests ~25% faster here; O2's fused attention breaks the quantizer.
            ORTOptimizer.from_pretrained(fp32).optimize(AutoOptimizationConfig.O1(), scratch)
            source, file_name = Path(scratch), "model_optimized.onnx"
        excluded = nodes_matching(source / file_name, exclude)
        config = getattr(AutoQuantizationConfig, config_name)(is_static=False, per_channel=per_channel,
                                                              nodes_to_exclude=excluded)
        ORTQuantizer.from_pretrained(source, file_name=file_name).quantize(save_dir=int8, quantization_config=config)
    produced = [p for p in int8.glob("*.onnx")]
    if produced and produced[0].name != "model_quantized.onnx":
        produced[0].rename(int8 / "model_quantized.onnx")
    for folder in (fp32, int8):
        AutoTokenizer.from_pretrained(model).save_pretrained(folder)
    return excluded


def latency_ms(predictors: dict, texts: list[str], requests: int, warmup: int, block: int = LATENCY_BLOCK) -> dict:
    """Single-text requests, the backends taking turns in blocks of `block` requests: within its block a model
    is hot in the caches, as in a service that runs that one model, and the turns spread machine drift over
    all of them. (Turns of one request let each model evict the others: on SST-2's model INT8 took 3.6 ms
    instead of 2.8, PyTorch 10.8 instead of 9.4.)"""
    for predict in predictors.values():
        for i in range(warmup):
            predict([texts[i % len(texts)]])
    timings = {name: [] for name in predictors}
    for start in range(0, requests, block):
        for name, predict in predictors.items():
            predict([texts[start % len(texts)]])  # untimed: brings this model's weights back into the caches
            for i in range(start, min(start + block, requests)):
                started = time.perf_counter()
                predict([texts[i % len(texts)]])
                timings[name].append((time.perf_counter() - started) * 1000)
    return {name: {"p50": round(float(np.percentile(t, 50)), 3), "p99": round(float(np.percentile(t, 99)), 3)}
            for name, t in timings.items()}


def latency(torch_model: TorchClassifier, onnx_fp32: OnnxClassifier, onnx_int8: OnnxClassifier, texts: list[str],
            threads: int, requests: int, warmup: int) -> dict:
    """The three backends side by side on the same `threads` cores (quantize.onnx_threads), and PyTorch again
    on its default threads (all cores), so a reader sees the speed-up both ways."""
    import torch

    default = latency_ms({"pytorch_fp32_default_threads": torch_model.predict_proba}, texts, requests, warmup)
    default["pytorch_fp32_default_threads"]["threads"] = torch.get_num_threads()
    with torch_threads(threads):
        same = latency_ms({"pytorch_fp32": torch_model.predict_proba, "onnx_fp32": onnx_fp32.predict_proba,
                           "onnx_int8": onnx_int8.predict_proba}, texts, requests, warmup)
    return {**same, **default}


def compare(torch_probs: np.ndarray, onnx_probs: np.ndarray, int8_probs: np.ndarray, labels: np.ndarray) -> dict:
    acc = {name: round(float((p.argmax(1) == labels).mean()), 4)
           for name, p in (("pytorch_fp32", torch_probs), ("onnx_fp32", onnx_probs), ("onnx_int8", int8_probs))}
    return {"accuracy": acc,
            "accuracy_drop": round(acc["pytorch_fp32"] - acc["onnx_int8"], 4),
            "agreement": round(float((int8_probs.argmax(1) == torch_probs.argmax(1)).mean()), 4),
            "max_prob_diff": round(float(np.abs(int8_probs - torch_probs).max()), 4),
            "onnx_fp32_max_prob_diff": round(float(np.abs(onnx_probs - torch_probs).max()), 5)}


def gate(report: dict, max_drop: float, min_agreement: float) -> list[str]:
    problems = []
    if report["accuracy_drop"] > max_drop:
        problems.append(f"INT8 accuracy {report['accuracy']['onnx_int8']} is {report['accuracy_drop']:.4f} below FP32 "
                        f"{report['accuracy']['pytorch_fp32']}, over quantize.max_accuracy_drop={max_drop}")
    if report["agreement"] < min_agreement:
        problems.append(f"INT8 and FP32 agree on {report['agreement']:.2%} of eval labels, under "
                        f"quantize.min_agreement={min_agreement}")
    return problems


def run(params: Params, model: Path, prepared: Path, fp32: Path, int8: Path, metrics: Path) -> None:
    q = params.quantize
    config_name = choose_config(q.config, cpu_flags(), platform.machine())
    fp32_dir, int8_dir = fp32, int8
    excluded = export_and_quantize(model, fp32, int8, config_name, q.per_channel, q.exclude_nodes, q.optimize)
    frame = pd.read_parquet(prepared / "eval.parquet")
    texts = list(frame["text"])
    labels = np.array([params.labels.index(y) for y in frame["label"]])
    torch_model = TorchClassifier(model, params.model.max_length)
    onnx_fp32 = OnnxClassifier(fp32_dir, "model.onnx", params.model.max_length, q.onnx_threads)
    onnx_int8 = OnnxClassifier(int8_dir, "model_quantized.onnx", params.model.max_length, q.onnx_threads)
    torch_probs = torch_model.predict_proba(texts)
    # ONNX one text per call, as the service runs it (serve.inference_batch_size); the INT8 labels of a
    # batched caller are reported beside, since dynamic INT8 lets a batch's texts sway each other.
    report = compare(torch_probs, onnx_fp32.predict_proba(texts), onnx_int8.predict_proba(texts), labels)
    batched = onnx_int8.predict_proba(texts, BATCHED).argmax(1)
    report[f"agreement_batch_{BATCHED}"] = round(float((batched == torch_probs.argmax(1)).mean()), 4)
    sizes = {"pytorch_fp32": (model / "model.safetensors").stat().st_size,
             "onnx_fp32": (fp32_dir / "model.onnx").stat().st_size,
             "onnx_int8": (int8_dir / "model_quantized.onnx").stat().st_size}
    report.update({
        "examples": len(texts), "quantization_config": config_name, "per_channel": q.per_channel,
        "excluded_nodes": len(excluded), "onnx_threads": q.onnx_threads, "optimized": q.optimize,
        "size_mb": {k: round(v / 2**20, 2) for k, v in sizes.items()},
        "int8_size_ratio": round(sizes["onnx_int8"] / sizes["onnx_fp32"], 4),
        "latency_ms": latency(torch_model, onnx_fp32, onnx_int8, texts, q.onnx_threads, q.latency_requests,
                              q.latency_warmup),
    })
    lat = report["latency_ms"]
    report["int8_speedup_vs_pytorch_p50"] = round(lat["pytorch_fp32"]["p50"] / lat["onnx_int8"]["p50"], 2)
    report["int8_speedup_vs_pytorch_default_threads_p50"] = round(
        lat["pytorch_fp32_default_threads"]["p50"] / lat["onnx_int8"]["p50"], 2)
    cli.write_json(metrics, report)
    log.info("%s", report)
    problems = gate(report, q.max_accuracy_drop, q.min_agreement)
    tracker = ModelRun(params.tracking.enabled, params.tracking.experiment).reopen(model)
    tracker.log_metrics(numeric("quantize", report))
    tracker.log_artifact(metrics, "reports")
    tracker.set_tags({"int8_gate": "failed" if problems else "passed"})
    if problems:
        raise GateFailed("quantization gate failed:\n  - " + "\n  - ".join(problems))


def main(argv=None) -> int:
    return cli.main("quantize", __doc__, ["model", "prepared", "fp32", "int8", "metrics"], run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
