"""Why a classifier gave its label: a score per word, by occlusion (leave-one-word-out) on the model itself.

A word's score is how much the predicted label's probability falls when that word is left out of the text:
positive pushed toward the label, negative against it. It runs on whatever model it is given, in the
service the served INT8 ONNX model, so it explains what is served (integrated gradients would need the FP32
PyTorch model the INT8 one came from, and would explain that model instead). It costs one model call per
word, hence the service's caps on words per text (sentiment.serve.explain_max_words).
"""

from __future__ import annotations

from typing import Any

import numpy as np

METHOD = "occlusion: P(label | text) - P(label | text without the word), on the served model"


def words_of(text: str) -> list[str]:
    """Words as the explanation scores them: whitespace-separated, as the text reads."""
    return text.split()


def without(words: list[str], drop: set[int]) -> str:
    return " ".join(w for i, w in enumerate(words) if i not in drop)


def explain(classifier: Any, text: str, batch_size: int = 1) -> dict:
    """Label, its probability, every class's probability and a score per word, for one text.

    `classifier` has predict_proba(texts, batch_size) and labels (textops.inference.OnnxClassifier). The
    text and its variants go through the model `batch_size` texts per call, as /classify runs them, so the
    label here is the one /classify gives."""
    words = words_of(text)
    variants = [text] + [without(words, {i}) for i in range(len(words))]
    probs = classifier.predict_proba(variants, batch_size)
    full, label = probs[0], int(np.argmax(probs[0]))
    scores = full[label] - probs[1:, label]
    return {
        "label": classifier.labels[label],
        "probability": float(full[label]),
        "probabilities": {name: float(p) for name, p in zip(classifier.labels, full, strict=True)},
        "words": [{"word": w, "score": round(float(s), 6)} for w, s in zip(words, scores, strict=True)],
    }


def shade(score: float, scale: float) -> str:
    """A CSS background: green toward the label, red against it, stronger with |score| / scale."""
    alpha = 0.0 if scale <= 0 else min(abs(score) / scale, 1.0) * 0.85
    rgb = "34, 139, 34" if score >= 0 else "205, 38, 38"
    return f"rgba({rgb}, {alpha:.3f})"


def html(explanation: dict, text: str) -> str:
    """The explanation as a page: each word shaded by its score, the score in its tooltip."""
    from html import escape

    scale = max((abs(w["score"]) for w in explanation["words"]), default=0.0)
    spans = " ".join(
        f'<span class="w" style="background:{shade(w["score"], scale)}" title="{w["score"]:+.4f}">'
        f"{escape(w['word'])}</span>"
        for w in explanation["words"]
    )
    rows = "".join(
        f"<tr><td>{escape(w['word'])}</td><td>{w['score']:+.4f}</td></tr>"
        for w in sorted(explanation["words"], key=lambda w: -w["score"])
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>explain: {escape(explanation["label"])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}} .w{{padding:0.15em 0.25em;border-radius:0.2em;
line-height:2.2em}} .text{{font-size:1.4em}} td{{padding:0 1em}} form input{{width:40em}}</style></head>
<body><form method="get"><input name="text" value="{escape(text)}"> <button>explain</button></form>
<h2>{escape(explanation["label"])} ({explanation["probability"]:.3f})</h2>
<p class="text">{spans}</p>
<p>Green: the word pushed toward <b>{escape(explanation["label"])}</b>; red: against it. Score: how much the
label's probability falls without the word ({escape(METHOD)}).</p>
<table><tr><th>word</th><th>score</th></tr>{rows}</table></body></html>
"""
