"""Classification metrics as pure functions of labels and probabilities."""

from __future__ import annotations

import numpy as np


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Weighted gap between confidence and accuracy over equal-width confidence bins."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def classification_report(probs: np.ndarray, labels: np.ndarray, names: list[str], bins: int = 15) -> dict:
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    preds = probs.argmax(axis=1)
    ids = list(range(len(names)))
    precision, recall, _, support = precision_recall_fscore_support(labels, preds, labels=ids, zero_division=0)
    return {
        "accuracy": round(float((preds == labels).mean()), 4),
        "macro_f1": round(float(f1_score(labels, preds, labels=ids, average="macro", zero_division=0)), 4),
        "ece": round(expected_calibration_error(probs, labels, bins), 4),
        "per_class": {
            n: {"precision": round(float(p), 4), "recall": round(float(r), 4), "support": int(s)}
            for n, p, r, s in zip(names, precision, recall, support)
        },
        "confusion_matrix": confusion_matrix(labels, preds, labels=ids).tolist(),
        "examples": int(labels.size),
    }


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
