"""sentiment_quantize: Optimum ONNX export, INT8 schemes side by side, and the INT8 gates.

In:  --model (train's out), --prepared/{train,eval}.parquet (train: calibration texts for static INT8; eval: all figures).
Out: --fp32 (model.onnx + tokenizer), --int8 (model_quantized.onnx, the packaged scheme, + tokenizer),
     --report-file: for every scheme (sentiment.quantize.compare, and .scheme when named; textops/quantization.py) its accuracy,
     label agreement with PyTorch FP32 one text per call and in length-sorted batches, largest probability
     difference, batch invariance (largest difference of a text's probabilities alone, in length-sorted batches,
     padded beside the longest texts), size, single-request p50/p99 and batch p50/p99, all ONNX models measured
     side by side on sentiment.quantize.onnx_threads cores beside PyTorch FP32 (and PyTorch on its default
     threads). The top-level figures (accuracy.onnx_int8, agreement, latency_ms.onnx_int8, ...) are the packaged
     scheme's. --metrics: the report's headline numbers (dvc metrics show).
Params: sentiment.seed, sentiment.model.max_length, sentiment.quantize.*.
Gate (the packaged scheme): accuracy drop over max_accuracy_drop, agreement alone or in batches under
min_agreement, or an invariance difference over max_invariance_diff. With scheme auto the stage packages the fastest
scheme of `compare` that passes, and fails only when none does.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from textops import cli
from textops.atomic import atomic_dir
from textops.errors import GateFailed
from textops.inference import OnnxClassifier, TorchClassifier
from textops.modeling import torch_threads
from textops.onnx_export import INT8_FILE, export_onnx
from textops.params import Params
from textops.quantization import build, copy_side_files, invariance
from textops.tracking import ModelRun, numeric

log = logging.getLogger("textops.quantize")
BATCHED = 64  # a bulk caller's batch, for the agreement reported beside the gate's batch size
LATENCY_BLOCK = 25  # single requests per backend before the next one takes its turn


def latency_ms(
    predictors: dict, texts: list[str], requests: int, warmup: int, block: int = LATENCY_BLOCK, batch: int = 1
) -> dict:
    """Requests of `batch` texts, the backends taking turns in blocks of `block` requests: within its block a
    model is hot in the caches, as in a service that runs that one model, and the turns spread machine drift over
    all of them. (Turns of one request let each model evict the others: on SST-2's model INT8 took 3.6 ms
    instead of 2.8, PyTorch 10.8 instead of 9.4.) Batches are consecutive texts of the length-sorted eval set."""
    if batch > 1:
        ordered = sorted(texts, key=len)
        requests = min(requests, len(ordered) // batch) or 1
        inputs = [ordered[i * batch : (i + 1) * batch] for i in range(requests)]
    else:
        inputs = [[texts[i % len(texts)]] for i in range(max(requests, warmup))]
    # single requests call predict(texts), batches predict(texts, batch)
    call = (lambda predict, x: predict(x, batch)) if batch > 1 else (lambda predict, x: predict(x))
    for predict in predictors.values():
        for i in range(warmup):
            call(predict, inputs[i % len(inputs)])
    timings = {name: [] for name in predictors}
    for start in range(0, requests, block):
        for name, predict in predictors.items():
            call(predict, inputs[start % len(inputs)])  # untimed: brings this model's weights back into the caches
            for i in range(start, min(start + block, requests)):
                started = time.perf_counter()
                call(predict, inputs[i % len(inputs)])
                timings[name].append((time.perf_counter() - started) * 1000)
    return {
        name: {"p50": round(float(np.percentile(t, 50)), 3), "p99": round(float(np.percentile(t, 99)), 3)}
        for name, t in timings.items()
    }


def latency(torch_model: TorchClassifier, onnx: dict, texts: list[str], threads: int, requests: int, warmup: int):
    """Single requests to PyTorch FP32 and every ONNX model side by side on the same `threads` cores
    (sentiment.quantize.onnx_threads), PyTorch again on its default threads (all cores), so a reader sees the
    speed-up both ways; and batches of `batch` texts to the ONNX models."""
    import torch

    default = latency_ms({"pytorch_fp32_default_threads": torch_model.predict_proba}, texts, requests, warmup)
    default["pytorch_fp32_default_threads"]["threads"] = torch.get_num_threads()
    with torch_threads(threads):
        same = latency_ms(
            {"pytorch_fp32": torch_model.predict_proba, **{k: m.predict_proba for k, m in onnx.items()}},
            texts,
            requests,
            warmup,
        )
    return {**same, **default}


def scheme_figures(probs: dict, torch_probs: np.ndarray, labels: np.ndarray, inv: dict) -> dict:
    """One model's figures against PyTorch FP32: probs holds its probabilities alone ("alone") and in
    length-sorted batches (keys "batch_N")."""
    alone = probs["alone"]
    reference = torch_probs.argmax(1)
    accuracy = round(float((alone.argmax(1) == labels).mean()), 4)
    return {
        "accuracy": accuracy,
        "accuracy_drop": round(float((reference == labels).mean()) - accuracy, 4),
        "agreement": round(float((alone.argmax(1) == reference).mean()), 4),
        **{
            f"agreement_{k}": round(float((p.argmax(1) == reference).mean()), 4)
            for k, p in probs.items()
            if k != "alone"
        },
        "max_prob_diff": round(float(max(np.abs(p - torch_probs).max() for p in probs.values())), 4),
        "invariance": {k: round(v, 6) for k, v in inv.items()},
    }


def gate(figures: dict, max_drop: float, min_agreement: float, max_invariance: float | None = None) -> list[str]:
    """The packaged scheme's problems, named by the param each one breaks."""
    problems = []
    if figures["accuracy_drop"] > max_drop:
        problems.append(
            f"INT8 accuracy {figures['accuracy']} is {figures['accuracy_drop']:.4f} below FP32, over "
            f"sentiment.quantize.max_accuracy_drop={max_drop}"
        )
    agreements = {k: v for k, v in figures.items() if k.startswith("agreement")}
    for name, value in agreements.items():
        if value < min_agreement:
            where = "one text per call" if name == "agreement" else name.removeprefix("agreement_").replace("_", " ")
            problems.append(
                f"INT8 and FP32 agree on {value:.2%} of eval labels ({where}), under "
                f"sentiment.quantize.min_agreement={min_agreement}"
            )
    if max_invariance is not None and not batch_invariant(figures["invariance"], max_invariance):
        inv = figures["invariance"]
        problems.append(
            f"a text's probabilities change by up to {largest_change(inv):.2g} with the texts batched beside it "
            f"({inv['labels_changed']} eval labels change), over sentiment.quantize.max_invariance_diff="
            f"{max_invariance} (dynamic INT8 is never batch-invariant)"
        )
    return problems


def largest_change(inv: dict) -> float:
    """The largest probability change of a text between alone and batched (textops.quantization.invariance)."""
    return max(inv["length_sorted"], inv["padded"])


def batch_invariant(inv: dict, max_diff: float) -> bool:
    return largest_change(inv) <= max_diff and inv["labels_changed"] == 0


def choose(requested: str, problems: dict[str, list[str]], p50: dict[str, float]) -> str:
    """The scheme to package: the one params name, or with auto the fastest single request among those that pass
    their gates; when none passes, the one with the fewest problems (then the fastest), which the gate then fails."""
    if requested != "auto":
        return requested
    return min(problems, key=lambda name: (len(problems[name]), p50[name]))


def headline(report: dict) -> dict:
    """The INT8 model against FP32, for `dvc metrics show` (key names shared with story_quantize's)."""
    return {
        "int8_accuracy": report["accuracy"]["onnx_int8"],
        "agreement": report["agreement"],
        "latency_ms_p50": report["latency_ms"]["onnx_int8"]["p50"],
        "int8_speedup": report["int8_speedup_vs_pytorch_p50"],
        "size_mb": report["size_mb"]["onnx_int8"],
    }


def calibration_texts(prepared: Path, rows: int, seed: int) -> list[str]:
    """A seeded sample of the train split: static INT8's activation ranges never see the eval texts."""
    train = pd.read_parquet(prepared / "train.parquet", columns=["text"])
    return list(train["text"].sample(min(rows, len(train)), random_state=seed))


def evaluate(model: OnnxClassifier, texts: list[str], batch_size: int, invariance_texts: int) -> tuple[dict, dict]:
    """Probabilities alone and in length-sorted batches, and the invariance check on the first eval texts."""
    probs = {
        "alone": model.predict_proba(texts),
        f"batch_{batch_size}": model.predict_proba(texts, batch_size),
        f"batch_{BATCHED}": model.predict_proba(texts, BATCHED),
    }
    return probs, invariance(model.predict_proba, texts[:invariance_texts], batch_size)


def run(params: Params, model: Path, prepared: Path, fp32: Path, int8: Path, metrics: Path, report_file: Path) -> None:
    from transformers import AutoTokenizer

    q, max_length = params.sentiment.quantize, params.sentiment.model.max_length
    schemes = list(dict.fromkeys(q.compare if q.scheme == "auto" else [q.scheme, *q.compare]))
    frame = pd.read_parquet(prepared / "eval.parquet")
    texts = list(frame["text"])
    labels = np.array([params.sentiment.labels.index(y) for y in frame["label"]])
    calibration = calibration_texts(prepared, q.static.calibration_rows, params.sentiment.seed)
    with tempfile.TemporaryDirectory() as scratch, atomic_dir(fp32) as fp32_tmp, atomic_dir(int8) as int8_tmp:
        export_onnx(model, fp32_tmp)
        AutoTokenizer.from_pretrained(model).save_pretrained(fp32_tmp)
        tokenizer = AutoTokenizer.from_pretrained(fp32_tmp)
        built, excluded = {}, {}
        for name in schemes:
            started = time.perf_counter()
            excluded[name] = build(name, fp32_tmp, Path(scratch) / name, q, tokenizer, calibration, max_length)
            built[name] = Path(scratch) / name
            log.info("%s INT8 built in %.1f s", name, time.perf_counter() - started)

        torch_model = TorchClassifier(model, max_length)
        onnx = {"onnx_fp32": OnnxClassifier(fp32_tmp, "model.onnx", max_length, q.onnx_threads)}
        onnx |= {f"int8_{n}": OnnxClassifier(built[n], INT8_FILE, max_length, q.onnx_threads) for n in schemes}
        torch_probs = torch_model.predict_proba(texts)
        figures = {}
        for name, classifier in onnx.items():
            probs, inv = evaluate(classifier, texts, q.batch_size, q.invariance_texts)
            figures[name] = scheme_figures(probs, torch_probs, labels, inv)
        single = latency(torch_model, onnx, texts, q.onnx_threads, q.latency_requests, q.latency_warmup)
        with torch_threads(q.onnx_threads):
            batched = latency_ms(
                {k: m.predict_proba for k, m in onnx.items()}, texts, q.latency_requests, 2, batch=q.batch_size
            )
        sizes = {
            "pytorch_fp32": (model / "model.safetensors").stat().st_size,
            "onnx_fp32": (fp32_tmp / "model.onnx").stat().st_size,
            **{f"int8_{n}": (built[n] / INT8_FILE).stat().st_size for n in schemes},
        }
        problems = {
            n: gate(figures[f"int8_{n}"], q.max_accuracy_drop, q.min_agreement, q.max_invariance_diff) for n in schemes
        }
        chosen = choose(q.scheme, problems, {n: single[f"int8_{n}"]["p50"] for n in schemes})
        copy_side_files(built[chosen], int8_tmp)
        (int8_tmp / INT8_FILE).write_bytes((built[chosen] / INT8_FILE).read_bytes())
    packaged = figures[f"int8_{chosen}"]
    report = {
        "accuracy": {
            "pytorch_fp32": round(float((torch_probs.argmax(1) == labels).mean()), 4),
            "onnx_fp32": figures["onnx_fp32"]["accuracy"],
            "onnx_int8": packaged["accuracy"],
        },
        **{k: v for k, v in packaged.items() if k != "accuracy"},
        "onnx_fp32_max_prob_diff": round(figures["onnx_fp32"]["max_prob_diff"], 5),
        "scheme": chosen,
        "scheme_param": q.scheme,
        "batch_invariant": batch_invariant(packaged["invariance"], q.max_invariance_diff or 0.0),
        "examples": len(texts),
        "excluded_nodes": len(excluded[chosen]),
        "onnx_threads": q.onnx_threads,
        "size_mb": {
            "pytorch_fp32": round(sizes["pytorch_fp32"] / 2**20, 2),
            "onnx_fp32": round(sizes["onnx_fp32"] / 2**20, 2),
            "onnx_int8": round(sizes[f"int8_{chosen}"] / 2**20, 2),
        },
        "int8_size_ratio": round(sizes[f"int8_{chosen}"] / sizes["onnx_fp32"], 4),
        "latency_ms": {
            "pytorch_fp32": single["pytorch_fp32"],
            "onnx_fp32": single["onnx_fp32"],
            "onnx_int8": single[f"int8_{chosen}"],
            "pytorch_fp32_default_threads": single["pytorch_fp32_default_threads"],
        },
    }
    lat = report["latency_ms"]
    report["int8_speedup_vs_pytorch_p50"] = round(lat["pytorch_fp32"]["p50"] / lat["onnx_int8"]["p50"], 2)
    report["int8_speedup_vs_pytorch_default_threads_p50"] = round(
        lat["pytorch_fp32_default_threads"]["p50"] / lat["onnx_int8"]["p50"], 2
    )
    report["schemes"] = {
        name.removeprefix("int8_"): {
            **figures[name],
            "size_mb": round(sizes[name] / 2**20, 2),
            "latency_ms": single[name],
            f"batch_{q.batch_size}_latency_ms": batched[name],
            "speedup_vs_pytorch_p50": round(lat["pytorch_fp32"]["p50"] / single[name]["p50"], 2),
            "excluded_nodes": len(excluded.get(name.removeprefix("int8_"), [])),
            "gate": gate(figures[name], q.max_accuracy_drop, q.min_agreement, q.max_invariance_diff),
        }
        for name in onnx
    }
    cli.write_results(report_file, metrics, report, headline(report))
    log.info("%s", report)
    failed = problems[chosen]
    tracker = ModelRun(params.sentiment.tracking.enabled, params.sentiment.tracking.experiment).reopen(model)
    tracker.log_metrics(numeric("quantize", report))
    tracker.log_artifact(report_file, "reports")
    tracker.set_tags({"int8_gate": "failed" if failed else "passed", "int8_scheme": chosen})
    if failed:
        others = "" if q.scheme != "auto" else f" (scheme auto: none of {', '.join(schemes)} passed; the closest)"
        raise GateFailed(f"quantization gate failed ({chosen} INT8{others}):\n  - " + "\n  - ".join(failed))


def main(argv=None) -> int:
    return cli.main(
        "sentiment_quantize", __doc__, ["model", "prepared", "fp32", "int8", "metrics", "report-file"], run, argv
    )


if __name__ == "__main__":
    raise SystemExit(main())
