"""Attribution plots: image heatmaps over the input, and per-feature bar charts for tabular inputs.

Matplotlib is imported only when a plot is drawn, and only its object-oriented API with the Agg canvas is used,
so nothing here changes the user's pyplot backend or opens a window. Files are PNGs written atomically
(a temporary file renamed into place) with a size fixed by the layout: ``cell_inches × dpi`` pixels per cell.

Image maps use a diverging colour map centred at zero (red: the attribution raises the explained output, blue:
it lowers it), with symmetric limits at the 99th percentile of |attribution| of each map, drawn over the input
in grey with an opacity that grows with |attribution|, so the image shows through where attribution is small.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import InputError, check_positive_int
from ..io.writers import atomic_write

__all__ = ["plot_attributions", "plot_image_attributions", "plot_feature_attributions",
           "image_attribution_figure", "feature_attribution_figure", "save_figure", "DIVERGING_CMAP"]

DIVERGING_CMAP = "RdBu_r"
_METHOD_COLORS = ["#c0392b", "#2471a3", "#229954", "#b9770e", "#7d3c98", "#566573"]


def _as_methods(attributions) -> dict[str, np.ndarray]:
    if isinstance(attributions, Mapping):
        out = {str(k): np.asarray(v) for k, v in attributions.items()}
    else:
        out = {"attribution": np.asarray(attributions)}
    if not out:
        raise InputError("attributions: expected at least one array")
    for name, a in out.items():
        if a.dtype == object or not np.issubdtype(a.dtype, np.number):
            raise InputError(f"attributions {name!r}: expected numbers, got dtype {a.dtype}")
    return out


def _new_figure(width_in: float, height_in: float, dpi: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write ``fig`` as a PNG atomically at its own size and dpi; returns the path."""
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise InputError(f"plot: expected a .png file name, got {p.name!r}")
    return atomic_write(p, lambda tmp: fig.savefig(tmp, format="png", dpi=fig.dpi), overwrite)


# ------------------------------------------------------------------------------------------------ images
def _image_for_display(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    """An (H, W) grey or (H, W, 3) colour image scaled to [0, 1]."""
    if img.ndim == 3:
        img = img if img.shape[-1] == 3 else img.mean(axis=-1)
    img = img.astype(np.float64)
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return img, (None if img.ndim == 3 else "gray")


def _attribution_map(a: np.ndarray) -> np.ndarray:
    """(H, W) signed map: channels summed."""
    return a.sum(axis=-1) if a.ndim == 3 else a


def image_attribution_figure(x, attributions, *, max_images: int = 8, labels: Sequence[Any] | None = None,
                             cell_inches: float = 2.0, dpi: int = 100, overlay: bool = True):
    """A grid figure: one row per image, the input then one heatmap per method.

    Args:
        x: images ``(B, H, W)`` or ``(B, H, W, C)``.
        attributions: an array with the shape of ``x``, or ``{method name: array}`` for side-by-side columns.
        max_images: rows drawn (the first images).
        labels: optional text per image (a label or prediction) shown at the start of each row.
        cell_inches, dpi: each cell is ``cell_inches * dpi`` pixels square.
        overlay: draw the heatmap semi-transparently over the grey input (default) or alone.

    Returns:
        a matplotlib ``Figure`` (Agg canvas) of ``(1 + M) * cell`` by ``rows * cell`` pixels.
    """
    x = np.asarray(x)
    methods = _as_methods(attributions)
    if x.ndim not in (3, 4):
        raise InputError(f"image plot: expected images (B, H, W) or (B, H, W, C), got shape {x.shape}")
    for name, a in methods.items():
        if a.shape != x.shape:
            raise InputError(f"attributions {name!r}: expected the shape of the inputs {x.shape}, got {a.shape}")
    rows = min(len(x), check_positive_int("max_images", max_images))
    cols = 1 + len(methods)
    fig = _new_figure(cols * cell_inches, rows * cell_inches, dpi)
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.3 / (rows * cell_inches), wspace=0.05,
                        hspace=0.22)
    for i in range(rows):
        img, cmap = _image_for_display(x[i])
        ax = axes[i, 0]
        ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        text = "input" if labels is None else f"{labels[i]}"
        ax.set_title(text if i == 0 or labels is not None else "", fontsize=9)
        for j, (name, a) in enumerate(methods.items(), start=1):
            m = _attribution_map(np.asarray(a[i], np.float64))
            lim = float(np.percentile(np.abs(m), 99)) or float(np.abs(m).max()) or 1.0
            ax = axes[i, j]
            alpha = None
            if overlay:  # the input shows through where the attribution is small
                grey = img.mean(axis=-1) if img.ndim == 3 else img
                ax.imshow(grey, cmap="gray", vmin=-0.6, vmax=1.0, interpolation="nearest")
                alpha = 0.25 + 0.75 * np.clip(np.abs(m) / lim, 0.0, 1.0)
            ax.imshow(m, cmap=DIVERGING_CMAP, vmin=-lim, vmax=lim, interpolation="nearest", alpha=alpha)
            if i == 0:
                ax.set_title(name, fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def plot_image_attributions(x, attributions, path: str | os.PathLike, *, overwrite: bool = True,
                            **options) -> Path:
    """Save :func:`image_attribution_figure` as a PNG at ``path``; returns the path.

    Example:
        >>> import os, tempfile, numpy as np, tfpartials as tp
        >>> from tfpartials.reports.plots import image_attribution_figure
        >>> x = np.random.default_rng(0).random((2, 8, 8))
        >>> maps = {"saliency": x - 0.5, "ig": x}
        >>> fig = image_attribution_figure(x, maps)          # a matplotlib Figure on the Agg canvas
        >>> len(fig.axes), [ax.get_title() for ax in fig.axes[:3]]   # 2 rows: the input, then one map per method
        (6, ['input', 'saliency', 'ig'])
        >>> tmp = tempfile.TemporaryDirectory()
        >>> p = tp.plot_image_attributions(x, maps, os.path.join(tmp.name, "maps.png"))
        >>> p.name, p.stat().st_size > 0
        ('maps.png', True)
        >>> tmp.cleanup()
    """
    return save_figure(image_attribution_figure(x, attributions, **options), path, overwrite=overwrite)


# ------------------------------------------------------------------------------------------------ tabular
def feature_importance(a: np.ndarray) -> np.ndarray:
    """Mean |attribution| per feature over the examples: ``(B, F) -> (F,)``."""
    return np.abs(np.asarray(a, np.float64)).mean(axis=0)


def feature_attribution_figure(attributions, *, feature_names: Sequence[str] | None = None, top_k: int = 20,
                               title: str | None = None, width_inches: float = 7.0, dpi: int = 100):
    """Horizontal bars of mean |attribution| per feature, largest first, one colour per method.

    With several methods each is scaled to a maximum of 1 so their rankings can be compared; bars are
    ordered by the first method. Bars of a single method are red where the mean signed attribution is
    positive and blue where it is negative.

    Args:
        attributions: ``(B, F)`` array or ``{method name: (B, F) array}``.
        feature_names: ``F`` names (e.g. the CSV header); default ``x0 … x{F-1}``.
        top_k: features shown.
    """
    methods = _as_methods(attributions)
    shapes = {a.shape[1:] for a in methods.values()}
    first = next(iter(methods.values()))
    if first.ndim != 2 or len(shapes) != 1:
        raise InputError(f"feature plot: expected attributions of shape (B, F), got {first.shape}")
    num_features = first.shape[1]
    names = [f"x{j}" for j in range(num_features)] if feature_names is None else [str(n) for n in feature_names]
    if len(names) != num_features:
        raise InputError(f"feature_names: expected {num_features} names, got {len(names)}")
    k = min(num_features, check_positive_int("top_k", top_k))
    importance = {m: feature_importance(a) for m, a in methods.items()}
    order = np.argsort(-importance[next(iter(methods))], kind="stable")[:k]
    fig = _new_figure(width_inches, 1.2 + 0.32 * k * max(1, len(methods) ** 0.5), dpi)
    ax = fig.add_subplot(1, 1, 1)
    pos = np.arange(k)[::-1].astype(float)
    if len(methods) == 1:
        name, a = next(iter(methods.items()))
        signed = np.asarray(a, np.float64).mean(axis=0)[order]
        colors = [_METHOD_COLORS[0] if s >= 0 else _METHOD_COLORS[1] for s in signed]
        ax.barh(pos, importance[name][order], color=colors)
        ax.set_xlabel(f"mean |{name}|  (red: raises the output on average, blue: lowers it)")
    else:
        height = 0.8 / len(methods)
        for j, (name, imp) in enumerate(importance.items()):
            scale = imp.max() or 1.0
            ax.barh(pos + 0.4 - height * (j + 0.5), imp[order] / scale, height=height,
                    color=_METHOD_COLORS[j % len(_METHOD_COLORS)], label=name)
        ax.set_xlabel("mean |attribution| (each method scaled to a maximum of 1)")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(pos)
    ax.set_yticklabels([names[j] for j in order], fontsize=9)
    ax.set_title(title or f"feature attribution ({len(first)} examples)", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def plot_feature_attributions(attributions, path: str | os.PathLike, *, overwrite: bool = True,
                              **options) -> Path:
    """Save :func:`feature_attribution_figure` as a PNG at ``path``; returns the path.

    Example:
        >>> import os, tempfile, numpy as np, tfpartials as tp
        >>> from tfpartials.reports.plots import feature_attribution_figure
        >>> a = np.array([[1.0, -2.0, 0.5], [1.0, -2.0, 0.5]])           # (B, F) attributions
        >>> ax = feature_attribution_figure(a, feature_names=["age", "bmi", "bp"]).axes[0]
        >>> len(ax.patches), [t.get_text() for t in ax.get_yticklabels()]   # one bar per feature, largest first
        (3, ['bmi', 'age', 'bp'])
        >>> tmp = tempfile.TemporaryDirectory()
        >>> p = tp.plot_feature_attributions(a, os.path.join(tmp.name, "bars.png"), feature_names=["age", "bmi", "bp"])
        >>> p.name, p.stat().st_size > 0
        ('bars.png', True)
        >>> tmp.cleanup()
    """
    return save_figure(feature_attribution_figure(attributions, **options), path, overwrite=overwrite)


# ------------------------------------------------------------------------------------------------ dispatch
def plot_attributions(x, attributions, path: str | os.PathLike, *, feature_names: Sequence[str] | None = None,
                      overwrite: bool = True, **options) -> Path:
    """Choose the plot from the input shape: heatmaps for ``(B, H, W[, C])``, bars for ``(B, F)``.

    Example:
        >>> import numpy as np, tempfile, os
        >>> x = np.random.default_rng(0).random((2, 8, 8))
        >>> p = plot_attributions(x, {"saliency": x - 0.5}, os.path.join(tempfile.mkdtemp(), "a.png"))
        >>> p.stat().st_size > 0
        True
    """
    x = np.asarray(x)
    if x.ndim == 2:
        return plot_feature_attributions(attributions, path, feature_names=feature_names, overwrite=overwrite,
                                         **options)
    if x.ndim in (3, 4):
        return plot_image_attributions(x, attributions, path, overwrite=overwrite, **options)
    raise InputError(f"plot: expected inputs (B, F) or images (B, H, W[, C]), got shape {x.shape}")


# ------------------------------------------------------------------------------------------------ tokens
def token_attribution_figure(tokens, scores, *, max_examples: int = 8, labels: Sequence[Any] | None = None):
    """Each example's tokens as a line of text, each token on a colour by its score: red raises the explained
    output, blue lowers it, on one scale per example (its largest |score|)."""
    from matplotlib import colormaps

    tokens = np.asarray(tokens)[:max_examples]
    scores = np.asarray(scores, dtype=np.float64)[:max_examples]
    rows, length = scores.shape
    left = 1.4 if labels is not None else 0.0
    fig = _new_figure(min(2.0 + 0.75 * (length + left), 16.0), 0.55 * rows + 0.9, 110)
    ax = fig.add_axes([0.01, 0.01, 0.98, 0.98 - 0.35 / (0.55 * rows + 0.9)])
    ax.set_xlim(-left, length)
    ax.set_ylim(rows - 0.4, -0.6)
    ax.axis("off")
    cmap = colormaps["RdBu_r"]
    for i in range(rows):
        scale = np.max(np.abs(scores[i])) or 1.0
        for j in range(length):
            r = scores[i, j] / scale
            ax.text(j + 0.5, i, str(tokens[i, j]), ha="center", va="center", fontsize=9,
                    color="white" if abs(r) > 0.6 else "black",
                    bbox={"boxstyle": "round,pad=0.25", "facecolor": cmap(0.5 + 0.5 * r), "edgecolor": "none"})
        if labels is not None:
            ax.text(-0.1, i, str(labels[i]), ha="right", va="center", fontsize=8, color="0.3")
    fig.suptitle("Token attributions (integrated gradients at the embedding): red raises, blue lowers",
                 fontsize=9, x=0.01, ha="left", y=0.99, va="top")
    return fig


def plot_token_attributions(tokens, scores, path: str | os.PathLike, *, overwrite: bool = True, **kwargs) -> Path:
    """:func:`token_attribution_figure` written to ``path`` (PNG)."""
    return save_figure(token_attribution_figure(tokens, scores, **kwargs), path, overwrite=overwrite)
