"""The quantize stage's INT8 schemes side by side, as a Markdown table, from its report (one run, one machine).

Run: python -m bench.quantization.int8_schemes --report <run>/outputs/sentiment/reports/quantize.json [--out md]
e.g. after bench/training/sst2.sh: --report /tmp/sst2-bench.X/repo/outputs/sentiment/reports/quantize.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def table(report: dict) -> list[str]:
    lat = report["latency_ms"]
    torch_p50 = lat["pytorch_fp32"]["p50"]
    batch = next(k for k in next(iter(report["schemes"].values())) if k.endswith("_latency_ms") and k != "latency_ms")
    size = batch.removesuffix("_latency_ms").removeprefix("batch_")
    agreements = sorted(k for k in next(iter(report["schemes"].values())) if k.startswith("agreement_"))
    lines = [
        f"{report['examples']} eval texts; PyTorch FP32 accuracy {report['accuracy']['pytorch_fp32']}, single-request "
        f"p50 {torch_p50} ms on {report['onnx_threads']} thread(s) (on its {lat['pytorch_fp32_default_threads']['threads']} "
        f"default threads {lat['pytorch_fp32_default_threads']['p50']} ms). Packaged: **{report['scheme']}**. "
        "Invariance: the largest change of a text's probabilities between alone and in length-sorted batches / "
        "padded beside the longest texts. Latency includes tokenization; one thread each, taking turns.",
        "",
        "| scheme | accuracy | drop (pt) | agreement alone | "
        + " | ".join(a.removeprefix("agreement_").replace("_", " ") for a in agreements)
        + " | max prob diff | invariance sorted / padded | size MB | p50 / p99 ms | x PyTorch p50 | "
        f"batch {size}: p50 / p99 ms per call | gate |",
        "|---" * (11 + len(agreements)) + "|",
    ]
    for name, s in report["schemes"].items():
        b = s[batch]
        lines.append(
            f"| {name} | {s['accuracy']} | {100 * s['accuracy_drop']:.2f} | {s['agreement']} | "
            + " | ".join(str(s[a]) for a in agreements)
            + f" | {s['max_prob_diff']} | {s['invariance']['length_sorted']:.2g} / {s['invariance']['padded']:.2g} | "
            f"{s['size_mb']} | {s['latency_ms']['p50']} / {s['latency_ms']['p99']} | {s['speedup_vs_pytorch_p50']}x | "
            f"{b['p50']} / {b['p99']} | {'passes' if not s['gate'] else '; '.join(s['gate'])} |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--report", type=Path, required=True, help="the quantize stage's reports/quantize.json")
    ap.add_argument("--out", type=Path, help="also append the table here (Markdown)")
    args = ap.parse_args()
    text = "\n".join(table(json.loads(args.report.read_text()))) + "\n"
    print(text)
    if args.out:
        with args.out.open("a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
