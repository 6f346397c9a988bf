"""Where one thread's time goes in a packaged ONNX classifier's single-text calls, by op type (onnxruntime's
profiler), beside the FP32 export: which nodes an INT8 scheme adds and what they cost.

Run: python -m bench.quantization.op_profile --package <run>/outputs/sentiment/package
       --fp32 <run>/outputs/sentiment/onnx/fp32/model.onnx --eval <run>/outputs/sentiment/prepared/eval.parquet
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from bench.quantization.int8_variants import op_profile


def eval_texts(path: Path) -> list[str]:
    """The texts of a prepared eval split, or a clear error for any other file."""
    if path.suffix != ".parquet" or not path.is_file():
        raise SystemExit(f"{path}: not a parquet file; pass <run>/outputs/sentiment/prepared/eval.parquet")
    frame = pd.read_parquet(path)
    if "text" not in frame:
        raise SystemExit(f"{path}: no `text` column (columns: {list(frame)}); pass prepared/eval.parquet")
    return frame["text"].astype(str).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, required=True, help="a package folder: model.onnx and its tokenizer")
    parser.add_argument("--fp32", type=Path, help="the FP32 ONNX export to profile beside it")
    parser.add_argument("--eval", type=Path, required=True, help="the prepared eval split (a `text` column)")
    parser.add_argument("--texts", type=int, default=300)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    texts = eval_texts(args.eval)[: args.texts]
    tokenizer = AutoTokenizer.from_pretrained(args.package)
    models = {"packaged": args.package / "model.onnx", **({"fp32": args.fp32} if args.fp32 else {})}
    with tempfile.TemporaryDirectory() as work:  # the profiler's JSON files land beside the model: not in the run
        for name, onnx_file in models.items():
            copy = Path(work) / name / "model.onnx"
            copy.parent.mkdir()
            shutil.copy(onnx_file, copy)
            print(f"## {name}: {onnx_file}\n")
            print("\n".join(op_profile(copy, tokenizer, texts, args.max_length, top=10)), end="\n\n")


if __name__ == "__main__":
    main()
