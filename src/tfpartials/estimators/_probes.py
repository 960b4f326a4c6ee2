"""Shared plumbing of the estimators: operator checks, seeded probes, and host-side products in float64.

Every estimator draws its random vectors once from ``np.random.default_rng(seed)`` (same seed, same numbers),
sends them to the operator in blocks of columns, and does its arithmetic in float64 numpy on the host.

One exception, for size: a float32 operator with at least :data:`HOST_FLOAT32_MIN` parameters keeps its
Krylov bases and probe blocks in float32 (:func:`host_dtype`). Its products carry float32 round-off anyway,
and on tens of millions of parameters the host's float64 copies and reorthogonalisation took several times
longer than the products themselves (ResNet50: 91 s of a 239 s curvature summary). Sums and scalars stay float64.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Literal

import numpy as np

from .._checks import InputError, check_choice
from .._memory import default_budget, require_fits

__all__ = ["Distribution", "as_operator", "draw_probes", "apply", "require_symmetric", "operator_eps",
           "split_by_space", "host_dtype", "HOST_FLOAT32_MIN", "HostThreads", "HOST_BLAS_SINGLE_MAX"]

Distribution = Literal["rademacher", "gaussian"]
_BLOCK = 32  # columns sent to the operator at once (a progress-bar tick per block)
HOST_FLOAT32_MIN = 1_000_000  # parameters from which a float32 operator's host arrays are float32
HOST_BLAS_SINGLE_MAX = 1_000_000  # below this many parameters the host arithmetic runs BLAS on one thread


class HostThreads:
    """Scoped one-thread BLAS for an estimator's host arithmetic on operators of fewer than
    :data:`HOST_BLAS_SINGLE_MAX` parameters; a no-op on larger ones (their host work profits from threads).

    Why: on ~10k-vectors OpenBLAS splits dots and matrix-vector products over its threads, which then contend
    with TensorFlow's (measured on 2 cores: ``np.linalg.norm`` of a 10,026-vector took ~7 ms a call between
    Hessian products instead of ~5 us). Each ``with host():`` block limits only numpy/scipy BLAS (threadpoolctl,
    ``user_api="blas"``) and restores the previous counts on exit, also on an exception; the operator's own
    products run outside the blocks, unlimited. Without threadpoolctl every block is a no-op.

    Example:
        >>> import numpy as np
        >>> host = HostThreads(10)
        >>> with host():
        ...     float(np.linalg.norm(np.ones(4)))
        2.0
    """

    def __init__(self, n: int):
        self._controller = None
        if n < HOST_BLAS_SINGLE_MAX:
            controller = _blas_controller()
            if controller is not None and any(lib.num_threads > 1 for lib in controller.lib_controllers):
                self._controller = controller

    def __call__(self) -> AbstractContextManager:
        if self._controller is None:
            return nullcontext()
        return self._limited()

    @contextmanager
    def _limited(self) -> Iterator[None]:
        # process-wide: the first block to enter (in any thread) sets one thread, the last to leave restores
        # the counts found by the first, so blocks overlapping across threads never leave BLAS limited
        global _HOST_DEPTH, _HOST_LIMITER
        with _HOST_LOCK:
            if _HOST_DEPTH == 0:
                _HOST_LIMITER = self._controller.limit(limits=1)
            _HOST_DEPTH += 1
        try:
            yield
        finally:
            with _HOST_LOCK:
                _HOST_DEPTH -= 1
                if _HOST_DEPTH == 0:
                    _HOST_LIMITER.restore_original_limits()
                    _HOST_LIMITER = None


def _blas_controller():
    """The process's BLAS thread-pool controller (scanning the loaded libraries takes ~20 ms: done once)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - a declared dependency
            _CONTROLLER = False
        else:
            _CONTROLLER = ThreadpoolController().select(user_api="blas")
    return _CONTROLLER or None


_CONTROLLER = None
_HOST_LOCK = threading.Lock()
_HOST_DEPTH = 0
_HOST_LIMITER: Any = None


def host_dtype(op) -> type:
    """The dtype of the estimators' host arrays for ``op``: float32 for a float32 operator of at least
    :data:`HOST_FLOAT32_MIN` parameters, float64 otherwise.

    Example:
        >>> import numpy as np
        >>> from tfpartials.linalg.dense import DenseOperator
        >>> host_dtype(DenseOperator(np.eye(3, dtype=np.float32))).__name__
        'float64'
    """
    if op.dtype.as_numpy_dtype == np.float32 and op.n >= HOST_FLOAT32_MIN:
        return np.float32
    return np.float64


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


def draw_probes(n: int, k: int, distribution: str, rng: np.random.Generator, what: str = "probes",
                dtype: type = np.float64) -> np.ndarray:
    """``(n, k)`` probe vectors (float64, or ``dtype``) with E[z z^T] = I: Rademacher (±1) or standard Gaussian.

    Probes are drawn probe by probe (row-major in ``(k, n)``), so the first ``j`` probes of a call with ``k``
    columns are the same numbers as a call with ``j`` columns and the same generator state. In float32 (see
    :func:`host_dtype`) the draws are float32 ones: other numbers than float64's for the same seed.
    """
    check_choice("distribution", distribution, ("rademacher", "gaussian"))
    size = np.dtype(dtype).itemsize
    require_fits(3 * size * n * k, default_budget(), f"{k} probe vectors of length {n}",
                 "use fewer matvecs (num_matvecs, num_probes)")
    if dtype == np.float64:
        Z = np.where(rng.random((k, n)) < 0.5, -1.0, 1.0) if distribution == "rademacher" else \
            rng.standard_normal((k, n))
    elif distribution == "rademacher":
        Z = rng.integers(0, 2, (k, n), dtype=np.int8).astype(dtype)
        Z *= 2
        Z -= 1
    else:
        Z = rng.standard_normal((k, n), dtype=dtype)
    return np.ascontiguousarray(Z.T)


def apply(op, V: np.ndarray, bar=None, block: int = _BLOCK, dtype: type = np.float64) -> np.ndarray:
    """``A @ V`` for an ``(n, k)`` array, in blocks of columns, returned as numpy of ``dtype`` (float64).

    Cost: ``k`` matvecs (counted by the operator's ``num_matvecs``); ``bar.advance`` is called per block.
    """
    from .._backend import tf

    V = np.asarray(V, dtype=dtype)
    if V.ndim == 1:
        return apply(op, V[:, None], bar, block, dtype)[:, 0]
    k = V.shape[1]
    out = np.empty((op.n, k), dtype=dtype)
    for start in range(0, k, block):
        stop = min(start + block, k)
        AV = op.matmat(tf.constant(V[:, start:stop], dtype=op.dtype))
        AV = np.asarray(AV.numpy() if hasattr(AV, "numpy") else AV, dtype=dtype)
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
