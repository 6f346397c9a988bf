"""Print the pipeline's SST-2 figures beside the plain-Trainer baseline and the issue's targets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--reports", type=Path, required=True, help="the stages' reports folder (outputs/sentiment/reports)"
    )
    ap.add_argument("--plain", default="none")
    ap.add_argument("--wall", type=float, required=True)
    args = ap.parse_args()
    m = {k: json.loads((args.reports / f"{k}.json").read_text()) for k in ("prepare", "train", "evaluate", "quantize")}
    q, t = m["quantize"], m["train"]
    lat = q["latency_ms"]
    rows = [
        ("train rows / eval rows", f"{m['prepare']['rows']['train']} / {m['prepare']['rows']['eval']}", ""),
        ("pipeline wall time (s)", f"{args.wall:.0f}", "<= 1200"),
        ("FP32 accuracy (PyTorch)", q["accuracy"]["pytorch_fp32"], "> plain FP32"),
        ("INT8 accuracy (ONNX)", q["accuracy"]["onnx_int8"], ">= 0.88 (20k rows, 1 epoch)"),
        (f"INT8 scheme (batch-invariant: {q.get('batch_invariant', 'not measured')})", q.get("scheme", "dynamic"), ""),
        ("INT8 accuracy drop (points)", round(100 * q["accuracy_drop"], 2), "<= 0.3"),
        ("INT8/FP32 label agreement", q["agreement"], ">= 0.995 (one text per call)"),
        *[
            (f"  the same, {k.removeprefix('agreement_').replace('_', ' ')}", v, ">= 0.995")
            for k, v in q.items()
            if k.startswith("agreement_")
        ],
        ("INT8 / FP32 ONNX file size", q["int8_size_ratio"], "<= 0.30"),
        ("latency p50/p99 ms PyTorch FP32", f"{lat['pytorch_fp32']['p50']} / {lat['pytorch_fp32']['p99']}", ""),
        ("latency p50/p99 ms ONNX FP32", f"{lat['onnx_fp32']['p50']} / {lat['onnx_fp32']['p99']}", ""),
        ("latency p50/p99 ms ONNX INT8", f"{lat['onnx_int8']['p50']} / {lat['onnx_int8']['p99']}", ""),
        (
            f"INT8 speed-up vs PyTorch (p50), {q['onnx_threads']} thread(s) each",
            q["int8_speedup_vs_pytorch_p50"],
            ">= 4",
        ),
        ("train samples/s (pipeline)", t["samples_per_second"], ""),
    ]
    default = lat.get("pytorch_fp32_default_threads")
    if default:  # reports before commit 583227b measured PyTorch on its default threads only
        rows.insert(
            -1,
            (
                f"  PyTorch FP32 on its {default['threads']} default threads: p50 ms / speed-up",
                f"{default['p50']} / {q['int8_speedup_vs_pytorch_default_threads_p50']}",
                "",
            ),
        )
    if args.plain != "none":
        plain = json.loads(Path(args.plain).read_text())
        rows += [
            ("train samples/s (plain Trainer)", plain["samples_per_second"], ""),
            ("training speed ratio", round(t["samples_per_second"] / plain["samples_per_second"], 2), ">= 2"),
            ("train precision (pipeline)", t.get("precision"), ""),
            ("plain Trainer FP32 / INT8 accuracy", f"{plain['fp32_accuracy']} / {plain['int8_accuracy']}", ""),
        ]
    width = max(len(r[0]) for r in rows)
    for name, value, target in rows:
        print(f"{name:<{width}}  {str(value):<22} {target}")


if __name__ == "__main__":
    main()
