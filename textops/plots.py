"""PNG figures: confusion matrix and attention heatmaps (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def confusion_png(matrix: list[list[int]], names: list[str], path: Path) -> None:
    plt = _pyplot()
    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(names), 1.2 + 1.2 * len(names)))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=30)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > m.max() / 2 else "black")
    ax.set_title("confusion matrix (eval)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def attention_png(attention: np.ndarray, tokens: list[str], path: Path, title: str) -> None:
    """attention: (heads, seq, seq) of the last layer; draws the head mean and each head."""
    plt = _pyplot()
    heads = attention.shape[0]
    cols = min(heads, 4) or 1
    rows = 1 + (heads + cols - 1) // cols
    size = 0.25 * len(tokens) + 2
    fig = plt.figure(figsize=(size * cols, size * rows))
    ax = fig.add_subplot(rows, 1, 1)
    ax.imshow(attention.mean(axis=0), cmap="viridis")
    ax.set_title(f"{title}\nlast layer, mean of {heads} heads", fontsize=9)
    ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
    ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
    for h in range(heads):
        sub = fig.add_subplot(rows, cols, cols + h + 1)
        sub.imshow(attention[h], cmap="viridis")
        sub.set_title(f"head {h}", fontsize=8)
        sub.set_xticks([])
        sub.set_yticks(range(len(tokens)), tokens, fontsize=5)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
