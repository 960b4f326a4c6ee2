"""One curvature summary of a symmetric operator: top eigenvalues, trace, diagonal and spectral density.

``tfpartials spectrum`` and the report's curvature section both call :func:`summarize_curvature`, so the same
settings and seed give the same numbers and the same JSON (:meth:`CurvatureSummary.to_json`) in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .._checks import (
    InputError,
    check_choice,
    check_nonnegative_int,
    check_positive_float,
    check_positive_int,
    check_seed,
)
from .._memory import require_fits, resolve_budget
from ._probes import as_operator, require_symmetric
from .density import SpectralDensity, spectral_density
from .diagonal import DiagonalEstimate, hutchinson_diagonal
from .eigenvalues import EigenResult, _order, top_eigenvalues
from .layerwise import BlockTrace, LayerwiseTrace, _block_indices, layerwise_trace
from .trace import TraceEstimate, hutchinson_trace, hutchpp_trace

__all__ = ["CurvatureSummary", "summarize_curvature", "TRACE_METHODS"]

#: trace estimators: Hutch++ (fixed products), Hutchinson (fixed products), or Hutchinson with every layer's
#: trace from the same probes, stopped at a relative standard error (``layerwise``)
TRACE_METHODS = ("hutchpp", "hutchinson", "layerwise")
TraceMethod = Literal["hutchpp", "hutchinson", "layerwise"]


@dataclass(frozen=True)
class CurvatureSummary:
    """What :func:`summarize_curvature` computed; a part not asked for is None.

    Attributes:
        num_parameters: the operator's size ``n``.
        exact: True when every number came from the dense matrix (``n`` unit-vector products).
        seed: the seed of every random start vector and probe.
        eigen: the top eigenvalues (in the order of ``which``) with residual norms; exact: zero residuals.
        tol: the relative residual tolerance the eigenvalues were asked for.
        trace: a :class:`TraceEstimate`, or a :class:`LayerwiseTrace` (``trace_method="layerwise"``).
        trace_method: ``"hutchpp"``, ``"hutchinson"`` or ``"layerwise"`` (``"dense"`` when exact).
        diagonal: the diagonal with per-entry standard errors.
        density: the SLQ spectral density (with its Gauss nodes).
        num_matvecs: products with the operator the summary used.
    """

    num_parameters: int
    exact: bool
    seed: int
    eigen: EigenResult | None = None
    tol: float = 0.0
    trace: TraceEstimate | LayerwiseTrace | None = None
    trace_method: str = ""
    diagonal: DiagonalEstimate | None = None
    density: SpectralDensity | None = None
    num_matvecs: int = 0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready numbers: the keys of ``tfpartials spectrum``'s output (eigenvalues descending).

        ``eigenvalues``, ``eigen`` {``which``, ``residual_norms``, ``converged``, ``num_matvecs``, ``tol``},
        ``trace`` {``value``, ``std_error``, ``num_matvecs``, ``method``, ``exact``; layerwise also ``stopped``,
        ``rel_tol``}, ``layer_traces`` (layerwise: one record per layer), ``diagonal`` {``values``,
        ``std_error`` (by parameter name), ``num_matvecs``}, ``density`` {``grid``, ``values``, ``sigma``,
        ``num_probes``, ``num_lanczos``, ``num_matvecs``, ``ritz_values``, ``ritz_weights``}, plus
        ``num_parameters``, ``exact``, ``seed`` and ``num_matvecs``.
        """
        out: dict[str, Any] = {"num_parameters": self.num_parameters, "exact": self.exact, "seed": self.seed}
        if self.eigen is not None:
            e = self.eigen
            order = np.argsort(-e.eigenvalues, kind="stable")
            out["eigenvalues"] = [float(v) for v in e.eigenvalues[order]]
            out["eigen"] = {"which": e.which, "residual_norms": [float(r) for r in e.residual_norms[order]],
                            "converged": bool(e.converged), "num_matvecs": int(e.num_matvecs),
                            "tol": self.tol, "exact": self.exact}
        if self.trace is not None:
            tr = {k: v for k, v in self.trace.as_dict().items() if k != "blocks"}
            out["trace"] = {**tr, "method": self.trace_method, "exact": self.exact}
            if isinstance(self.trace, LayerwiseTrace):
                out["layer_traces"] = [
                    {"layer": b.name, "num_parameters": b.num_parameters, "trace": float(b.value),
                     "std_error": None if np.isnan(b.std_error) else float(b.std_error), "exact": self.exact,
                     "trace_per_parameter": float(b.value) / b.num_parameters} for b in self.trace.blocks]
        if self.diagonal is not None:
            dg = self.diagonal
            named = dg.space is not None
            values = dg.as_dict() if named else {"diagonal": dg.values}
            errors = dg.std_error_dict() if named else {"diagonal": dg.std_error}
            out["diagonal"] = {"values": {k: np.asarray(v).tolist() for k, v in values.items()},
                               "std_error": {k: np.asarray(v).tolist() for k, v in errors.items()},
                               "num_matvecs": int(dg.num_matvecs), "exact": self.exact}
        if self.density is not None:
            d = self.density
            out["density"] = {**d.as_dict(), "sigma": float(d.sigma), "num_probes": int(d.ritz_values.shape[0]),
                              "num_lanczos": int(d.ritz_values.shape[1]), "num_matvecs": int(d.num_matvecs),
                              "ritz_values": d.ritz_values.tolist(), "ritz_weights": d.ritz_weights.tolist()}
        out["num_matvecs"] = int(self.num_matvecs)
        return out


def dense_route(n: int, top_k: int, max_matvecs: int | None, exact_limit: int) -> bool:
    """Whether :func:`summarize_curvature` takes the dense matrix for every quantity: ``n <= exact_limit`` and no
    eigenvalue budget below ``n``, or more eigenvalues asked than a Krylov solver can give."""
    return (n <= exact_limit and (max_matvecs is None or n <= max_matvecs)) or top_k >= n


def summarize_curvature(op, *, top_k: int = 3, which: str = "largest", tol: float = 1e-6,
                        max_matvecs: int | None = None, trace: bool = False, trace_method: TraceMethod = "hutchpp",
                        num_matvecs: int = 99, trace_rel_tol: float = 0.05, diagonal: bool = False,
                        density: bool = False, density_probes: int = 4, density_steps: int = 64,
                        density_grid: int | np.ndarray | None = None, exact_limit: int | None = None,
                        seed: int = 0, quiet: bool = False) -> CurvatureSummary:
    """Top eigenvalues, trace, diagonal and spectral density of a symmetric operator, exact when it is small.

    The one rule for "exact if small": the dense matrix (``n`` unit-vector products) is used for every quantity
    when ``n <= exact_limit`` (default ``num_matvecs``: ``n`` products then cost no more than one stochastic
    estimate) and no eigenvalue budget ``max_matvecs < n`` was given, or when ``top_k >= n`` (more eigenvalues
    than a Krylov solver can give). Otherwise: thick-restart Lanczos for the eigenvalues, Hutch++ / Hutchinson /
    layerwise Hutchinson for the trace, Hutchinson for the diagonal, and stochastic Lanczos quadrature for the
    density, all seeded with ``seed``.

    Maths: exact route ``H = Q diag(lambda) Q^T`` (``numpy.linalg.eigh`` in float64), ``tr H = sum_i H_ii``.

    Cost: exact ``n`` products and ``O(n^3)`` host flops; otherwise at most ``max_matvecs`` (Lanczos) +
    ``num_matvecs`` (trace) + ``num_matvecs`` (diagonal) + ``density_probes * density_steps`` products.

    Args:
        op: a symmetric :class:`~tfpartials.linalg.operator.LinearOperator` or a square symmetric array.
        top_k: number of top eigenvalues (0: none).
        which: ``"largest"``, ``"smallest"`` or ``"magnitude"`` (see :func:`top_eigenvalues`).
        tol: relative residual tolerance of the eigenvalues.
        max_matvecs: at most this many Lanczos products (None: the solver's default).
        trace: estimate the trace.
        trace_method: ``"hutchpp"`` or ``"hutchinson"`` (``num_matvecs`` products), or ``"layerwise"`` (every
            layer's trace from the same probes, stopped at ``trace_rel_tol`` or ``num_matvecs``).
        num_matvecs: products for the trace and for the diagonal, each.
        trace_rel_tol: relative standard error at which ``"layerwise"`` stops.
        diagonal: estimate the diagonal.
        density: estimate the eigenvalue density.
        density_probes: random probes of the density.
        density_steps: Lanczos steps per probe (clipped to ``n``).
        density_grid: the density's grid (see :func:`spectral_density`; default 1000 points).
        exact_limit: largest ``n`` for the dense route (default ``num_matvecs``; 0 only when ``top_k >= n``).
        seed: seed of every start vector and probe (same seed, same numbers).
        quiet: no progress bars.

    Returns:
        A :class:`CurvatureSummary`; ``to_json()`` gives the numbers as ``tfpartials spectrum`` writes them.

    Raises:
        InputError: a non-symmetric operator for eigenvalues or density, bad counts, or nothing asked for.

    Reference: Ghorbani, Krishnan & Xiao, "An investigation into neural net optimization via Hessian eigenvalue
    density" (ICML 2019); Meyer et al., "Hutch++" (SOSA 2021).

    Example:
        >>> import numpy as np
        >>> s = summarize_curvature(np.diag([4.0, 3.0, 2.0, 1.0]), top_k=2, trace=True)
        >>> s.exact, s.to_json()["eigenvalues"], s.to_json()["trace"]["value"]
        (True, [4.0, 3.0], 10.0)
    """
    op = as_operator(op)
    top_k = check_nonnegative_int("top_k", top_k)
    check_choice("which", which, ("largest", "smallest", "magnitude"))
    check_choice("trace_method", trace_method, TRACE_METHODS)
    num_matvecs = check_positive_int("num_matvecs", num_matvecs)
    density_probes = check_positive_int("density_probes", density_probes)
    density_steps = check_positive_int("density_steps", density_steps)
    tol = check_positive_float("tol", tol)
    seed = check_seed(seed)
    if max_matvecs is not None:
        max_matvecs = check_positive_int("max_matvecs", max_matvecs)
    exact_limit = num_matvecs if exact_limit is None else check_nonnegative_int("exact_limit", exact_limit)
    if not (top_k or trace or diagonal or density):
        raise InputError("summarize_curvature: nothing to compute: ask for top_k >= 1, trace, diagonal or density")
    if top_k or density:
        require_symmetric(op, "summarize_curvature")
    n, start = op.n, op.num_matvecs
    exact = dense_route(n, top_k, max_matvecs, exact_limit)
    method = "dense" if exact else trace_method
    parts: dict[str, Any] = {}
    if exact:
        require_fits(8 * n * n, resolve_budget(None), f"the dense {n} x {n} curvature matrix",
                     "lower exact_limit for the matrix-free estimates")
        dense = np.asarray(op.to_dense(), dtype=np.float64)
        dense = (dense + dense.T) / 2 if op.symmetric else dense
        diag = np.diag(dense).copy()
        if top_k:
            vals, vecs = np.linalg.eigh(dense)
            pick = _order(vals, which)[:min(top_k, n)]
            parts["eigen"] = EigenResult(vals[pick], vecs[:, pick], np.zeros(pick.size), n, True, which,
                                         space=op.space)
        if trace:
            parts["trace"] = _exact_trace(op, diag, trace_method, trace_rel_tol, n)
        if diagonal:
            parts["diagonal"] = DiagonalEstimate(diag, np.zeros(n), n, space=op.space)
        if density:
            from ..linalg.dense import DenseOperator

            parts["density"] = spectral_density(DenseOperator(dense, symmetric=True), num_probes=density_probes,
                                                num_lanczos=density_steps, grid=density_grid, seed=seed,
                                                quiet=quiet)
    else:
        if top_k:
            parts["eigen"] = top_eigenvalues(op, k=top_k, which=which, tol=tol, max_matvecs=max_matvecs, seed=seed,
                                             quiet=quiet)
        if trace and trace_method == "layerwise":
            parts["trace"] = layerwise_trace(op, rel_tol=trace_rel_tol, max_matvecs=num_matvecs,
                                             min_matvecs=min(8, num_matvecs), block_size=8, seed=seed, quiet=quiet)
        elif trace:
            estimator = hutchpp_trace if trace_method == "hutchpp" else hutchinson_trace
            parts["trace"] = estimator(op, num_matvecs, seed=seed, quiet=quiet)
        if diagonal:
            parts["diagonal"] = hutchinson_diagonal(op, num_matvecs, seed=seed, quiet=quiet)
        if density:
            parts["density"] = spectral_density(op, num_probes=density_probes, num_lanczos=density_steps,
                                                grid=density_grid, seed=seed, quiet=quiet)
    return CurvatureSummary(num_parameters=n, exact=exact, seed=seed, tol=tol, trace_method=method if trace else "",
                            num_matvecs=int(op.num_matvecs - start), **parts)


def _exact_trace(op, diag: np.ndarray, method: str, rel_tol: float, n: int) -> TraceEstimate | LayerwiseTrace:
    """The trace from the exact diagonal, in the form the asked method returns (layer blocks for layerwise)."""
    if method != "layerwise":
        return TraceEstimate(float(diag.sum()), 0.0, n)
    blocks = tuple(BlockTrace(name, int(idx.size), float(diag[idx].sum()), 0.0)
                   for name, idx in _block_indices(op, None))
    return LayerwiseTrace(float(diag.sum()), 0.0, n, "exact", rel_tol, blocks, diag, np.zeros(n), space=op.space)
