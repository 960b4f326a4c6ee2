"""Per-layer bar charts that stay readable from one layer to hundreds: at most 40 bars, short names.

A network with 150 layers gives 150 labels that overlap in any chart of a sensible size. The charts here draw
at most :data:`MAX_BARS` bars: all layers when there are few, else the largest by magnitude (or, on a log axis,
the largest and the smallest half each: vanishing values matter there too), kept in model order. Every layer's
number is in the report's table under the chart. Names lose the prefix all of them share and are shortened in
the middle (``block_13_expand…conv``) so that the end, which says what the layer is, stays visible.

matplotlib is imported lazily and drawn on a private ``Figure`` with the Agg canvas (no pyplot state).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

__all__ = ["MAX_BARS", "short_names", "select_bars", "plot_layer_bars", "plot_ranked_intervals"]

MAX_BARS = 40
NAME_WIDTH = 30


def short_names(names: Sequence[str], width: int = NAME_WIDTH) -> list[str]:
    """Names without the path prefix they all share, shortened in the middle to ``width`` characters.

    Example:
        >>> short_names(["model/dense/kernel", "model/dense_1/kernel"])
        ['dense/kernel', 'dense_1/kernel']
        >>> short_names(["a_really_long_layer_name_that_goes_on_and_on"], width=20)
        ['a_really_…_on_and_on']
    """
    names = [str(n) for n in names]
    if len(names) > 1:
        parts = [n.split("/") for n in names]
        common = 0
        while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
            common += 1
        names = ["/".join(p[common:]) for p in parts]
    out = []
    for n in names:
        if len(n) > width:
            head = (width - 1) // 2
            tail = width - 1 - head
            n = n[:head] + "…" + n[-tail:]
        out.append(n)
    return out


def select_bars(values: Sequence[float], limit: int = MAX_BARS, extremes: bool = False) -> np.ndarray:
    """Indices (in model order) of the bars to draw: all when ``len <= limit``, else the largest ``|value|``
    (``extremes``: the largest and the smallest half each).

    Example:
        >>> select_bars([1.0, 5.0, 2.0, 4.0], limit=2).tolist()
        [1, 3]
        >>> select_bars([1.0, 5.0, 2.0, 4.0], limit=2, extremes=True).tolist()
        [0, 1]
    """
    v = np.abs(np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0))
    if v.size <= limit:
        return np.arange(v.size)
    order = np.argsort(-v, kind="stable")
    if extremes:
        big = order[: limit - limit // 2]
        small = order[::-1][: limit // 2]
        chosen = np.union1d(big, small)
    else:
        chosen = order[:limit]
    return np.sort(chosen)


def plot_layer_bars(names: Sequence[str], values: Sequence[float], path: str | os.PathLike, *,
                    errors: Sequence[float | None] | None = None, title: str = "", xlabel: str = "",
                    log: bool = False, limit: int = MAX_BARS) -> int:
    """Horizontal bars of per-layer ``values`` (at most ``limit``), with ``±2 errors`` whiskers; returns how
    many bars were drawn.

    Cost: drawing only. On a log axis non-positive values are drawn at the axis floor in another colour.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    vals = np.asarray(values, dtype=np.float64)
    idx = select_bars(vals, limit, extremes=log)
    labels = short_names([names[i] for i in idx])
    shown = vals[idx]
    err = None
    if errors is not None:
        err = np.array([np.nan if errors[i] is None else float(errors[i]) for i in idx])
        err = np.where(np.isfinite(err), 2 * err, 0.0)
    height = min(max(2.4, 0.26 * len(idx) + 1.4), 12.5)
    fig = Figure(figsize=(8.0, height), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(idx))[::-1]
    if log:
        positive = shown[np.isfinite(shown) & (shown > 0)]
        floor = positive.min() / 10 if positive.size else 1e-12
        drawn = np.where(np.isfinite(shown) & (shown > 0), shown, floor)
        colors = ["#c2410c" if d <= floor else "#2563eb" for d in drawn]
        ax.barh(y, drawn - floor / 2, left=floor / 2, color=colors)
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        colors = ["#2563eb" if v >= 0 else "#c2410c" for v in np.nan_to_num(shown)]
        ax.barh(y, np.nan_to_num(shown), color=colors, xerr=err, ecolor="#374151", capsize=2,
                error_kw={"lw": 0.8})
        ax.axvline(0.0, color="#6b7280", lw=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8 if len(idx) > 20 else 9)
    ax.set_ylim(-0.7, len(idx) - 0.3)
    ax.set_xlabel(xlabel)
    if len(idx) < len(vals):
        title = f"{title} ({len(idx)} of {len(vals)} layers)" if title else f"{len(idx)} of {len(vals)} layers"
    ax.set_title(title, fontsize=11)
    ax.grid(axis="x", which="major", alpha=0.3)
    fig.tight_layout()
    from ..io.writers import atomic_write

    atomic_write(os.fspath(path), lambda tmp: fig.savefig(tmp, format="png"), True)
    return int(len(idx))


def plot_ranked_intervals(names: Sequence[str], values: Sequence[float], intervals: Sequence[tuple[float, float]],
                          path: str | os.PathLike, *, title: str = "", xlabel: str = "", limit: int = MAX_BARS) -> int:
    """Bars of already ranked ``values`` (largest first, at most ``limit``) with ``(low, high)`` interval whiskers;
    returns how many were drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = min(limit, len(values))
    vals = np.asarray(values, dtype=np.float64)[:k]
    iv = np.asarray(intervals, dtype=np.float64).reshape(-1, 2)[:k]
    lo = np.clip(vals - iv[:, 0], 0, None)
    hi = np.clip(iv[:, 1] - vals, 0, None)
    fig = Figure(figsize=(8.0, min(max(2.4, 0.26 * k + 1.4), 12.5)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(k)[::-1]
    ax.barh(y, vals, color="#2563eb", xerr=np.vstack([lo, hi]), ecolor="#374151", capsize=2,
            error_kw={"lw": 0.8})
    ax.set_yticks(y)
    ax.set_yticklabels(short_names(list(names)[:k]), fontsize=8 if k > 20 else 9)
    ax.set_ylim(-0.7, k - 0.3)
    ax.set_xlabel(xlabel)
    if k < len(values):
        title = f"{title} (top {k} of {len(values)})"
    ax.set_title(title, fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    from ..io.writers import atomic_write

    atomic_write(os.fspath(path), lambda tmp: fig.savefig(tmp, format="png"), True)
    return int(k)
