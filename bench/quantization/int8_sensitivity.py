r"""Which encoder layer's INT8 moves a classifier's answers most: the quantize stage's export, once as the stage
does it and once per layer with that layer kept in FP32.

Dynamic INT8 scales each activation tensor as a whole, so one outlier token or channel coarsens every other
value in it; a layer that carries such outliers shows up here as the one whose FP32 copy removes the most
flips. Prints, per variant, the labels that differ from PyTorch FP32, the mean and largest probability
difference, and the INT8 file's size against ONNX FP32 (issue 2's budget: 30 %).

Run: python -m bench.quantization.int8_sensitivity --model <train's model folder> --eval <prepared/eval.parquet>
     [--also 'layer\.1/(intermediate|output)/dense' ...]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from bench import ROOT
from textops.inference import OnnxClassifier, TorchClassifier
from textops.onnx_export import choose_config, cpu_flags, export_and_quantize
from textops.params import load_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="train's FP32 model folder")
    ap.add_argument("--eval", type=Path, required=True, help="prepare's eval.parquet")
    ap.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="REGEX",
        help="one more variant: these node names in FP32 besides the stage's (repeatable)",
    )
    args = ap.parse_args()
    from transformers import AutoConfig

    params = load_params(ROOT / "params.yaml")
    q, max_length = params.sentiment.quantize, params.sentiment.model.max_length
    texts = list(pd.read_parquet(args.eval)["text"])
    reference = TorchClassifier(args.model, max_length).predict_proba(texts)
    config_name = choose_config(q.config, cpu_flags(), platform.machine())
    layers = AutoConfig.from_pretrained(args.model).num_hidden_layers
    # BERT and DistilBERT both name a block's nodes .../layer.N/...
    variants = {
        "the stage's": q.exclude_nodes,
        **{f"layer {n} in FP32": [*q.exclude_nodes, rf"layer\.{n}/"] for n in range(layers)},
        **{f"{regex} in FP32": [*q.exclude_nodes, regex] for regex in args.also},
    }
    print(
        f"{len(texts)} eval texts, {config_name}, per-channel {q.per_channel}, the stage's exclusions "
        f"{q.exclude_nodes}\n"
    )
    print("| variant | nodes kept in FP32 | labels differing | mean prob diff | max prob diff | size / ONNX FP32 |")
    print("|---|---|---|---|---|---|")
    for name, exclude in variants.items():
        with tempfile.TemporaryDirectory() as work:
            fp32, int8 = Path(work) / "fp32", Path(work) / "int8"
            kept = export_and_quantize(args.model, fp32, int8, config_name, q.per_channel, exclude, q.optimize)
            probs = OnnxClassifier(int8, "model_quantized.onnx", max_length, 1).predict_proba(texts)
            size = (int8 / "model_quantized.onnx").stat().st_size / (fp32 / "model.onnx").stat().st_size
        diff = np.abs(probs - reference)
        print(
            f"| {name} | {len(kept)} | {int((probs.argmax(1) != reference.argmax(1)).sum())} | {diff.mean():.4f} | "
            f"{diff.max():.3f} | {size:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
