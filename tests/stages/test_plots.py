"""Attention heatmaps: a colour bar on every map, the head-averaged weights written in its cells."""

from __future__ import annotations

import numpy as np
import pytest

from textops.plots import CELL_TEXT_MAX, attention_figure, attention_png


def attention(heads: int, n: int, causal: bool, seed: int = 0) -> np.ndarray:
    weights = np.random.default_rng(seed).random((heads, n, n))
    if causal:
        weights = np.tril(weights)
    return weights / weights.sum(-1, keepdims=True)


def maps(fig) -> list:
    return [image for ax in fig.axes for image in ax.get_images()]


@pytest.mark.parametrize("causal", [False, True])
def test_every_map_has_a_colour_bar_and_the_mean_its_numbers(causal):
    import matplotlib.pyplot as plt

    weights = attention(2, 3, causal)
    fig = attention_figure(weights, ["a", "b", "c"], "a b c", causal=causal)
    try:
        images = maps(fig)
        assert len(images) == 3 and all(image.colorbar is not None for image in images)  # mean + 2 heads
        mean_ax = images[0].axes
        mean = weights.mean(axis=0)
        visible = [(i, j) for i in range(3) for j in range(3) if not (causal and j > i)]
        written = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in mean_ax.texts}
        assert written == {(i, j): f"{mean[i, j]:.2f}" for i, j in visible}
        assert all(not ax.texts for ax in fig.axes if ax is not mean_ax)  # heads carry no numbers
    finally:
        plt.close(fig)


def test_long_sequences_skip_the_numbers_and_bad_shapes_fail(tmp_path):
    import matplotlib.pyplot as plt

    n = CELL_TEXT_MAX + 1
    fig = attention_figure(attention(1, n, True), [str(i) for i in range(n)], "long", causal=True)
    try:
        assert not any(ax.texts for ax in fig.axes) and all(image.colorbar is not None for image in maps(fig))
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match=r"seq = 2 tokens, got shape \(1, 3, 3\)"):
        attention_figure(attention(1, 3, False), ["a", "b"], "mismatch")
    attention_png(attention(2, 4, False), list("abcd"), tmp_path / "sub" / "x.png", "saved")
    assert (tmp_path / "sub" / "x.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
