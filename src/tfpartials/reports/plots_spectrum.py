"""Spectrum plots: the smoothed eigenvalue density of a curvature operator, with its top eigenvalues marked.

Matplotlib is imported only when a plot is drawn (object-oriented API on the Agg canvas: no window, the user's
pyplot backend untouched); files are PNGs written atomically. The density is drawn on a logarithmic axis by
default, because network Hessian spectra are a bulk near zero with a few outliers orders of magnitude lower.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import InputError

__all__ = ["density_figure", "plot_density"]

_LINE = "#2471a3"
_MARK = "#c0392b"


def _grid_and_values(density: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(density, Mapping):
        grid, values = density.get("grid"), density.get("values")
    elif hasattr(density, "grid") and hasattr(density, "values"):
        grid, values = density.grid, density.values
    elif isinstance(density, tuple | list) and len(density) == 2:
        grid, values = density
    else:
        raise InputError("density: expected a SpectralDensity, a {'grid', 'values'} mapping or (grid, values)")
    if grid is None or values is None:
        raise InputError("density: expected both 'grid' and 'values'")
    g = np.asarray(grid, np.float64).reshape(-1)
    v = np.asarray(values, np.float64).reshape(-1)
    if g.shape != v.shape or g.size < 2:
        raise InputError(f"density: expected grid and values of the same length >= 2, got {g.size} and {v.size}")
    if not (np.all(np.isfinite(g)) and np.all(np.isfinite(v))):
        raise InputError("density: expected finite grid and values")
    return g, v


def density_figure(density: Any, eigenvalues: Sequence[float] | None = None, *, log: bool = True,
                   title: str | None = None, width_in: float = 6.4, height_in: float = 4.0, dpi: int = 100):
    """A matplotlib Figure of the density (line) with each of ``eigenvalues`` marked by a dashed line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    grid, values = _grid_and_values(density)
    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    top = float(values.max()) if values.size and values.max() > 0 else 1.0
    if log:
        floor = top * 1e-10
        ax.semilogy(grid, np.maximum(values, floor), color=_LINE, lw=1.5, label="density (SLQ)")
        ax.set_ylim(floor, top * 3)
    else:
        ax.plot(grid, values, color=_LINE, lw=1.5, label="density (SLQ)")
        ax.set_ylim(0, top * 1.05)
    eig = [] if eigenvalues is None else [float(e) for e in np.asarray(eigenvalues, np.float64).reshape(-1)]
    shown = ", ".join(f"{e:.4g}" for e in eig[:5]) + (", ..." if len(eig) > 5 else "")
    for i, e in enumerate(eig):
        ax.axvline(e, color=_MARK, ls="--", lw=1.0, label=f"top eigenvalues: {shown}" if i == 0 else None)
        ax.annotate(f"λ{i + 1}", xy=(e, 1.0), xycoords=("data", "axes fraction"), xytext=(0, 2),
                    textcoords="offset points", ha="center", va="bottom", fontsize=8, color=_MARK)
    if eig:
        lo, hi = min(grid[0], min(eig)), max(grid[-1], max(eig))
        pad = 0.02 * (hi - lo if hi > lo else 1.0)
        ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(title or "Eigenvalue density", pad=14 if eig else 6)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    return fig


def plot_density(density: Any, path: str | os.PathLike, eigenvalues: Sequence[float] | None = None, *,
                 log: bool = True, title: str | None = None, overwrite: bool = True) -> Path:
    """Draw :func:`density_figure` and write it as a PNG atomically; returns the path.

    Example:
        >>> import os, tempfile, numpy as np, tfpartials as tp
        >>> d = tp.spectral_density(np.diag([1.0, 2.0, 3.0, 4.0]), num_probes=2, num_lanczos=4)
        >>> tmp = tempfile.TemporaryDirectory()
        >>> p = tp.plot_density(d, os.path.join(tmp.name, "density.png"), eigenvalues=[4.0])
        >>> p.name, p.stat().st_size > 0
        ('density.png', True)
        >>> tmp.cleanup()
    """
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise InputError(f"plot: expected a .png file name, got {p.name!r}")
    fig = density_figure(density, eigenvalues, log=log, title=title)
    from ..io.writers import atomic_write

    return atomic_write(p, lambda tmp: fig.savefig(tmp, format="png", dpi=fig.dpi), overwrite)
