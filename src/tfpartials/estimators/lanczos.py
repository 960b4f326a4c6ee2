"""The Lanczos process with full reorthogonalisation, on the host in float64.

``lanczos(op, m)`` builds an orthonormal basis ``Q`` of the Krylov space ``span{v, Av, ..., A^{m-1} v}`` and the
tridiagonal ``T = Q^T A Q`` (diagonal ``alpha``, off-diagonal ``beta``), one matvec per step. The eigenvalues of
``T`` (Ritz values) approximate the extreme eigenvalues of ``A``; ``T``'s eigenvectors' first components squared
are the Gauss quadrature weights that stochastic Lanczos quadrature uses.

Every new vector is orthogonalised twice against the whole basis (classical Gram-Schmidt, repeated: "twice is
enough"), so no spurious copies of converged eigenvalues appear; the cost is ``O(n m^2)`` flops and ``n (m+1)``
floats of memory on top of the ``m`` matvecs.

Reference: Golub & Van Loan, *Matrix Computations* (4th ed.), §10.1; Parlett, *The Symmetric Eigenvalue
Problem* (1998), ch. 13 (reorthogonalisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._checks import InputError, check_positive_int, check_seed
from .._memory import default_budget, require_fits
from .._progress import progress
from ._probes import HostThreads, apply, as_operator, host_dtype, operator_eps, require_symmetric

__all__ = ["LanczosDecomposition", "lanczos", "orthogonalize", "tridiagonal", "gauss_quadrature",
           "breakdown_threshold"]


@dataclass(frozen=True)
class LanczosDecomposition:
    """``A Q_m = Q_m T_m + beta_m q_{m+1} e_m^T`` with ``T_m = tridiag(beta[:-1], alpha, beta[:-1])``.

    Attributes:
        alpha: ``(m,)`` diagonal of T.
        beta: ``(m,)`` off-diagonal of T followed by the residual norm ``beta_m`` (0 after a breakdown, i.e.
            when the Krylov space is invariant and the Ritz values are exact eigenvalues).
        basis: ``(n, m)`` orthonormal Lanczos vectors, or None when not kept.
        num_matvecs: products with A used (``m``).

    Example:
        >>> import numpy as np, tfpartials as tp
        >>> A = np.diag([1.0, 2.0, 3.0, 4.0])
        >>> dec = tp.lanczos(A, 4, seed=0)                        # m = n: the Krylov space is everything
        >>> Q, T = dec.basis, dec.tridiagonal()
        >>> bool(np.allclose(A @ Q, Q @ T)), np.linalg.eigvalsh(T).round(8).tolist()
        (True, [1.0, 2.0, 3.0, 4.0])
    """

    alpha: np.ndarray
    beta: np.ndarray
    basis: np.ndarray | None
    num_matvecs: int

    @property
    def num_steps(self) -> int:
        return int(self.alpha.shape[0])

    def tridiagonal(self) -> np.ndarray:
        """The dense ``(m, m)`` tridiagonal matrix T."""
        return tridiagonal(self.alpha, self.beta[:-1])

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """Ritz values (ascending) and Gauss quadrature weights (squared first components of T's eigenvectors)."""
        return gauss_quadrature(self.alpha, self.beta[:-1])


def tridiagonal(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Dense symmetric tridiagonal matrix with diagonal ``alpha`` (m,) and off-diagonal ``beta`` (m-1,)."""
    alpha = np.asarray(alpha, np.float64)
    T = np.diag(alpha)
    if alpha.shape[0] > 1:
        off = np.asarray(beta, np.float64)[: alpha.shape[0] - 1]
        T += np.diag(off, 1) + np.diag(off, -1)
    return T


def gauss_quadrature(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodes (eigenvalues of T, ascending) and weights (squared first eigenvector components, summing to 1)."""
    from scipy.linalg import eigh_tridiagonal

    alpha = np.asarray(alpha, np.float64)
    if alpha.shape[0] == 1:
        return alpha.copy(), np.ones(1)
    nodes, vecs = eigh_tridiagonal(alpha, np.asarray(beta, np.float64)[: alpha.shape[0] - 1])
    return nodes, vecs[0, :] ** 2


def orthogonalize(Q: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove from ``w`` its components along the orthonormal columns of ``Q``, twice (CGS2).

    Returns the orthogonalised vector and the coefficients ``Q^T w`` removed (their sum over both passes).
    """
    if Q.shape[1] == 0:
        return w, np.zeros(0)
    h = Q.T @ w
    w = w - Q @ h
    h2 = Q.T @ w
    return w - Q @ h2, h + h2


def breakdown_threshold(op, anorm: float) -> float:
    """Residual norm below which the Krylov space is taken as invariant (round-off of the operator's dtype)."""
    return 10.0 * operator_eps(op) * max(anorm, np.finfo(np.float64).tiny)


def lanczos(op, num_steps: int, *, v0=None, seed: int = 0, keep_basis: bool = True, quiet: bool = False,
            bar=None) -> LanczosDecomposition:
    """Run ``num_steps`` Lanczos steps on a symmetric operator with full reorthogonalisation.

    Maths: ``q_1 = v0/|v0|``, ``beta_j q_{j+1} = (I - Q_j Q_j^T) A q_j``, ``alpha_j = q_j^T A q_j``.

    Cost: ``num_steps`` matvecs (fewer if the Krylov space becomes invariant: the process stops there) and
    ``O(n num_steps^2)`` flops.

    Args:
        op: a symmetric :class:`~tfpartials.linalg.operator.LinearOperator` (or a square symmetric array).
        num_steps: Krylov dimension ``m`` (clipped to ``n``).
        v0: start vector ``(n,)``; default a Gaussian vector from ``np.random.default_rng(seed)``.
        seed: seed of the default start vector.
        keep_basis: return the ``(n, m)`` basis (it is stored during the run either way).

    Reference: Lanczos (1950); Golub & Van Loan (2013), Algorithm 10.1.1 with full reorthogonalisation.

    Example:
        >>> import numpy as np
        >>> dec = lanczos(np.diag([1.0, 2.0, 3.0]), 3, seed=0)
        >>> np.round(dec.ritz()[0], 8).tolist()
        [1.0, 2.0, 3.0]
    """
    op = as_operator(op)
    require_symmetric(op, "Lanczos")
    num_steps = min(check_positive_int("num_steps", num_steps), op.n)
    seed = check_seed(seed)
    n = op.n
    if v0 is None:
        v = np.random.default_rng(seed).standard_normal(n)
    else:
        v = np.asarray(v0, np.float64).reshape(-1)
        if v.shape[0] != n:
            raise InputError(f"v0: expected a vector of shape ({n},), got {np.shape(v0)}")
    nv = float(np.linalg.norm(v))
    if not np.isfinite(nv) or nv == 0:
        raise InputError("v0: expected a finite, non-zero start vector")
    require_fits(np.dtype(host_dtype(op)).itemsize * n * (num_steps + 2), default_budget(), f"a Lanczos basis of {num_steps} vectors",
                 "use fewer Lanczos steps")
    dt = host_dtype(op)
    Q = np.empty((n, num_steps + 1), dtype=dt, order="F")  # column-major: the first j columns are contiguous
    Q[:, 0] = v / nv
    alpha, beta = np.zeros(num_steps), np.zeros(num_steps)
    anorm, used, m = 0.0, 0, num_steps
    host = HostThreads(n)
    with progress("Lanczos", num_steps, quiet=quiet or bar is not None, unit="matvecs") as own_bar:
        for j in range(num_steps):
            w = apply(op, Q[:, j], bar or own_bar, dtype=dt)
            used += 1
            with host():  # the host arithmetic on one BLAS thread (small operators); products outside
                anorm = max(anorm, float(np.linalg.norm(w)))
                w, h = orthogonalize(Q[:, : j + 1], w)
                alpha[j] = float(h[j])
                b = float(np.linalg.norm(w))
                if b <= breakdown_threshold(op, anorm) or j + 1 == n:
                    m = j + 1  # invariant Krylov space (or the whole space): T's Ritz values are exact
                    break
                beta[j] = b
                Q[:, j + 1] = w / b
    return LanczosDecomposition(alpha=alpha[:m].copy(), beta=beta[:m].copy(),
                                basis=Q[:, :m].copy() if keep_basis else None, num_matvecs=used)
