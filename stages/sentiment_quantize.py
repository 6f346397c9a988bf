"""sentiment_quantize: Optimum ONNX export, onnxruntime dynamic INT8, and an INT8-versus-FP32 gate.

In:  --model (train's out), --prepared/eval.parquet.
Out: --fp32 (model.onnx + tokenizer), --int8 (model_quantized.onnx + tokenizer),
     --report-file (accuracy of PyTorch FP32, ONNX FP32 and ONNX INT8 on the whole eval split, label
     agreement, largest probability difference, file sizes, single-request latency p50/p99 of all
     three measured side by side on the same sentiment.quantize.onnx_threads cores, and PyTorch's on its default
     threads). ONNX runs one text per call, as served; the INT8 agreement of
     batches of 64 is reported beside (agreement_batch_64), as dynamic INT8 is batch-dependent.
     --metrics: the report's headline numbers (dvc metrics show).
Params: sentiment.model.max_length, sentiment.quantize.*.
Gate: INT8 accuracy drop over sentiment.quantize.max_accuracy_drop, or agreement under sentiment.quantize.min_agreement.
"""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

from textops import cli
from textops.errors import GateFailed
from textops.inference import OnnxClassifier, TorchClassifier
from textops.modeling import torch_threads
from textops.onnx_export import INT8_FILE, choose_config, cpu_flags, export_and_quantize
from textops.params import Params
from textops.tracking import ModelRun, numeric

log = logging.getLogger("textops.quantize")
BATCHED = 64  # a bulk caller's batch (the size the gate used before), for the INT8 agreement reported beside
LATENCY_BLOCK = 25  # single requests per backend before the next one takes its turn


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
    return {
        name: {"p50": round(float(np.percentile(t, 50)), 3), "p99": round(float(np.percentile(t, 99)), 3)}
        for name, t in timings.items()
    }


def latency(
    torch_model: TorchClassifier,
    onnx_fp32: OnnxClassifier,
    onnx_int8: OnnxClassifier,
    texts: list[str],
    threads: int,
    requests: int,
    warmup: int,
) -> dict:
    """The three backends side by side on the same `threads` cores (sentiment.quantize.onnx_threads), and PyTorch again
    on its default threads (all cores), so a reader sees the speed-up both ways."""
    import torch

    default = latency_ms({"pytorch_fp32_default_threads": torch_model.predict_proba}, texts, requests, warmup)
    default["pytorch_fp32_default_threads"]["threads"] = torch.get_num_threads()
    with torch_threads(threads):
        same = latency_ms(
            {
                "pytorch_fp32": torch_model.predict_proba,
                "onnx_fp32": onnx_fp32.predict_proba,
                "onnx_int8": onnx_int8.predict_proba,
            },
            texts,
            requests,
            warmup,
        )
    return {**same, **default}


def compare(torch_probs: np.ndarray, onnx_probs: np.ndarray, int8_probs: np.ndarray, labels: np.ndarray) -> dict:
    acc = {
        name: round(float((p.argmax(1) == labels).mean()), 4)
        for name, p in (("pytorch_fp32", torch_probs), ("onnx_fp32", onnx_probs), ("onnx_int8", int8_probs))
    }
    return {
        "accuracy": acc,
        "accuracy_drop": round(acc["pytorch_fp32"] - acc["onnx_int8"], 4),
        "agreement": round(float((int8_probs.argmax(1) == torch_probs.argmax(1)).mean()), 4),
        "max_prob_diff": round(float(np.abs(int8_probs - torch_probs).max()), 4),
        "onnx_fp32_max_prob_diff": round(float(np.abs(onnx_probs - torch_probs).max()), 5),
    }


def gate(report: dict, max_drop: float, min_agreement: float) -> list[str]:
    problems = []
    if report["accuracy_drop"] > max_drop:
        problems.append(
            f"INT8 accuracy {report['accuracy']['onnx_int8']} is {report['accuracy_drop']:.4f} below FP32 "
            f"{report['accuracy']['pytorch_fp32']}, over sentiment.quantize.max_accuracy_drop={max_drop}"
        )
    if report["agreement"] < min_agreement:
        problems.append(
            f"INT8 and FP32 agree on {report['agreement']:.2%} of eval labels, under "
            f"sentiment.quantize.min_agreement={min_agreement}"
        )
    return problems


def headline(report: dict) -> dict:
    """The INT8 model against FP32, for `dvc metrics show` (key names shared with story_quantize's)."""
    return {
        "int8_accuracy": report["accuracy"]["onnx_int8"],
        "agreement": report["agreement"],
        "latency_ms_p50": report["latency_ms"]["onnx_int8"]["p50"],
        "int8_speedup": report["int8_speedup_vs_pytorch_p50"],
        "size_mb": report["size_mb"]["onnx_int8"],
    }


def run(params: Params, model: Path, prepared: Path, fp32: Path, int8: Path, metrics: Path, report_file: Path) -> None:
    q = params.sentiment.quantize
    config_name = choose_config(q.config, cpu_flags(), platform.machine())
    fp32_dir, int8_dir = fp32, int8
    excluded = export_and_quantize(model, fp32, int8, config_name, q.per_channel, q.exclude_nodes, q.optimize)
    frame = pd.read_parquet(prepared / "eval.parquet")
    texts = list(frame["text"])
    labels = np.array([params.sentiment.labels.index(y) for y in frame["label"]])
    torch_model = TorchClassifier(model, params.sentiment.model.max_length)
    onnx_fp32 = OnnxClassifier(fp32_dir, "model.onnx", params.sentiment.model.max_length, q.onnx_threads)
    onnx_int8 = OnnxClassifier(int8_dir, INT8_FILE, params.sentiment.model.max_length, q.onnx_threads)
    torch_probs = torch_model.predict_proba(texts)
    # ONNX one text per call, as the service runs it (sentiment.serve.inference_batch_size); the INT8 labels of a
    # batched caller are reported beside, since dynamic INT8 lets a batch's texts sway each other.
    report = compare(torch_probs, onnx_fp32.predict_proba(texts), onnx_int8.predict_proba(texts), labels)
    batched = onnx_int8.predict_proba(texts, BATCHED).argmax(1)
    report[f"agreement_batch_{BATCHED}"] = round(float((batched == torch_probs.argmax(1)).mean()), 4)
    sizes = {
        "pytorch_fp32": (model / "model.safetensors").stat().st_size,
        "onnx_fp32": (fp32_dir / "model.onnx").stat().st_size,
        "onnx_int8": (int8_dir / INT8_FILE).stat().st_size,
    }
    report.update(
        {
            "examples": len(texts),
            "quantization_config": config_name,
            "per_channel": q.per_channel,
            "excluded_nodes": len(excluded),
            "onnx_threads": q.onnx_threads,
            "optimized": q.optimize,
            "size_mb": {k: round(v / 2**20, 2) for k, v in sizes.items()},
            "int8_size_ratio": round(sizes["onnx_int8"] / sizes["onnx_fp32"], 4),
            "latency_ms": latency(
                torch_model, onnx_fp32, onnx_int8, texts, q.onnx_threads, q.latency_requests, q.latency_warmup
            ),
        }
    )
    lat = report["latency_ms"]
    report["int8_speedup_vs_pytorch_p50"] = round(lat["pytorch_fp32"]["p50"] / lat["onnx_int8"]["p50"], 2)
    report["int8_speedup_vs_pytorch_default_threads_p50"] = round(
        lat["pytorch_fp32_default_threads"]["p50"] / lat["onnx_int8"]["p50"], 2
    )
    cli.write_results(report_file, metrics, report, headline(report))
    log.info("%s", report)
    problems = gate(report, q.max_accuracy_drop, q.min_agreement)
    tracker = ModelRun(params.sentiment.tracking.enabled, params.sentiment.tracking.experiment).reopen(model)
    tracker.log_metrics(numeric("quantize", report))
    tracker.log_artifact(report_file, "reports")
    tracker.set_tags({"int8_gate": "failed" if problems else "passed"})
    if problems:
        raise GateFailed("quantization gate failed:\n  - " + "\n  - ".join(problems))


def main(argv=None) -> int:
    return cli.main(
        "sentiment_quantize", __doc__, ["model", "prepared", "fp32", "int8", "metrics", "report-file"], run, argv
    )


if __name__ == "__main__":
    raise SystemExit(main())
