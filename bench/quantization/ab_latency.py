"""Single-request latency of ONNX classifier files side by side: the same texts, one thread each, the files taking
turns over several repeats, so machine noise hits all alike. For a change to an INT8 scheme: the file before and
the file after.

Run: python -m bench.quantization.ab_latency --package <run>/outputs/sentiment/package
       --eval <run>/outputs/sentiment/prepared/eval.parquet before.onnx after.onnx [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.quantization.op_profile import eval_texts


def session(onnx_file: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])


def score(run, tokenizer, text: str, names: set[str]) -> np.ndarray:
    """One text alone, tokenized as the service's single requests are: its logits."""
    enc = tokenizer([text], return_tensors="np")
    return run(None, {k: v.astype(np.int64) for k, v in enc.items() if k in names})[0]


def request_ms(run, tokenizer, texts: list[str], names: set[str]) -> np.ndarray:
    """Each text alone, tokenization included."""
    times = []
    for text in texts:
        started = time.perf_counter()
        score(run, tokenizer, text, names)
        times.append(time.perf_counter() - started)
    return np.array(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+", help="ONNX files taking the same inputs")
    parser.add_argument("--package", type=Path, required=True, help="a folder with the tokenizer")
    parser.add_argument("--eval", type=Path, required=True, help="the prepared eval split (a `text` column)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    texts = eval_texts(args.eval)
    tokenizer = AutoTokenizer.from_pretrained(args.package)
    sessions = {m: session(m) for m in args.models}
    names = {i.name for i in next(iter(sessions.values())).get_inputs()}
    logits = {m: np.concatenate([score(s.run, tokenizer, t, names) for t in texts]) for m, s in sessions.items()}
    first = args.models[0]
    p50s: dict[Path, list[float]] = {m: [] for m in args.models}
    print(f"{len(texts)} texts, one per call, one thread; repeats alternate the files\n")
    print("| repeat | file | p50 ms | p99 ms |\n|---|---|---|---|")
    for repeat in range(args.repeats):
        for m, s in sessions.items():
            ms = request_ms(s.run, tokenizer, texts, names)
            p50s[m].append(float(np.median(ms)))
            print(f"| {repeat + 1} | {m} | {np.median(ms):.3f} | {np.percentile(ms, 99):.3f} |")
    print()
    for m in args.models:
        diff = float(np.abs(logits[m] - logits[first]).max())
        flips = int((logits[m].argmax(1) != logits[first].argmax(1)).sum())
        ratio = np.median(p50s[first]) / np.median(p50s[m])
        print(
            f"{m}: median p50 {np.median(p50s[m]):.3f} ms ({min(p50s[m]):.3f}-{max(p50s[m]):.3f}), "
            f"{ratio:.2f}x the first file's speed; against it: largest logit difference {diff:.4f}, {flips} labels differ"
        )


if __name__ == "__main__":
    main()
