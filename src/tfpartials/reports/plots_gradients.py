"""Report plots of gradient sizes: per-variable norms (log bar chart) and the per-example norm histogram.

matplotlib is imported lazily and drawn with the Agg canvas on a private ``Figure`` (no pyplot state), so
plotting works headless and leaves the user's matplotlib settings alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

__all__ = ["plot_gradient_norms", "plot_norm_histogram", "histogram"]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_gradient_norms(names: Sequence[str], norms: Sequence[float], path: str | os.PathLike,
                        title: str = "Loss gradient norm per variable") -> None:
    """Horizontal bars of ``norms`` on a log axis, one per variable (zero norms drawn at the axis floor).

    Cost: drawing only. Variables whose gradient is tiny relative to the others (vanishing) stand out on the
    log scale.
    """
    vals = np.asarray(norms, dtype=np.float64)
    positive = vals[np.isfinite(vals) & (vals > 0)]
    floor = positive.min() / 10 if positive.size else 1e-12
    shown = np.where(np.isfinite(vals) & (vals > 0), vals, floor)
    height = max(2.2, 0.32 * len(names) + 1.2)
    fig = _figure(8.0, min(height, 14.0))
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(names))[::-1]
    colors = ["#c2410c" if v <= floor else "#2563eb" for v in shown]
    ax.barh(y, shown - floor / 2, color=colors, left=floor / 2)
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(y)
    ax.set_yticklabels(list(names), fontsize=8)
    ax.set_xlabel("L2 norm of the loss gradient (log scale)")
    ax.set_title(title, fontsize=11)
    ax.grid(axis="x", which="major", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")


def histogram(values: np.ndarray, bins: int = 30, log: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(counts, edges) of positive ``values``, log-spaced edges when ``log`` and the range spans > 10x."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    lo, hi = float(v.min()), float(v.max())
    if log and lo > 0 and hi / lo > 10:
        edges = np.geomspace(lo, hi, bins + 1)
    else:
        if hi == lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, bins + 1)
    counts, edges = np.histogram(v, bins=edges)
    return counts, edges


def plot_norm_histogram(counts: Sequence[int], edges: Sequence[float], path: str | os.PathLike,
                        title: str = "Per-example gradient norms",
                        xlabel: str = "L2 norm of one example's loss gradient") -> None:
    """Histogram drawn from precomputed ``counts``/``edges`` (log x axis when the edges are log-spaced)."""
    counts = np.asarray(counts, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    fig = _figure(8.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    if counts.size:
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#2563eb", edgecolor="white",
               linewidth=0.5)
        if edges[0] > 0 and edges[-1] / edges[0] > 10 and np.allclose(np.diff(np.log(edges)),
                                                                      np.log(edges[1] / edges[0])):
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("examples")
    ax.set_title(title, fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")
