"""sentiment_package: the deployable model folder, with a model card and a checksum manifest.

In:  --int8 (INT8 ONNX + tokenizer), --{prepare,train,evaluate,quantize}-report (earlier stages' reports).
Out: --out: model.onnx (INT8), config.json, tokenizer files, labels.json, MODEL_CARD.md,
     manifest.json (sha256 and size of every file, the git commit, the data hash).
Params: the sentiment sections that shape the model (written into the model card; dvc.yaml lists them).
MLflow: registers the folder as a new version of sentiment.package.model_name (pyfunc; FP32 model from --model as
an artifact), aliased `challenger`, with the gate evidence as version tags.
"""

from __future__ import annotations

from pathlib import Path

from textops import cli
from textops.atomic import atomic_dir
from textops.packaging import REPORTS, fresh_package, read_reports, register, write_card_and_manifest
from textops.params import Params, flatten

TASK = "sentiment"


def model_card(params: Params, reports: dict, git: dict, created: str) -> str:
    prep, train, ev, q = (reports[k] for k in REPORTS)
    lat = q["latency_ms"]
    rows = [
        f"| {name} | {ev['per_class'][name]['precision']} | {ev['per_class'][name]['recall']} | "
        f"{ev['per_class'][name]['support']} |"
        for name in params.sentiment.labels
    ]
    return "\n".join(
        [
            f"# {params.sentiment.package.model_name}",
            "",
            f"Sentiment classifier ({', '.join(params.sentiment.labels)}) fine-tuned from `{params.sentiment.model.name}`, exported to ONNX "
            f"and quantized to INT8 (scheme `{q['scheme']}`: textops/quantization.py; batch-invariant: "
            f"{'yes' if q['batch_invariant'] else 'no, served one text per call'}).",
            f"Created {created} from git commit `{git['commit']}`{' (uncommitted changes)' if git['dirty'] else ''}.",
            "",
            "## Data",
            "",
            f"- Source: `{prep['source']}` (sha256 `{prep['data_hash']}`)",
            f"- Rows: train {prep['rows']['train']}, eval {prep['rows']['eval']}; quarantined {prep['quarantined']} "
            f"({', '.join(f'{k}: {v}' for k, v in prep['quarantine_reasons'].items()) or 'none'})",
            f"- Validation (Great Expectations): {'passed' if prep['validation_success'] else 'FAILED'}",
            "",
            "## Training",
            "",
            f"- {train['train_rows']} rows, {params.sentiment.train.epochs} epoch(s), batch {params.sentiment.train.batch_size}, "
            f"lr {params.sentiment.train.learning_rate}, precision {train['precision']} on {train['device']}",
            f"- {train['samples_per_second']} samples/s, {train['wall_time_s']} s, peak RSS {train['peak_rss_mb']} MB",
            "",
            "## Evaluation (eval split, PyTorch FP32)",
            "",
            f"- Accuracy {ev['accuracy']}, macro F1 {ev['macro_f1']}, ECE {ev['ece']} on {ev['examples']} texts",
            "",
            "| class | precision | recall | support |",
            "|---|---|---|---|",
            *rows,
            "",
            "## Quantization (INT8 vs FP32, whole eval split)",
            "",
            "| | PyTorch FP32 | ONNX FP32 | ONNX INT8 |",
            "|---|---|---|---|",
            f"| accuracy | {q['accuracy']['pytorch_fp32']} | {q['accuracy']['onnx_fp32']} | {q['accuracy']['onnx_int8']} |",
            f"| size (MB) | {q['size_mb']['pytorch_fp32']} | {q['size_mb']['onnx_fp32']} | {q['size_mb']['onnx_int8']} |",
            f"| latency p50 (ms) | {lat['pytorch_fp32']['p50']} | {lat['onnx_fp32']['p50']} | {lat['onnx_int8']['p50']} |",
            f"| latency p99 (ms) | {lat['pytorch_fp32']['p99']} | {lat['onnx_fp32']['p99']} | {lat['onnx_int8']['p99']} |",
            "",
            f"Latency: one text per request, every backend on {q['onnx_threads']} thread(s); INT8 speed-up over PyTorch "
            f"{q['int8_speedup_vs_pytorch_p50']}x. PyTorch FP32 on its default "
            f"{lat['pytorch_fp32_default_threads']['threads']} thread(s): p50 {lat['pytorch_fp32_default_threads']['p50']} "
            f"ms, INT8 speed-up {q['int8_speedup_vs_pytorch_default_threads_p50']}x.",
            "",
            f"Label agreement INT8/FP32 {q['agreement']} one text per call, "
            f"{q.get('agreement_batch_64', 'not measured')} in batches of 64; largest probability difference "
            f"{q['max_prob_diff']}; a text's probabilities alone against in batches: largest difference "
            f"{max(q['invariance'].values())}.",
            "",
            "Other INT8 schemes measured on the same run (reports/quantize.json, `schemes`):",
            "",
            "| scheme | accuracy | agreement | invariance diff | size (MB) | p50 (ms) |",
            "|---|---|---|---|---|---|",
            *[
                f"| {name} | {s['accuracy']} | {s['agreement']} | {max(s['invariance'].values())} | {s['size_mb']} | "
                f"{s['latency_ms']['p50']} |"
                for name, s in q["schemes"].items()
            ],
            "",
            "## Params",
            "",
            "| key | value |",
            "|---|---|",
            *[f"| {k} | {str(v).replace('|', '/')} |" for k, v in flatten(params).items()],
            "",
            "## Limits",
            "",
            "Trained on the data above only; metrics on the bundled sample (a few hundred sentences) say little about "
            "real-world accuracy. English movie-review style text; texts longer than "
            f"{params.sentiment.model.max_length} tokens are truncated.",
            "",
        ]
    )


def evidence(task: str, reports: dict, git: dict) -> dict[str, str]:
    """What the promotion gate and a reviewer need, as registry tags on the version."""
    q = reports["quantize"]
    return {
        "task": task,
        "eval_accuracy": reports["evaluate"]["accuracy"],
        "int8_accuracy": q["accuracy"]["onnx_int8"],
        "fp32_accuracy": q["accuracy"]["pytorch_fp32"],
        "int8_accuracy_drop": q["accuracy_drop"],
        "int8_agreement": q["agreement"],
        "int8_scheme": q["scheme"],
        "int8_gate": "passed",
        "latency_ms_p50": q["latency_ms"]["onnx_int8"]["p50"],
        "size_mb": q["size_mb"]["onnx_int8"],
        "data_hash": reports["prepare"]["data_hash"],
        "git_commit": git["commit"],
    }


def run(
    params: Params,
    model: Path,
    int8: Path,
    prepare_report: Path,
    train_report: Path,
    evaluate_report: Path,
    quantize_report: Path,
    out: Path,
) -> None:
    report_data = read_reports(
        "sentiment_package", int8, (prepare_report, train_report, evaluate_report, quantize_report)
    )
    with atomic_dir(out) as package:
        made = fresh_package(int8, package)
        cli.write_json(package / "labels.json", params.sentiment.labels)
        git = made["git"]
        fields = {
            "name": params.sentiment.package.model_name,
            "task": TASK,
            "labels": params.sentiment.labels,
            "max_length": params.sentiment.model.max_length,
            "data_hash": report_data["prepare"]["data_hash"],
            "quantization_scheme": report_data["quantize"]["scheme"],
            # measured by the quantize stage's invariance gate; the service batches texts only when true
            "batch_invariant": report_data["quantize"]["batch_invariant"],
        }
        write_card_and_manifest(package, model_card(params, report_data, git, made["created"]), fields, made)
    register(
        params.sentiment.tracking,
        params.sentiment.package.model_name,
        model,
        out,
        evidence(TASK, report_data, git),
        TASK,
    )


def main(argv=None) -> int:
    paths = ["model", "int8", "prepare-report", "train-report", "evaluate-report", "quantize-report", "out"]
    return cli.main("sentiment_package", __doc__, paths, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
