"""Do /explain's word scores point at the words that decide the label? A deletion curve against chance.

For each text: explain it (textops.explain, occlusion on the INT8 package, as the service does), delete its
k top-scored words, and, as the baseline, k words drawn at random (seeded); count how often the label flips
and how far the original label's probability falls. Prints both curves and the ratio of flip rates.

Run: python -m bench.serving.explain_deletion --package outputs/sentiment/package \\
         --data ../shared/data/sst2/dev.tsv [--k 1 2 3] [--seeds 0 1 2 3 4] [--out bench/results/explain_deletion.md]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from textops.explain import explain, without, words_of
from textops.inference import OnnxClassifier


def deletions(classifier, texts: list[str], ks: list[int], seeds: list[int]) -> pd.DataFrame:
    """One row per (text, k): label flip and probability drop for the top-k words, and for k random words
    under each seed (the random baseline's spread)."""
    rows = []
    for n, text in enumerate(texts):
        result = explain(classifier, text)
        words = words_of(text)
        label = classifier.labels.index(result["label"])
        order = np.argsort([-w["score"] for w in result["words"]], kind="stable")
        for k in ks:
            if len(words) <= k:  # nothing would be left
                continue
            drops = [set(order[:k].tolist())]
            drops += [
                set(np.random.default_rng([s, n, k]).choice(len(words), k, replace=False).tolist()) for s in seeds
            ]
            probs = classifier.predict_proba([without(words, d) for d in drops])
            row = {
                "k": k,
                "flip_top": int(probs[0].argmax() != label),
                "drop_top": result["probability"] - probs[0][label],
            }
            for s, p in zip(seeds, probs[1:], strict=True):
                row[f"flip_random_{s}"] = int(p.argmax() != label)
                row[f"drop_random_{s}"] = result["probability"] - p[label]
            rows.append(row)
    return pd.DataFrame(rows)


def table(frame: pd.DataFrame, seeds: list[int]) -> str:
    lines = [
        "| k words deleted | texts | label flips: top-k by score | random k: mean (min-max over seeds) "
        "| ratio to the highest random | P(label) drop: top-k | random k (mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, g in frame.groupby("k"):
        top = g["flip_top"].mean()
        rand = [g[f"flip_random_{s}"].mean() for s in seeds]
        ratio = f"{top / max(rand):.1f}x" if max(rand) else "inf"
        drop_rand = np.mean([g[f"drop_random_{s}"].mean() for s in seeds])
        lines.append(
            f"| {k} | {len(g)} | {top:.3f} | {np.mean(rand):.3f} ({min(rand):.3f}-{max(rand):.3f}) | {ratio} | "
            f"{g['drop_top'].mean():.3f} | {drop_rand:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package", type=Path, required=True, help="a package folder (model.onnx, tokenizer, config)")
    ap.add_argument("--file", default="model.onnx", help="the ONNX file in it (quantize's int8/: model_quantized.onnx)")
    ap.add_argument("--data", type=Path, required=True, help="a TSV or parquet with a text/sentence column")
    ap.add_argument("--k", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="random baselines")
    ap.add_argument("--limit", type=int, default=None, help="the first N texts only")
    ap.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = ap.parse_args()
    data = pd.read_parquet(args.data) if args.data.suffix == ".parquet" else pd.read_csv(args.data, sep="\t")
    column = "text" if "text" in data else "sentence"
    texts = [str(t).strip() for t in data[column]][: args.limit]
    classifier = OnnxClassifier(args.package, args.file, threads=1)
    started = time.perf_counter()
    frame = deletions(classifier, texts, args.k, args.seeds)
    seconds = time.perf_counter() - started
    text = (
        f"# Explanation quality: deletion curve against random words\n\n"
        f"Command: `python -m bench.serving.explain_deletion --package {args.package} --file {args.file} "
        f"--data {args.data} "
        f"--k {' '.join(map(str, args.k))} --seeds {' '.join(map(str, args.seeds))}`\n\n"
        f"{len(texts)} texts, one ONNX thread, {seconds:.0f} s.\n\n{table(frame, args.seeds)}\n"
    )
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
