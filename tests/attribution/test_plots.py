"""Attribution plots: PNGs exist, have the size the layout promises, and show the attribution."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest

from tests import models as M
from tfpartials._checks import InputError
from tfpartials.attribution import IntegratedGradients, Saliency
from tfpartials.reports.plots import (
    feature_attribution_figure,
    image_attribution_figure,
    plot_attributions,
    plot_feature_attributions,
    plot_image_attributions,
    save_figure,
)


def _crop(png: np.ndarray, fig, ax) -> np.ndarray:
    """The pixels of one axes of a saved figure (matplotlib's y axis points up, the image's down)."""
    box = ax.get_window_extent()
    height = png.shape[0]
    return png[int(height - box.y1) + 2:int(height - box.y0) - 2, int(box.x0) + 2:int(box.x1) - 2, :3]


def test_image_heatmaps_have_the_right_size_and_are_not_constant(tmp_path, digits):
    model, x, y = digits
    x = x[:3]
    attr = {"saliency": Saliency(model).attribute(x), "integrated gradients": IntegratedGradients(
        model, steps=16).attribute(x)}
    fig = image_attribution_figure(x, attr, labels=[f"label {t}" for t in y[:3]], cell_inches=1.5, dpi=80)
    path = save_figure(fig, tmp_path / "digits.png")
    png = mpimg.imread(path)
    assert path.stat().st_size > 1000
    assert png.shape[:2] == (3 * 120, 3 * 120)  # rows x (input + 2 methods), 1.5 in x 80 dpi per cell
    axes = np.array(fig.axes).reshape(3, 3)
    for j in (1, 2):
        cell = _crop(png, fig, axes[0, j])
        assert cell.size and cell.std() > 0.05  # a heatmap with structure, not one colour
    # a model whose attribution is constant (zero for a constant input) draws a constant cell
    flat = np.zeros_like(x)
    fig0 = image_attribution_figure(flat, {"zero": np.zeros_like(x)}, overlay=False)
    png0 = mpimg.imread(save_figure(fig0, tmp_path / "zero.png"))
    assert _crop(png0, fig0, np.array(fig0.axes).reshape(3, 2)[0, 1]).std() < 0.01


def test_rgb_images_and_channel_sum(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((2, 10, 12, 3)).astype(np.float32)
    path = plot_image_attributions(x, x - 0.5, tmp_path / "rgb.png", dpi=50, cell_inches=2.0)
    assert mpimg.imread(path).shape[:2] == (2 * 100, 2 * 100)


def test_feature_bars_with_names(tmp_path, diabetes):
    model, x, _, names = diabetes
    ig = IntegratedGradients(model, steps=16).attribute(x)
    path = plot_feature_attributions({"integrated gradients": ig, "saliency": Saliency(model).attribute(x)},
                                     tmp_path / "bars.png", feature_names=names, top_k=6, dpi=60)
    png = mpimg.imread(path)
    assert png.shape[1] == 7 * 60 and png.shape[0] > 100 and png[..., :3].std() > 0.05
    fig = feature_attribution_figure(ig, feature_names=names, top_k=4)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    order = np.argsort(-np.abs(ig).mean(0))[:4]
    assert labels == [names[j] for j in order]
    ticks = fig.axes[0].get_yticks()
    assert np.all(np.diff(ticks) < 0)  # the largest feature is drawn at the top


def test_dispatch_by_input_shape(tmp_path):
    rng = np.random.default_rng(1)
    tab = rng.normal(size=(5, 3))
    img = rng.random((2, 6, 6))
    assert plot_attributions(tab, tab, tmp_path / "t.png", feature_names=["a", "b", "c"]).exists()
    assert plot_attributions(img, img, tmp_path / "i.png").exists()
    with pytest.raises(InputError, match=r"expected inputs \(B, F\) or images"):
        plot_attributions(rng.random((2, 2, 2, 2, 2)), rng.random((2, 2, 2, 2, 2)), tmp_path / "x.png")


def test_errors_and_atomic_overwrite(tmp_path):
    x = np.zeros((2, 4, 4))
    with pytest.raises(InputError, match=r"expected the shape of the inputs \(2, 4, 4\), got \(2, 4\)"):
        plot_image_attributions(x, np.zeros((2, 4)), tmp_path / "a.png")
    with pytest.raises(InputError, match="feature_names: expected 3 names, got 2"):
        plot_feature_attributions(np.zeros((2, 3)), tmp_path / "b.png", feature_names=["a", "b"])
    with pytest.raises(InputError, match="expected a .png file name"):
        plot_feature_attributions(np.zeros((2, 3)), tmp_path / "b.pdf")
    target = tmp_path / "c.png"
    plot_feature_attributions(np.ones((2, 3)), target)
    with pytest.raises(InputError, match="already exists"):
        plot_feature_attributions(np.ones((2, 3)), target, overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png"]  # no temporary files left behind


def test_no_pyplot_backend_change():
    import sys

    model, x, _ = M.small_cnn(n=2)
    had_pyplot = "matplotlib.pyplot" in sys.modules
    image_attribution_figure(x, Saliency(model).attribute(x))
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot  # drawn with the Agg canvas, pyplot untouched
