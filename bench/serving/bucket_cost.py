"""What a gathered batch costs per text on one thread, by how the service cuts it into ONNX calls.

The batcher gathers random texts; the service sorts them by token length and cuts them into calls of up to
serve.inference_batch_size texts, and also at serve.max_padding. This times, in process, random groups of
--group eval texts through the packaged model: one text per call, calls of 4 and of --group padded to the
longest, and calls cut at 10 % and 25 % padding, in turns, --repeats times.

Run: python -m bench.serving.bucket_cost --package <run>/outputs/sentiment/package --eval <run>/.../eval.parquet
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from textops.inference import OnnxClassifier


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--package", type=Path, required=True, help="a package folder (model.onnx, tokenizer)")
    ap.add_argument("--eval", type=Path, required=True, help="prepare's eval.parquet")
    ap.add_argument("--group", type=int, default=16)
    ap.add_argument("--groups", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    model = OnnxClassifier(args.package, "model.onnx", threads=1)
    texts = list(pd.read_parquet(args.eval)["text"])
    rng = np.random.default_rng(0)
    groups = [list(rng.choice(texts, args.group)) for _ in range(args.groups)]
    ways = {
        "one text per call": (1, None),
        "calls of 4, padded to the longest": (4, None),
        f"calls of {args.group}, padded to the longest": (args.group, None),
        "cut at 10 % padding": (args.group, 0.10),
        "cut at 25 % padding": (args.group, 0.25),
    }
    print(f"{args.package}: batch-invariant {model.batch_invariant}; ms per text, one thread")
    for repeat in range(args.repeats):
        for name, (size, padding) in ways.items():
            started = time.perf_counter()
            for group in groups:
                model.predict_proba(group, size, padding)
            per_text = (time.perf_counter() - started) / (args.groups * args.group) * 1000
            print(f"repeat {repeat}  {name:<36} {per_text:.3f}")


if __name__ == "__main__":
    main()
