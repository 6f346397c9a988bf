"""INT8 variants of one trained classifier, side by side: what each buys in agreement, size and speed.

Issue 2 asks INT8 for >= 99 % label agreement with FP32, <= 30 % of its size and >= 4x lower single-request
latency than PyTorch; issue 5 asks the service for 8x the naive baseline's throughput, which the model's
own speed bounds. This measures, for the same model and the same eval texts:
  dynamic        the quantize stage's own export (textops.onnx_export.export_and_quantize with params.yaml):
                 per-tensor dynamic activations, per-channel INT8 weights
  dynamic_fused  onnxruntime's transformer fusions first (Attention, SkipLayerNorm, BiasGelu), then the same
                 dynamic INT8 (QAttention)
  blockwise8     weights in 8-bit blocks of 64 (MatMulNBits, accuracy_level 4: activations quantized per row
                 and block), embedding table dynamic INT8. Needs the onnx-ir package.
and prints accuracy, agreement with PyTorch FP32, size against ONNX FP32, single-request p50 (1 thread, and
2 threads spinning) against PyTorch FP32's (2 threads; and 1 thread against 1), texts/s on one thread in
length-sorted batches, and where the stage's INT8 model spends a single request, by op type.

Run: python -m bench.quantization.int8_variants --model <train's model folder> --eval <prepared/eval.parquet> [--out md]
e.g. after bench/training/sst2.sh: --model /tmp/sst2-bench.X/repo/outputs/sentiment/model
     --eval /tmp/sst2-bench.X/repo/outputs/sentiment/prepared/eval.parquet
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from bench import ROOT
from textops.inference import OnnxClassifier, TorchClassifier
from textops.params import load_params


def copy_side_files(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".onnx":
            shutil.copy(f, dst)


def dynamic_fused(fp32: Path, out: Path, num_heads: int, hidden: int) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    from onnxruntime.transformers.optimizer import optimize_model

    copy_side_files(fp32, out)
    fused = optimize_model(str(fp32 / "model.onnx"), model_type="bert", num_heads=num_heads, hidden_size=hidden)
    # The quantizer needs every tensor's type; ONNX's own shape inference stops at the contrib ops.
    typed = SymbolicShapeInference.infer_shapes(fused.model, auto_merge=True)
    onnx.save(typed, str(out / "fused.onnx"))
    quantize_dynamic(str(out / "fused.onnx"), str(out / "model.onnx"), weight_type=QuantType.QInt8, per_channel=True)
    (out / "fused.onnx").unlink()


def blockwise8(fp32: Path, out: Path, block: int = 64) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    copy_side_files(fp32, out)
    config = DefaultWeightOnlyQuantConfig(
        block_size=block, is_symmetric=True, accuracy_level=4, bits=8, op_types_to_quantize=("MatMul",)
    )
    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(fp32 / "model.onnx")),
        bits=8,
        block_size=block,
        is_symmetric=True,
        accuracy_level=4,
        algo_config=config,
        op_types_to_quantize=("MatMul",),
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(out / "weights.onnx"), False)
    # MatMulNBits quantizes no Gather at 8 bits: the embedding table (half the model) gets dynamic INT8.
    quantize_dynamic(
        str(out / "weights.onnx"), str(out / "model.onnx"), weight_type=QuantType.QInt8, op_types_to_quantize=["Gather"]
    )
    (out / "weights.onnx").unlink()


def p50_ms(predict, texts: list[str], requests: int = 300, warmup: int = 30) -> float:
    times = []
    for i in range(warmup + requests):
        started = time.perf_counter()
        predict([texts[i % len(texts)]])
        if i >= warmup:
            times.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(times, 50))


def op_profile(onnx_file: Path, tokenizer, texts: list[str], max_length: int, top: int = 8) -> list[str]:
    """Where one thread's time goes in single-text calls: kernel time per op type, from onnxruntime's profiler
    (which adds its own overhead per node, so shares matter more than the absolute figures)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(onnx_file.parent / "profile")
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    for text in texts:
        enc = tokenizer([text], truncation=True, max_length=max_length, return_tensors="np")
        session.run(["logits"], {k: v.astype(np.int64) for k, v in enc.items() if k in names})
    events = json.loads(Path(session.end_profiling()).read_text())
    by_op, nodes = Counter(), {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
            nodes.setdefault(e["args"]["op_name"], set()).add(e["name"])
    total = sum(by_op.values())
    lines = [
        f"Kernel time per single-text call, {len(texts)} calls, one thread, {sum(map(len, nodes.values()))} "
        f"nodes after onnxruntime's graph optimizations: {total / len(texts) / 1000:.2f} ms under the profiler.",
        "",
        "| op type | nodes | ms per call | share |",
        "|---|---|---|---|",
    ]
    shown = dict(by_op.most_common(top))
    for op, us in shown.items():
        lines.append(f"| {op} | {len(nodes[op])} | {us / len(texts) / 1000:.3f} | {us / total:.1%} |")
    rest = total - sum(shown.values())
    rest_nodes = sum(len(v) for op, v in nodes.items() if op not in shown)
    lines.append(
        f"| {len(by_op) - len(shown)} other op types | {rest_nodes} | {rest / len(texts) / 1000:.3f} | "
        f"{rest / total:.1%} |"
    )
    return lines


def texts_per_s(classifier: OnnxClassifier, texts: list[str], batch: int) -> float:
    started = time.perf_counter()
    classifier.predict_proba(texts, batch_size=batch)
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="train's FP32 model folder")
    ap.add_argument("--eval", type=Path, required=True, help="prepare's eval.parquet")
    ap.add_argument("--out", type=Path, help="also write the report here (Markdown)")
    args = ap.parse_args()
    import torch
    from transformers import AutoConfig

    from textops.onnx_export import choose_config, cpu_flags, export_and_quantize

    params = load_params(ROOT / "params.yaml")
    q, max_length = params.sentiment.quantize, params.sentiment.model.max_length
    frame = pd.read_parquet(args.eval)
    texts = list(frame["text"])
    labels = np.array([params.sentiment.labels.index(y) for y in frame["label"]])
    config = AutoConfig.from_pretrained(args.model)
    work = Path(tempfile.mkdtemp(prefix="int8-variants-"))
    export_and_quantize(
        args.model,
        work / "fp32",
        work / "dynamic",
        choose_config(q.config, cpu_flags(), platform.machine()),
        q.per_channel,
        q.exclude_nodes,
        q.optimize,
    )
    (work / "dynamic" / "model_quantized.onnx").rename(work / "dynamic" / "model.onnx")
    builders = {
        "dynamic_fused": lambda out: dynamic_fused(work / "fp32", out, config.num_attention_heads, config.hidden_size),
        "blockwise8": lambda out: blockwise8(work / "fp32", out),
    }
    notes = []
    for name, build in builders.items():
        try:
            build(work / name)
        except ImportError as error:  # blockwise8 needs onnx-ir
            notes.append(f"{name} skipped: {error}")

    torch.set_num_threads(2)
    reference = TorchClassifier(args.model, max_length)
    torch_probs = reference.predict_proba(texts)
    torch_p50 = p50_ms(reference.predict_proba, texts)
    torch.set_num_threads(1)
    torch_p50_1t = p50_ms(reference.predict_proba, texts)
    fp32_size = (work / "fp32" / "model.onnx").stat().st_size
    rows = []
    for name in ["fp32", "dynamic", "dynamic_fused", "blockwise8"]:
        if not (work / name / "model.onnx").is_file():
            continue
        one = OnnxClassifier(work / name, "model.onnx", max_length, threads=1)
        two = OnnxClassifier(work / name, "model.onnx", max_length, threads=2, spin=True)
        probs, batched = one.predict_proba(texts), one.predict_proba(texts, batch_size=64)
        p1, p2 = p50_ms(one.predict_proba, texts), p50_ms(two.predict_proba, texts)
        rows.append(
            {
                "variant": f"onnx {name}",
                "accuracy": (probs.argmax(1) == labels).mean(),
                "agreement": (probs.argmax(1) == torch_probs.argmax(1)).mean(),
                "agreement_b64": (batched.argmax(1) == torch_probs.argmax(1)).mean(),
                "max_prob_diff": np.abs(probs - torch_probs).max(),
                "size": (work / name / "model.onnx").stat().st_size / fp32_size,
                "p50_1t": p1,
                "p50_2t": p2,
                "x_pytorch": torch_p50 / min(p1, p2),
                "x_pytorch_1t": torch_p50_1t / p1,
                "tps_b1": texts_per_s(one, texts, 1),
                "tps_b16": texts_per_s(one, texts, 16),
            }
        )
    lines = [
        f"# INT8 variants, {datetime.now():%Y-%m-%d %H:%M}",
        "",
        f"Command: `python -m bench.quantization.int8_variants --model {args.model} --eval {args.eval}`",
        "",
        f"{len(texts)} eval texts, {config.num_hidden_layers} layers x {config.hidden_size}. PyTorch FP32 "
        f"accuracy {(torch_probs.argmax(1) == labels).mean():.4f}, single-request p50 {torch_p50:.2f} ms on 2 "
        f"threads, {torch_p50_1t:.2f} ms on 1. p50 includes tokenization; 2t = two intra-op threads, spinning. "
        "texts/s: one thread, length-sorted batches of 1 and 16. Agreement with PyTorch's labels: one text per "
        "ONNX call (as served), and in length-sorted batches of 64.",
        "",
        "| variant | accuracy | agreement | agreement b64 | max prob diff | size / ONNX FP32 | p50 ms 1t | p50 ms 2t | "
        "PyTorch 2t / best | PyTorch 1t / 1t | texts/s b1 | texts/s b16 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['accuracy']:.4f} | {r['agreement']:.4f} | {r['agreement_b64']:.4f} | "
            f"{r['max_prob_diff']:.3f} | "
            f"{r['size']:.3f} | {r['p50_1t']:.2f} | {r['p50_2t']:.2f} | {r['x_pytorch']:.2f}x | "
            f"{r['x_pytorch_1t']:.2f}x | "
            f"{r['tps_b1']:.0f} | {r['tps_b16']:.0f} |"
        )
    lines += [""] + notes + ["", "## The stage's INT8 model (dynamic), by op type", ""]
    lines += op_profile(work / "dynamic" / "model.onnx", reference.tokenizer, texts[:200], max_length)
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
