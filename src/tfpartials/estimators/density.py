"""Spectral density of a symmetric operator by stochastic Lanczos quadrature (SLQ).

For a unit probe ``v``, ``m`` Lanczos steps give a Gauss quadrature rule ``v^T f(A) v ~ sum_i tau_i f(theta_i)``
(nodes: Ritz values; weights: squared first components of T's eigenvectors). With ``E[v v^T] = I / n`` the
average over probes estimates ``(1/n) tr f(A)``; taking ``f`` a Gaussian of width ``sigma`` gives the smoothed
eigenvalue density ``phi(t) = (1/n) sum_j N(t; lambda_j, sigma^2)``.

Reference: Ghorbani, Krishnan & Xiao, "An investigation into neural net optimization via Hessian eigenvalue
density", ICML 2019; Lin, Saad & Yang, "Approximating spectral densities of large matrices", SIAM Review 58
(2016); Ubaru, Chen & Saad, SIAM J. Matrix Anal. Appl. 38 (2017).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._checks import InputError, check_positive_float, check_positive_int, check_seed
from .._progress import progress
from ._probes import Distribution, as_operator, draw_probes, host_dtype, require_symmetric
from .lanczos import lanczos

__all__ = ["SpectralDensity", "spectral_density", "gaussian_density"]

_DEFAULT_POINTS = 1000
_SIGMA_FRACTION = 1 / 200  # default width: this fraction of the spread of the Ritz values
_PAD_SIGMAS = 6.0  # the default grid reaches this many widths past the extreme nodes


@dataclass(frozen=True)
class SpectralDensity:
    """A smoothed eigenvalue density and the quadrature it came from.

    Attributes:
        grid: ``(g,)`` increasing points.
        values: ``(g,)`` density on the grid (integrates to 1 over the default grid).
        ritz_values: ``(num_probes, m)`` Gauss nodes per probe (ascending), or None. A probe whose Krylov space
            became invariant before ``m`` steps has its rule padded with its last node at weight 0.
        ritz_weights: ``(num_probes, m)`` Gauss weights per probe (each row sums to 1), or None.
        num_matvecs: products with the operator used.
        sigma: width of the Gaussian smoothing.

    Example:
        >>> import numpy as np, tfpartials as tp
        >>> d = tp.spectral_density(np.diag([1.0, 2.0, 3.0, 4.0]), num_probes=2, num_lanczos=4)
        >>> round(d.moment(1), 8), round(d.moment(2), 8)      # mean eigenvalue, mean squared eigenvalue
        (2.5, 7.5)
        >>> d.ritz_values.shape, d.num_matvecs
        ((2, 4), 8)
    """

    grid: np.ndarray
    values: np.ndarray
    ritz_values: np.ndarray | None
    ritz_weights: np.ndarray | None
    num_matvecs: int
    sigma: float = 0.0

    def moment(self, p: int = 1) -> float:
        """``(1/n) tr(A^p)`` estimated by the quadrature rule (before smoothing; needs the nodes)."""
        if self.ritz_values is None or self.ritz_weights is None:
            raise InputError("moment needs the Ritz nodes: call spectral_density(..., return_nodes=True)")
        return float(np.mean(np.sum(self.ritz_weights * self.ritz_values ** int(p), axis=1)))

    def as_dict(self) -> dict[str, list]:
        return {"grid": self.grid.tolist(), "values": self.values.tolist()}


def gaussian_density(grid: np.ndarray, nodes: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """``phi(t) = mean_p sum_i w_pi N(t; x_pi, sigma^2)`` for nodes/weights of shape ``(num_probes, m)``."""
    grid = np.asarray(grid, np.float64)
    nodes = np.atleast_2d(nodes)
    weights = np.atleast_2d(weights)
    out = np.zeros_like(grid)
    norm = 1.0 / (np.sqrt(2 * np.pi) * sigma * nodes.shape[0])
    for x, w in zip(nodes, weights):  # one probe at a time keeps memory at O(g m)
        z = (grid[:, None] - x[None, :]) / sigma
        out += np.exp(-0.5 * z * z) @ w
    return out * norm


def _check_grid(grid) -> np.ndarray:
    g = np.asarray(grid, np.float64)
    if g.ndim != 1 or g.shape[0] < 2 or not np.all(np.isfinite(g)) or np.any(np.diff(g) <= 0):
        raise InputError(f"grid: expected an increasing 1-D array of at least 2 finite points, got shape "
                         f"{g.shape}")
    return g


def spectral_density(op, num_probes: int = 4, num_lanczos: int = 64, grid: int | np.ndarray | None = None,
                     sigma: float | None = None, seed: int = 0, return_nodes: bool = True, *,
                     distribution: Distribution = "rademacher", quiet: bool = False) -> SpectralDensity:
    """Eigenvalue density of a symmetric operator by stochastic Lanczos quadrature with Gaussian smoothing.

    Maths: ``phi(t) = (1/n_v) sum_v sum_i tau_i^v N(t; theta_i^v, sigma^2)`` with ``(theta^v, tau^v)`` the
    ``m``-point Gauss rule of Lanczos started at the unit probe ``v``; ``E[phi] -> (1/n) sum_j N(t; lambda_j,
    sigma^2)``. Its mean ``sum tau theta = v^T A v`` is Hutchinson's ``tr(A) / n`` on the same probes.

    Cost: ``num_probes * num_lanczos`` matvecs (``num_lanczos`` is clipped to ``n``) and ``O(n m^2)`` flops
    per probe for full reorthogonalisation.

    Args:
        op: a symmetric operator (Hessian, GGN, Fisher) or a square symmetric array.
        num_probes: number of random starting vectors.
        num_lanczos: Lanczos steps per probe (Gauss nodes per probe).
        grid: None (1000 points), a number of points, or an increasing array of points. Generated grids reach
            ``6 sigma`` beyond the extreme Ritz values, so the density integrates to 1 on them.
        sigma: width of the Gaussian smoothing; default 1/200 of the spread of the Ritz values.
        seed: seed of the probes.
        return_nodes: keep the Ritz values and weights in the result.
        distribution: probes before normalisation, ``"rademacher"`` or ``"gaussian"``.

    Reference: Ghorbani, Krishnan & Xiao, ICML 2019; Lin, Saad & Yang, SIAM Review 58 (2016).

    Example:
        >>> import numpy as np
        >>> d = spectral_density(np.diag(np.linspace(0.0, 1.0, 20)), num_probes=2, num_lanczos=20)
        >>> round(float(np.trapezoid(d.values, d.grid)), 6)
        1.0
    """
    op = as_operator(op)
    require_symmetric(op, "stochastic Lanczos quadrature")
    num_probes = check_positive_int("num_probes", num_probes)
    m = min(check_positive_int("num_lanczos", num_lanczos), op.n)
    rng = np.random.default_rng(check_seed(seed))
    if sigma is not None:
        sigma = check_positive_float("sigma", sigma)
    if grid is not None and not isinstance(grid, int | np.integer):
        grid = _check_grid(grid)
    elif grid is not None:
        grid = check_positive_int("grid", grid)
        if grid < 2:
            raise InputError(f"grid: expected at least 2 points, got {grid}")

    Z = draw_probes(op.n, num_probes, distribution, rng, dtype=host_dtype(op))  # float32 on big float32 models
    Z /= np.linalg.norm(Z, axis=0, keepdims=True)
    nodes = np.zeros((num_probes, m))
    weights = np.zeros((num_probes, m))
    used = 0
    with progress("spectral density (SLQ)", num_probes * m, quiet=quiet, unit="matvecs") as bar:
        for p in range(num_probes):
            dec = lanczos(op, m, v0=Z[:, p], keep_basis=False, bar=bar)
            used += dec.num_matvecs
            x, w = dec.ritz()
            steps = x.shape[0]
            nodes[p, :steps], weights[p, :steps] = x, w
            nodes[p, steps:] = x[-1]  # padding: last node, weight 0
            if steps < m:
                bar.advance(m - steps)

    lo, hi = float(nodes.min()), float(nodes.max())
    spread = hi - lo if hi > lo else max(abs(hi), 1.0)
    if sigma is None:
        sigma = spread * _SIGMA_FRACTION
    if grid is None or isinstance(grid, int):
        points = _DEFAULT_POINTS if grid is None else grid
        grid = np.linspace(lo - _PAD_SIGMAS * sigma, hi + _PAD_SIGMAS * sigma, points)
    values = gaussian_density(grid, nodes, weights, sigma)
    return SpectralDensity(grid=grid, values=values, ritz_values=nodes if return_nodes else None,
                           ritz_weights=weights if return_nodes else None, num_matvecs=used, sigma=float(sigma))
