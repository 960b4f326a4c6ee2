"""Extreme eigenpairs of a symmetric operator: thick-restart Lanczos, and power iteration for comparison.

``top_eigenvalues`` expands a Krylov basis one matvec at a time (full reorthogonalisation), computes the Ritz
pairs of the projected matrix after every step, and stops as soon as the ``k`` wanted ones have Ritz residuals
``|A y - theta y| = |beta_m s_m|`` below ``tol * |theta|``. When the basis is full it keeps the best Ritz
vectors and the residual direction and continues (thick restart), so memory stays at ``n (m + 1)`` floats.

References: Wu & Simon, "Thick-restart Lanczos method for large symmetric eigenvalue problems", SIAM J. Matrix
Anal. Appl. 22 (2000); Yao et al., "PyHessian: neural networks through the lens of the Hessian" (2020) for the
power iteration used in practice.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import InitVar, dataclass
from typing import Any, Literal

import numpy as np

from .._checks import InputError, check_choice, check_positive_float, check_positive_int, check_seed
from .._memory import default_budget, require_fits
from .._progress import progress
from ._graph_lanczos import GraphSteps
from ._probes import (
    HostThreads,
    apply,
    as_operator,
    host_dtype,
    operator_eps,
    require_symmetric,
    split_by_space,
)
from .lanczos import breakdown_threshold, orthogonalize

__all__ = ["EigenResult", "top_eigenvalues", "power_iteration"]

Which = Literal["largest", "smallest", "magnitude"]


@dataclass(frozen=True)
class EigenResult:
    """Eigenpairs found by an iterative solver.

    Attributes:
        eigenvalues: ``(k,)`` in the order asked: descending for ``"largest"``, ascending for ``"smallest"``,
            descending ``|lambda|`` for ``"magnitude"``.
        eigenvectors: ``(n, k)`` unit eigenvectors, column ``i`` for ``eigenvalues[i]``.
        residual_norms: ``(k,)`` Ritz residual norms ``|A y_i - lambda_i y_i|``; each bounds the error of its
            eigenvalue (``|lambda_i - lambda| <= residual`` for some true eigenvalue ``lambda``).
        num_matvecs: products with the operator used.
        converged: every residual met the tolerance.
        which: the part of the spectrum asked for.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="lin")])
        >>> x = np.array([[1.0, 0.0], [0.0, 2.0]], "float32"); y = np.zeros((2, 1), "float32")
        >>> res = tp.top_eigenvalues(tp.HessianOperator(model, (x, y), loss="mse"), k=1)
        >>> X1 = np.hstack([x, np.ones((2, 1))])                      # H = (2/N) [X 1]^T [X 1], N = 2
        >>> bool(np.isclose(res.eigenvalues[0], np.linalg.eigvalsh(X1.T @ X1)[-1], rtol=1e-5))
        True
        >>> res.eigenvectors.shape, res.converged
        ((3, 1), True)
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    residual_norms: np.ndarray
    num_matvecs: int
    converged: bool
    which: str = "largest"
    space: InitVar[Any] = None  # the operator's ParameterSpace, kept out of fields() (and of JSON)

    def __post_init__(self, space: Any) -> None:
        object.__setattr__(self, "_space", space)

    def eigenvector_dict(self, i: int = 0) -> dict[str, np.ndarray]:
        """Eigenvector ``i`` as ``{parameter name: array}`` (needs a parameter-space operator)."""
        k = self.eigenvalues.shape[0]
        if isinstance(i, bool) or not isinstance(i, int | np.integer) or not -k <= i < k:
            raise InputError(f"i: expected an eigenvector index in [0, {k}), got {i!r}")
        return split_by_space(self._space, self.eigenvectors[:, i], "eigenvector_dict")



# read access to the space given at construction (an InitVar, so it is no dataclass field and no JSON key)
EigenResult.space = property(lambda self: self._space, doc="The operator's ParameterSpace, or None.")  # type: ignore[assignment,method-assign]

def _order(theta: np.ndarray, which: str) -> np.ndarray:
    if which == "largest":
        return np.argsort(-theta, kind="stable")
    if which == "smallest":
        return np.argsort(theta, kind="stable")
    return np.argsort(-np.abs(theta), kind="stable")


def top_eigenvalues(op, k: int = 1, which: Which = "largest", tol: float = 1e-6, max_matvecs: int | None = None,
                    seed: int = 0, *, num_basis: int | None = None, quiet: bool = False,
                    compiled: bool = False) -> EigenResult:
    """The ``k`` extreme eigenvalues (and eigenvectors) of a symmetric operator by thick-restart Lanczos.

    Maths: Rayleigh-Ritz on the Krylov space, ``A Q = Q T + beta q e_m^T``; a Ritz pair ``(theta, Q s)`` has
    residual ``|beta s_m|`` and converged once that is ``<= tol * |theta|`` (or the round-off floor of the
    operator's dtype, ``100 eps |A|``).

    Cost: typically ``k + 10`` to ``30`` matvecs for well-separated top eigenvalues of a network Hessian (see
    ``benchmarks/bench_spectrum.py``), at most ``max_matvecs``; ``O(n m^2)`` host flops; ``n (m + 1)`` floats.

    Repeated eigenvalues: a single Krylov sequence sees one copy of each; when the Krylov space becomes
    invariant the solver restarts in its orthogonal complement (and searches there for ``k + 1`` steps before
    stopping), so copies are found then. As with every Krylov solver, eigenvalues whose eigenvectors the start
    vector barely touches can be found late.

    Args:
        op: a symmetric :class:`~tfpartials.linalg.operator.LinearOperator` (HessianOperator, GGNOperator, ...)
            or a square symmetric array.
        k: number of eigenpairs, ``1 <= k < n``.
        which: ``"largest"`` (algebraic, the sharpness of a loss), ``"smallest"`` (algebraic, e.g. negative
            curvature) or ``"magnitude"``.
        tol: relative residual tolerance.
        max_matvecs: stop (with ``converged=False`` and a warning) after this many products; default
            ``max(500, 25 m)``.
        seed: seed of the start vector.
        num_basis: Krylov basis size ``m`` before a restart, ``k < m <= n``; default ``min(n, max(2k+1, k+20))``.
        quiet: no progress bar.
        compiled: run the steps between host decisions (restarts, breakdowns, the end) in one compiled
            ``tf.while_loop`` when the operator allows it (a :class:`~tfpartials.HessianOperator` of one
            in-memory batch, under 1M parameters; other operators keep the host loop): same algorithm and
            stopping rule, results equal to round-off. The first call per model traces the loop (1-2 s),
            later calls reuse it. Measured (interleaved medians): a 387-parameter MLP solves ~30% faster;
            the 10k-parameter MLP and CNN of ``benchmarks/bench_peers.py`` no faster than the host loop, where
            such an operator's product is already one compiled call. For many solves on a tiny model.

    Reference: Wu & Simon, SIAM J. Matrix Anal. Appl. 22 (2000).

    Example:
        >>> import numpy as np
        >>> res = top_eigenvalues(np.diag([5.0, 4.0, 1.0, 0.5]), k=2)
        >>> np.round(res.eigenvalues, 8).tolist()
        [5.0, 4.0]
    """
    op = as_operator(op)
    require_symmetric(op, "Lanczos (top_eigenvalues)")
    n = op.n
    k = check_positive_int("k", k)
    if k >= n:
        raise InputError(f"k: expected 1 <= k < n = {n} for an iterative solver, got {k}; for the whole "
                         "spectrum use numpy.linalg.eigvalsh(op.to_dense())")
    which = check_choice("which", which, ("largest", "smallest", "magnitude"))
    tol = check_positive_float("tol", tol)
    seed = check_seed(seed)
    m = min(n, max(2 * k + 1, k + 20)) if num_basis is None else check_positive_int("num_basis", num_basis)
    if not k < m <= n:
        raise InputError(f"num_basis: expected k < num_basis <= n ({k} < m <= {n}), got {m}")
    max_matvecs = max(500, 25 * m) if max_matvecs is None else check_positive_int("max_matvecs", max_matvecs)
    dt = host_dtype(op)
    require_fits(np.dtype(dt).itemsize * n * (m + 3), default_budget(), f"a Lanczos basis of {m} vectors",
                 f"use a smaller num_basis (at least k + 1 = {k + 1})")

    if not isinstance(compiled, bool | np.bool_):
        raise TypeError(f"compiled: expected True or False, got {compiled!r}")
    host = HostThreads(n)
    graph, settled = None, False
    rng = np.random.default_rng(seed)
    V = np.empty((n, m + 1), dtype=dt, order="F")  # column-major: the first j columns are contiguous
    v = rng.standard_normal(n)
    V[:, 0] = v / np.linalg.norm(v)
    T = np.zeros((m, m))
    floor = 100.0 * operator_eps(op)
    j, used, anorm = 0, 0, 0.0
    fresh: int | None = None  # matvecs since the last restart forced by an invariant subspace
    with progress(f"Lanczos (top {k})", max_matvecs, quiet=quiet, unit="matvecs") as bar:
        while True:
            if used == 1 and not settled:  # after a first product (it settles the operator's kernel)
                settled = True
                if compiled:
                    graph = GraphSteps.create(op, dt, m, k, which, tol, floor, 10.0 * operator_eps(op),
                                              max_matvecs)
            if graph is not None:  # the steps up to the next decision in one compiled call
                w, h, j, used, anorm, fresh = graph.run(V, T, j, used, anorm, fresh, bar)
            else:
                w = apply(op, V[:, j], bar, dtype=dt)
                used += 1
                fresh = None if fresh is None else fresh + 1
                with host():
                    anorm = max(anorm, float(np.linalg.norm(w)))
                    w, h = orthogonalize(V[:, : j + 1], w)
            with host():  # the host arithmetic on one BLAS thread (small operators); products outside
                T[: j + 1, j] = h
                size = j + 1
                Ts = np.triu(T[:size, :size]) + np.triu(T[:size, :size], 1).T
                theta, S = np.linalg.eigh(Ts)
                order = _order(theta, which)
                b = float(np.linalg.norm(w))
                broke = b <= breakdown_threshold(op, anorm) or size == n
                beta = 0.0 if broke else b
                want = order[: min(k, size)]
                res = np.abs(beta * S[-1, want])
                thresh = np.maximum(tol * np.abs(theta[want]), floor * anorm)
                # After an invariant subspace, its Ritz values are exact but copies of them (repeated eigenvalues)
                # may live in the complement: look there for k + 1 steps before trusting the wanted set.
                if size == n:
                    may_stop = True
                elif broke:
                    may_stop = fresh is not None and fresh >= k + 1
                else:
                    may_stop = fresh is None or fresh >= k + 1
                converged = may_stop and size >= k and bool(np.all(res <= thresh))
                if converged or used >= max_matvecs:
                    break
                if broke:  # invariant subspace: continue in its orthogonal complement with a fresh direction
                    fresh = 0 if fresh is None else fresh
                    r, _ = orthogonalize(V[:, :size], rng.standard_normal(n).astype(dt))
                    r, _ = orthogonalize(V[:, :size], r / np.linalg.norm(r))
                    V[:, size] = r / np.linalg.norm(r)
                else:
                    V[:, size] = w / b
                if size < m:
                    j = size
                    continue
                # thick restart: keep the l best Ritz vectors, then the residual direction
                l_keep = min(m - 1, k + max(1, (m - k) // 2))
                keep = order[:l_keep]
                Y = V[:, :m] @ S[:, keep].astype(dt)  # in the basis' dtype: no float64 copy of the basis
                resid = V[:, m].copy()
                V[:, :l_keep] = Y
                V[:, l_keep] = resid
                T[:] = 0.0
                T[np.arange(l_keep), np.arange(l_keep)] = theta[keep]
                T[:l_keep, l_keep] = beta * S[-1, keep]
                j = l_keep

    want = order[: min(k, size)]
    with host():
        vecs = V[:, :size] @ S[:, want].astype(dt)
        vecs /= np.linalg.norm(vecs, axis=0, keepdims=True)
    if not converged:
        warnings.warn(f"top_eigenvalues: not converged after {used} matvecs (relative residuals "
                      f"{np.array2string(res / np.maximum(np.abs(theta[want]), 1e-300), precision=2)}, tol {tol:g}); "
                      "raise max_matvecs or num_basis", RuntimeWarning, stacklevel=2)
    return EigenResult(eigenvalues=theta[want].copy(), eigenvectors=vecs, residual_norms=res, num_matvecs=used,
                       converged=converged, which=which, space=op.space)


def power_iteration(op, tol: float = 1e-6, max_matvecs: int = 1000, seed: int = 0, *, quiet: bool = False,
                    callback: Callable[[int, float], None] | None = None) -> EigenResult:
    """The eigenvalue of largest magnitude by power iteration (PyHessian's method), for comparison.

    Maths: ``v <- A v / |A v|``, estimate ``lambda = v^T A v``; stops when the relative change of the estimate
    is below ``tol`` (PyHessian's rule, which can stop early when convergence is slow: prefer
    :func:`top_eigenvalues`, whose stopping rule bounds the error).

    Cost: one matvec per iteration; convergence at the rate ``|lambda_2 / lambda_1|`` per matvec.

    Args:
        op: a symmetric operator or square symmetric array.
        tol: relative change of the estimate between iterations that stops the loop.
        max_matvecs: at most this many products.
        seed: seed of the start vector.
        callback: called as ``callback(num_matvecs, estimate)`` after every product.

    Reference: Yao et al., "PyHessian: neural networks through the lens of the Hessian", IEEE BigData (2020).

    Example:
        >>> import numpy as np
        >>> round(float(power_iteration(np.diag([3.0, 1.0]), tol=1e-12).eigenvalues[0]), 6)
        3.0
    """
    op = as_operator(op)
    require_symmetric(op, "power iteration")
    tol = check_positive_float("tol", tol, allow_zero=True)
    max_matvecs = check_positive_int("max_matvecs", max_matvecs)
    rng = np.random.default_rng(check_seed(seed))
    v = rng.standard_normal(op.n)
    v /= np.linalg.norm(v)
    lam_prev, lam, res, converged, used = None, 0.0, np.inf, False, 0
    host = HostThreads(op.n)
    with progress("power iteration", max_matvecs, quiet=quiet, unit="matvecs") as bar:
        for used in range(1, max_matvecs + 1):
            w = apply(op, v, bar)
            with host():  # the host arithmetic on one BLAS thread (small operators); products outside
                lam = float(v @ w)
                res = float(np.linalg.norm(w - lam * v))
                nw = float(np.linalg.norm(w))
            if callback is not None:
                callback(used, lam)
            if lam_prev is not None and abs(lam - lam_prev) <= tol * (abs(lam_prev) + 1e-6):
                converged = True
                break
            if nw == 0.0:  # v is in the null space: the estimate 0 is exact
                converged = True
                break
            lam_prev = lam
            v = w / nw
    return EigenResult(eigenvalues=np.array([lam]), eigenvectors=v[:, None].copy(), residual_norms=np.array([res]),
                       num_matvecs=used, converged=converged, which="magnitude", space=op.space)
