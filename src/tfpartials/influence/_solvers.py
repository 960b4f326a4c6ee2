"""Inverse-curvature solvers for influence functions: ``X = (H + lambda I)^{-1} B`` for a block of columns B.

Every solver is built once per call of :func:`~tfpartials.influence.influence` and then applied to blocks of
vectors (the test gradients of one test batch; for self-influence, one chunk of training gradients):

* ``exact``: the dense curvature (``tfpartials.hessian`` or the dense GGN), factorised once by a symmetric
  eigendecomposition; ``(H + lambda I)^{-1} = Q diag(1 / (d + lambda)) Q^T``. Cost ``n`` curvature products to
  build, ``O(n^3)`` to factorise, memory ``n^2``.
* ``cg``: conjugate gradients on the matrix-free operator, all columns of the block at once (one vectorised
  product per iteration, each column stops at its own tolerance). Needs ``H + lambda I`` positive definite.
  Reference: Hestenes & Stiefel (1952); Martens (2010) for CG on curvature products.
* ``lissa``: the truncated Neumann series ``x_{t+1} = b + (I - (H + lambda I) / s) x_t``, ``x = x_T / s``, with
  exact dataset products (the deterministic variant of LiSSA) and ``s`` above the top eigenvalue (estimated by
  Lanczos). Converges at the rate ``1 - (lambda_min + lambda) / s`` per product. Reference: Agarwal, Bullins &
  Hazan (2017), "Second-order stochastic optimization for machine learning in linear time"; Koh & Liang (2017).
* ``arnoldi``: the top ``p`` eigenpairs ``(d_k, u_k)`` of the curvature by Lanczos (the symmetric Arnoldi
  process), ``(H + lambda I)^{-1} ~ U diag(1 / (d + lambda)) U^T``, i.e. both gradients projected on the top
  eigenvectors. Reference: Schioppa, Zablotskaia, Vilar & Sokolov (2022), "Scaling up influence functions"
  (AAAI).
* ``ekfac``: the inverse of the eigenvalue-corrected Kronecker-factored curvature
  (:class:`tfpartials.linalg.kfac.EKFACOperator`). Reference: George et al. (2018); Grosse et al. (2023).
* ``tracin``: the identity (``H`` replaced by ``I``, damping ignored): gradient dot products, TracIn at the
  final checkpoint with unit learning rate. Reference: Pruthi, Liu, Kale & Sundararajan (2020).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._backend import tf
from .._checks import InputError
from .._memory import DEFAULT_DENSE_LIMIT, require_fits

__all__ = ["METHODS", "Solver", "build_solver"]

METHODS = ("exact", "cg", "lissa", "arnoldi", "ekfac", "tracin")


@dataclass
class Solver:
    """``apply(B) -> (H + lambda I)^{-1} B`` for ``B`` of shape ``(n, k)`` (numpy in, numpy out).

    Attributes:
        method: the method name.
        damping: ``lambda``.
        info: facts about the solve (matvecs, iterations, eigenvalues kept, convergence) for the result.
    """

    method: str
    damping: float
    apply_fn: Any = field(repr=False)
    info: dict = field(default_factory=dict)

    def apply(self, B: np.ndarray) -> np.ndarray:
        return self.apply_fn(np.asarray(B))


def _operator(curvature: str, objective, data):
    from ..linalg.curvature import GGNOperator, HessianOperator

    cls = GGNOperator if curvature == "ggn" else HessianOperator
    return cls(objective, data, quiet=True)


def build_solver(method: str, curvature: str, objective, data, *, damping: float, options: dict,
                 quiet: bool = False) -> Solver:
    """The solver for ``method`` on the curvature of ``objective`` (mean loss + regularisation) over ``data``."""
    if method == "tracin":
        return Solver("tracin", damping, lambda B: B, {"note": "H replaced by the identity; damping not used"})
    if method == "exact":
        return _exact(curvature, objective, data, damping, quiet)
    if method == "ekfac":
        return _ekfac(objective, data, damping, options, quiet)
    op = _operator(curvature, objective, data)
    if method == "cg":
        return _cg(op, damping, options)
    if method == "lissa":
        return _lissa(op, damping, options, quiet)
    if method == "arnoldi":
        return _arnoldi(op, damping, options, quiet)
    raise InputError(f"method: expected one of {', '.join(map(repr, METHODS))}, got {method!r}")  # pragma: no cover


# ------------------------------------------------------------------------------------------------- exact
def _exact(curvature, objective, data, damping, quiet) -> Solver:
    n = objective.space.size
    require_fits(2 * n * n * 8, DEFAULT_DENSE_LIMIT, f"the exact inverse curvature of {n:,} parameters",
                 "use method='cg', 'arnoldi' or 'ekfac' (matrix-free), or fewer parameters with wrt=[...]")
    if curvature == "hessian":
        from ..autodiff.hessian import hessian

        H = hessian(objective, data, quiet=quiet).matrix
    else:
        H = _operator("ggn", objective, data).to_dense().numpy()
    H = np.asarray(H, np.float64)
    d, Q = np.linalg.eigh((H + H.T) / 2)
    shifted = d + damping
    if np.any(shifted <= 0):
        warnings.warn(f"influence: H + damping I has {int(np.sum(shifted <= 0))} non-positive eigenvalue(s) "
                      f"(smallest {shifted.min():.3g}); the scores use its inverse anyway; raise damping or use "
                      "curvature='ggn'", RuntimeWarning, stacklevel=4)
    if np.any(shifted == 0):
        raise InputError("influence: H + damping I is singular; pass damping > 0")
    dtype = objective.dtype.as_numpy_dtype

    def apply(B):
        return (Q @ ((Q.T @ B.astype(np.float64)) / shifted[:, None])).astype(dtype)

    return Solver("exact", damping, apply, {"num_matvecs": n, "min_eigenvalue": float(d.min()),
                                             "max_eigenvalue": float(d.max())})


# ------------------------------------------------------------------------------------------------- cg
def _cg(op, damping, options) -> Solver:
    tol = float(options.get("tol", 1e-6))
    max_iterations = int(options.get("max_iterations") or 10 * op.n)
    info: dict = {"iterations": 0, "num_matvecs": 0, "converged": True, "tol": tol}

    def matmat(X):
        return np.asarray(op.matmat(X)) + damping * X

    def apply(B):
        X, iters, ok = batched_cg(matmat, B.astype(op.dtype.as_numpy_dtype), tol, max_iterations)
        info["iterations"] = max(info["iterations"], iters)
        info["num_matvecs"] = op.num_matvecs
        info["converged"] = info["converged"] and ok
        if not ok:
            warnings.warn(f"influence (cg): not converged to tol {tol:g} in {max_iterations} iterations; raise "
                          "damping or max_iterations", RuntimeWarning, stacklevel=4)
        return X

    return Solver("cg", damping, apply, info)


def batched_cg(matmat, B: np.ndarray, tol: float, max_iterations: int) -> tuple[np.ndarray, int, bool]:
    """Solve ``A X = B`` column by column with conjugate gradients, one ``matmat`` per iteration for all columns.

    A column stops (its direction is frozen to zero) once ``|r| <= tol |b|``. Returns ``(X, iterations, converged)``.
    """
    X = np.zeros_like(B)
    R = B.copy()
    P = R.copy()
    bnorm = np.linalg.norm(B, axis=0)
    rr = np.sum(R * R, axis=0)
    active = bnorm > 0
    it = 0
    while it < max_iterations and np.any(active):
        cols = np.flatnonzero(active)
        AP = matmat(P[:, cols])
        pap = np.sum(P[:, cols] * AP, axis=0)
        if np.any(pap <= 0):
            raise InputError("influence (cg): H + damping I is not positive definite along a search direction; "
                             "raise damping, use curvature='ggn', or method='exact'")
        alpha = rr[cols] / pap
        X[:, cols] += alpha * P[:, cols]
        R[:, cols] -= alpha * AP
        rr_new = np.sum(R[:, cols] ** 2, axis=0)
        beta = rr_new / rr[cols]
        P[:, cols] = R[:, cols] + beta * P[:, cols]
        rr[cols] = rr_new
        active[cols] = np.sqrt(rr_new) > tol * bnorm[cols]
        it += 1
    return X, it, not np.any(active)


# ------------------------------------------------------------------------------------------------- lissa
def _top_eigenvalue(op, quiet) -> float:
    from ..estimators.eigenvalues import top_eigenvalues

    if op.n < 3:
        return float(np.linalg.eigvalsh(np.asarray(op.to_dense(), np.float64)).max())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        res = top_eigenvalues(op, k=1, tol=1e-3, quiet=True)
    return float(res.eigenvalues[0] + res.residual_norms[0])


def _lissa(op, damping, options, quiet) -> Solver:
    tol = float(options.get("tol", 1e-6))
    max_iterations = int(options.get("max_iterations") or 2000)
    scale = options.get("scale")
    if scale is None:
        scale = 1.05 * (_top_eigenvalue(op, quiet) + damping)
    scale = float(scale)
    info: dict = {"iterations": 0, "num_matvecs": 0, "converged": True, "scale": scale, "tol": tol}

    def apply(B):
        B = B.astype(op.dtype.as_numpy_dtype)
        X = B.copy()  # x_0 = b; after the loop x / scale ~ (H + lambda I)^{-1} b
        bnorm = np.maximum(np.linalg.norm(B, axis=0), np.finfo(np.float64).tiny)
        it, ok = 0, False
        while it < max_iterations:
            AX = np.asarray(op.matmat(X)) + damping * X
            new = B + X - AX / scale
            step = np.linalg.norm(new - X, axis=0) / bnorm
            X = new
            it += 1
            # the residual of the scaled system is (B - A X / s); the step equals it
            if np.all(step <= tol):
                ok = True
                break
        info["iterations"] = max(info["iterations"], it)
        info["num_matvecs"] = op.num_matvecs
        info["converged"] = info["converged"] and ok
        if not ok:
            warnings.warn(f"influence (lissa): the Neumann series did not reach tol {tol:g} in {max_iterations} "
                          "iterations; raise damping or max_iterations", RuntimeWarning, stacklevel=4)
        return X / scale

    return Solver("lissa", damping, apply, info)


# ------------------------------------------------------------------------------------------------- arnoldi
def _arnoldi(op, damping, options, quiet) -> Solver:
    from ..estimators.eigenvalues import top_eigenvalues

    p = options.get("rank")
    p = min(op.n - 1, 50) if p is None else int(p)
    if not 1 <= p < op.n:
        raise InputError(f"rank: expected 1 <= rank < {op.n} (the number of parameters), got {p}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="top_eigenvalues: not converged", category=RuntimeWarning)
        res = top_eigenvalues(op, k=p, which="largest", tol=float(options.get("tol", 1e-6)),
                              max_matvecs=options.get("max_iterations"), quiet=quiet)
    d = np.asarray(res.eigenvalues, np.float64)
    U = np.asarray(res.eigenvectors, np.float64)
    shifted = d + damping
    if np.any(shifted <= 0):
        raise InputError(f"influence (arnoldi): a kept eigenvalue plus damping is {shifted.min():.3g} <= 0; "
                         "raise damping")
    dtype = op.dtype.as_numpy_dtype

    def apply(B):
        return (U @ ((U.T @ B.astype(np.float64)) / shifted[:, None])).astype(dtype)

    return Solver("arnoldi", damping, apply, {"rank": p, "num_matvecs": res.num_matvecs,
                                               "eigenvalues": d.tolist(), "converged": bool(res.converged)})


# ------------------------------------------------------------------------------------------------- ekfac
def _ekfac(objective, data, damping, options, quiet) -> Solver:
    try:
        from ..linalg.kfac import EKFACOperator
    except ImportError:  # pragma: no cover - an installation without linalg/kfac.py
        raise InputError("method='ekfac' needs tfpartials.linalg.kfac.EKFACOperator, which this installation does "
                         "not have; use method='cg', 'arnoldi' or 'exact'") from None
    op = EKFACOperator(objective.model, data, loss=objective.loss, wrt=list(objective.space.names), quiet=quiet,
                       max_memory=options.get("max_memory"))
    if op.n != objective.space.size:  # pragma: no cover - a mismatch between the two parameter selections
        raise InputError(f"ekfac: the operator has {op.n} parameters, the gradients {objective.space.size}")
    reg = _regularization_curvature(objective, data)
    inverse = op.inverse(damping + reg)
    dtype = objective.dtype

    def apply(B):
        return np.asarray(inverse.matmat(tf.constant(B, dtype)))

    return Solver("ekfac", damping, apply, {"regularization_damping": reg,
                                             "note": "EK-FAC approximates the Gauss-Newton matrix of the mean loss; "
                                                     "the regulariser's curvature enters as an isotropic damping "
                                                     "(its mean diagonal, regularization_damping)"})


def _regularization_curvature(objective, data, num_probes: int = 8, seed: int = 0) -> float:
    """Mean diagonal of the Hessian of the model's regularisation losses R (0 when it has none).

    EK-FAC approximates the curvature of the mean loss; R's curvature enters as this extra isotropic damping
    (exact for an L2 penalty on every parameter; for ``c |W|^2`` on the kernels only it spreads ``2c`` over the
    biases too). Estimated as ``trace(d^2 R) / n`` from Rademacher probes (exact for a diagonal ``d^2 R``).
    """
    from ..autodiff.risk import as_tensors
    from ..linalg.curvature import _regularization_hvp

    if not objective.include_regularization:
        return 0.0
    x, _ = data.first(1)
    x = as_tensors(x, objective.dtype)
    params = objective.space.values()
    _, losses = objective.forward(params, x, return_losses=True)
    if not losses:
        return 0.0
    rng = np.random.default_rng(seed)
    n = objective.space.size
    total = 0.0
    for _ in range(num_probes):
        z = rng.choice([-1.0, 1.0], size=n)
        tangents = objective.space.unflatten(tf.constant(z, objective.dtype))
        hz = _regularization_hvp(objective, params, x, tf.constant(1.0, objective.dtype), tangents, "reverse")
        if hz is None:
            return 0.0
        total += float(sum(tf.reduce_sum(tf.reshape(h, [-1]) * tf.reshape(t, [-1])) for h, t in zip(hz, tangents)))
    return max(total / num_probes / n, 0.0)

