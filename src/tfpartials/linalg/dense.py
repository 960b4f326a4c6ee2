"""A dense matrix as a :class:`~tfpartials.linalg.operator.LinearOperator` (tests estimators exactly)."""

from __future__ import annotations

import numpy as np

from .._backend import tf
from .._checks import InputError
from .operator import LinearOperator

__all__ = ["DenseOperator"]


class DenseOperator(LinearOperator):
    """Wrap an ``(n, n)`` matrix. Symmetry is detected (to round-off) unless given.

    Example:
        >>> import numpy as np
        >>> A = DenseOperator(np.diag([3.0, 1.0]))
        >>> (A @ np.ones(2)).numpy().tolist()
        [3.0, 1.0]
    """

    def __init__(self, matrix, *, symmetric: bool | None = None, psd: bool = False, space=None, dtype=None):
        m = np.asarray(matrix)
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise InputError(f"expected a square matrix, got shape {m.shape}")
        if not np.issubdtype(m.dtype, np.floating):
            m = m.astype(np.float64)
        if symmetric is None:
            symmetric = bool(np.allclose(m, m.T, rtol=1e-6, atol=1e-12 * max(1.0, float(np.abs(m).max(initial=0)))))
        super().__init__(m.shape[0], dtype or m.dtype, symmetric=symmetric, psd=psd, space=space)
        self.matrix = tf.constant(m, dtype=self.dtype)

    def _matmat(self, V):
        return self.matrix @ V

    def to_dense(self, chunk=None):
        return self.matrix
