"""sentiment_evaluate: the trained model on the eval split, a confusion matrix, calibration, attention maps, and a gate.

In:  --model (train's out), --prepared/eval.parquet.
Out: --report-file (accuracy, macro F1, per-class precision/recall, ECE), --predictions (CSV for the DVC
     confusion plot), --figures (confusion.png, attention/*.png).
     --metrics: the report's headline numbers (dvc metrics show).
Params: sentiment.labels, sentiment.model.max_length, sentiment.evaluate.*.
Gate: accuracy below sentiment.evaluate.min_accuracy fails the stage (after the reports are written).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from textops import cli
from textops.atomic import atomic_dir, atomic_file
from textops.errors import GateFailed
from textops.inference import TorchClassifier
from textops.metrics import classification_report
from textops.modeling import load_trained
from textops.params import Params
from textops.plots import attention_png, confusion_png
from textops.tracking import ModelRun, numeric

log = logging.getLogger("textops.evaluate")


def last_layer_attention(model_dir: Path, tokenizer, sentence: str, max_length: int) -> tuple[np.ndarray, list[str]]:
    import torch

    # SDPA kernels return no attention weights; the eager path does.
    model = load_trained(model_dir, attn_implementation="eager")
    enc = tokenizer(sentence, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.inference_mode():
        out = model(**enc, output_attentions=True)
    return out.attentions[-1][0].numpy(), tokenizer.convert_ids_to_tokens(enc["input_ids"][0])


def headline(report: dict) -> dict:
    return {key: report[key] for key in ("accuracy", "macro_f1", "ece")}


def run(
    params: Params, model: Path, prepared: Path, metrics: Path, predictions: Path, figures: Path, report_file: Path
) -> None:
    classifier = TorchClassifier(model, params.sentiment.model.max_length)
    frame = pd.read_parquet(prepared / "eval.parquet")
    labels = np.array([params.sentiment.labels.index(y) for y in frame["label"]])
    probs = classifier.predict_proba(list(frame["text"]), params.sentiment.evaluate.batch_size)
    report = classification_report(probs, labels, params.sentiment.labels, params.sentiment.evaluate.ece_bins)
    with atomic_file(predictions) as tmp:
        pd.DataFrame(
            {
                "actual": [params.sentiment.labels[i] for i in labels],
                "predicted": [params.sentiment.labels[i] for i in probs.argmax(1)],
                "probability": probs.max(1).round(4),
                "text": frame["text"],
            }
        ).to_csv(tmp, index=False)
    with atomic_dir(figures) as folder:
        (folder / "attention").mkdir()
        confusion_png(report["confusion_matrix"], params.sentiment.labels, folder / "confusion.png")
        for i, sentence in enumerate(params.sentiment.evaluate.attention_sentences):
            attention, tokens = last_layer_attention(
                model, classifier.tokenizer, sentence, params.sentiment.model.max_length
            )
            attention_png(attention, tokens, folder / "attention" / f"sentence_{i:02d}.png", sentence)
    cli.write_results(report_file, metrics, report, headline(report))
    tracker = ModelRun(params.sentiment.tracking.enabled, params.sentiment.tracking.experiment).reopen(model)
    tracker.log_metrics(numeric("eval", {k: v for k, v in report.items() if k != "confusion_matrix"}))
    tracker.log_artifact(figures, "evaluate")
    for name in ("validation.json", "validation.md"):  # the Great Expectations result of this data
        tracker.log_artifact(prepared / name, "data_validation")
    tracker.log_artifact(report_file, "reports")
    log.info(
        "accuracy %.4f, macro F1 %.4f, ECE %.4f on %d texts",
        report["accuracy"],
        report["macro_f1"],
        report["ece"],
        report["examples"],
    )
    if report["accuracy"] < params.sentiment.evaluate.min_accuracy:
        raise GateFailed(
            f"eval accuracy {report['accuracy']:.4f} is below sentiment.evaluate.min_accuracy="
            f"{params.sentiment.evaluate.min_accuracy} (lower it in params.yaml only if that is intended)"
        )


def main(argv=None) -> int:
    return cli.main(
        "sentiment_evaluate",
        __doc__,
        ["model", "prepared", "metrics", "predictions", "figures", "report-file"],
        run,
        argv,
    )


if __name__ == "__main__":
    raise SystemExit(main())
