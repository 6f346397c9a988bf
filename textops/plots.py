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


# The head-averaged map writes each weight in its cell up to this many tokens, smaller past CELL_TEXT_SMALL.
CELL_TEXT_MAX = 24
CELL_TEXT_SMALL = 12


def attention_figure(attention: np.ndarray, tokens: list[str], title: str, causal: bool = False):
    """The figure attention_png saves: the mean over heads on top, with its weights written in the cells
    (2 decimals; smaller type past CELL_TEXT_SMALL tokens, none past CELL_TEXT_MAX), then each head; every
    map has a colour bar. The heads share one colour scale, so they compare. causal: the positions a token
    cannot see (above the diagonal) are left blank. The caller closes the figure."""
    attention = np.asarray(attention, dtype=float)
    if attention.ndim != 3 or attention.shape[1] != attention.shape[2] or attention.shape[1] != len(tokens):
        raise ValueError(
            f"attention must be (heads, seq, seq) with seq = {len(tokens)} tokens, got shape {attention.shape}"
        )
    plt = _pyplot()
    heads, n = attention.shape[0], len(tokens)
    hidden = np.triu(np.ones((n, n), dtype=bool), k=1) if causal else np.zeros((n, n), dtype=bool)
    cols = min(heads, 4) or 1
    head_rows = (heads + cols - 1) // cols
    cell = 0.5 if n <= CELL_TEXT_MAX else 0.25  # inches per token on the mean map: room for "0.12"
    mean_size = cell * n + 2.5
    head_size = 0.2 * n + 2
    fig = plt.figure(
        figsize=(max(mean_size, head_size * cols), mean_size + head_size * head_rows), layout="constrained"
    )
    grid = fig.add_gridspec(1 + head_rows, cols, height_ratios=[mean_size] + [head_size] * head_rows)

    mean = np.ma.masked_array(attention.mean(axis=0), hidden)
    ax = fig.add_subplot(grid[0, :])
    image = ax.imshow(mean, cmap="viridis", vmin=0)
    fig.colorbar(image, cax=ax.inset_axes([1.02, 0.0, 0.03, 1.0]), label="attention weight")
    ax.set_title(f"{title}\nlast layer, mean of {heads} heads (row: the attending token)", fontsize=9)
    ax.set_xticks(range(n), tokens, rotation=90, fontsize=7)
    ax.set_yticks(range(n), tokens, fontsize=7)
    if n <= CELL_TEXT_MAX:
        size, middle = (7 if n <= CELL_TEXT_SMALL else 5.5), (mean.max() or 1) / 2
        for (i, j), v in np.ndenumerate(mean.filled(np.nan)):
            if not np.isnan(v):
                colour = "black" if v > middle else "white"  # viridis is dark at the low end
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=size, color=colour)

    top = float(attention.max()) or 1.0
    for h in range(heads):
        sub = fig.add_subplot(grid[1 + h // cols, h % cols])
        shown = sub.imshow(np.ma.masked_array(attention[h], hidden), cmap="viridis", vmin=0, vmax=top)
        fig.colorbar(shown, cax=sub.inset_axes([1.03, 0.0, 0.05, 1.0]))
        sub.set_title(f"head {h}", fontsize=8)
        sub.set_xticks([])
        sub.set_yticks(range(n), tokens, fontsize=5)
    return fig


def attention_png(attention: np.ndarray, tokens: list[str], path: Path, title: str, causal: bool = False) -> None:
    """attention: (heads, seq, seq) of the last layer; saves attention_figure's figure as a PNG."""
    plt = _pyplot()
    fig = attention_figure(attention, tokens, title, causal)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
