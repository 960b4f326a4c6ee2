"""Shared plumbing of the estimators: operator checks, seeded probes, and host-side products in float64.

Every estimator draws its random vectors once from ``np.random.default_rng(seed)`` (same seed, same numbers),
sends them to the operator in blocks of columns, and does its arithmetic in float64 numpy on the host.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .._checks import InputError, check_choice
from .._memory import default_budget, require_fits

__all__ = ["Distribution", "as_operator", "draw_probes", "apply", "require_symmetric", "operator_eps",
           "split_by_space"]

Distribution = Literal["rademacher", "gaussian"]
_BLOCK = 32  # columns sent to the operator at once (a progress-bar tick per block)


def as_operator(op):
    """Return ``op`` if it is a linear operator; wrap a square array or tensor in a DenseOperator."""
    from ..linalg.operator import LinearOperator

    if isinstance(op, LinearOperator):
        return op
    if hasattr(op, "shape") and len(getattr(op, "shape", ())) == 2 and not callable(getattr(op, "matmat", None)):
        from ..linalg.dense import DenseOperator

        return DenseOperator(np.asarray(op))
    raise TypeError(f"op: expected a tfpartials LinearOperator or a square matrix, got {type(op).__name__}")


def require_symmetric(op, method: str) -> None:
    """Raise InputError unless ``op`` is tagged symmetric (Lanczos and SLQ need it)."""
    if not op.symmetric:
        raise InputError(f"{method} needs a symmetric operator, got {op!r}; symmetrise it ((A + A.T) / 2) "
                         "or use an estimator that does not need symmetry (trace, diagonal)")


def operator_eps(op) -> float:
    """Machine epsilon of the operator's dtype: the floor of any residual computed from its products."""
    return float(np.finfo(np.dtype(op.dtype.as_numpy_dtype)).eps)


def draw_probes(n: int, k: int, distribution: str, rng: np.random.Generator, what: str = "probes") -> np.ndarray:
    """``(n, k)`` float64 probe vectors with E[z z^T] = I: Rademacher (±1) or standard Gaussian.

    Probes are drawn probe by probe (row-major in ``(k, n)``), so the first ``j`` probes of a call with ``k``
    columns are the same numbers as a call with ``j`` columns and the same generator state.
    """
    check_choice("distribution", distribution, ("rademacher", "gaussian"))
    require_fits(3 * 8 * n * k, default_budget(), f"{k} probe vectors of length {n}",
                 "use fewer matvecs (num_matvecs, num_probes)")
    if distribution == "rademacher":
        Z = np.where(rng.random((k, n)) < 0.5, -1.0, 1.0)
    else:
        Z = rng.standard_normal((k, n))
    return np.ascontiguousarray(Z.T)


def apply(op, V: np.ndarray, bar=None, block: int = _BLOCK) -> np.ndarray:
    """``A @ V`` for a float64 ``(n, k)`` array, in blocks of columns, returned as float64 numpy.

    Cost: ``k`` matvecs (counted by the operator's ``num_matvecs``); ``bar.advance`` is called per block.
    """
    from .._backend import tf

    V = np.asarray(V, dtype=np.float64)
    if V.ndim == 1:
        return apply(op, V[:, None], bar, block)[:, 0]
    k = V.shape[1]
    out = np.empty((op.n, k), dtype=np.float64)
    for start in range(0, k, block):
        stop = min(start + block, k)
        AV = op.matmat(tf.constant(V[:, start:stop], dtype=op.dtype))
        AV = np.asarray(AV.numpy() if hasattr(AV, "numpy") else AV, dtype=np.float64)
        if not np.all(np.isfinite(AV)):
            raise FloatingPointError(f"the operator returned NaN or Inf ({op!r}); check the model and data "
                                     "(try precision='float64')")
        out[:, start:stop] = AV
        if bar is not None:
            bar.advance(stop - start)
    return out


def split_by_space(space, vec: np.ndarray, what: str) -> dict[str, np.ndarray]:
    """A flat ``(n,)`` vector as ``{parameter name: float64 array}`` using a ParameterSpace's layout."""
    if space is None:
        raise InputError(f"{what} needs an operator with a parameter space (e.g. HessianOperator)")
    vec = np.asarray(vec, np.float64)
    offsets = space.offsets
    return {name: vec[start:stop].reshape(shape)
            for name, shape, start, stop in zip(space.names, space.shapes, offsets[:-1], offsets[1:])}
