"""A small TF-native linear operator: shape, dtype, symmetric/psd tags, ``@``, algebra, dense and scipy views.

Subclasses implement only ``_matmat(V)`` for a ``(n, k)`` tensor ``V``. Estimators are plain functions of any
operator, so a dense matrix tests them exactly (see :class:`~tfpartials.linalg.dense.DenseOperator`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from .._backend import tf
from .._checks import InputError

__all__ = ["LinearOperator", "SumOperator", "ScaledOperator", "ProductOperator"]


class LinearOperator(ABC):
    """Abstract square linear operator A (n x n).

    Attributes:
        shape: ``(n, n)``.
        dtype: a ``tf.DType``.
        symmetric, psd: tags used by estimators (Lanczos needs symmetric).
        space: the :class:`~tfpartials.params.ParameterSpace` for parameter-space operators (names, blocks),
            or None.
        num_matvecs: matrix-vector products performed so far (a matmat with k columns counts k).

    A subclass implements ``_matmat(V)`` (``A @ V`` for an ``(n, k)`` tensor); products, ``to_dense`` and every
    estimator come from the base class.

    Example:
        >>> import numpy as np, tfpartials as tp
        >>> class Doubling(tp.LinearOperator):      # A = 2 I, known only through its products
        ...     def _matmat(self, V):
        ...         return 2.0 * V
        >>> A = Doubling(3, "float64", symmetric=True, psd=True)
        >>> (A @ np.ones(3)).numpy().tolist(), A.num_matvecs
        ([2.0, 2.0, 2.0], 1)
        >>> tp.hutchinson_trace(A, num_matvecs=4).value     # tr(2 I) = 6: exact for a multiple of I
        6.0
    """

    symmetric: bool = False
    psd: bool = False
    space: Any = None

    def __init__(self, n: int, dtype, *, symmetric: bool = False, psd: bool = False, space=None):
        self.shape = (int(n), int(n))
        self.dtype = tf.as_dtype(dtype)
        self.symmetric = bool(symmetric)
        self.psd = bool(psd)
        self.space = space
        self.num_matvecs = 0

    @property
    def n(self) -> int:
        return self.shape[0]

    @abstractmethod
    def _matmat(self, V: tf.Tensor) -> tf.Tensor:
        """A @ V for a ``(n, k)`` tensor in ``self.dtype``."""

    # -- products -------------------------------------------------------------------------------------------
    def _as_tensor(self, v) -> tf.Tensor:
        if isinstance(v, dict):
            if self.space is None:
                raise InputError("a {name: array} vector needs a parameter-space operator")
            v = self.space.vector_from(v, self.dtype)
        t = tf.convert_to_tensor(v)
        if t.dtype != self.dtype:
            t = tf.cast(t, self.dtype)
        return t

    def matmat(self, V) -> tf.Tensor:
        """A @ V for V of shape ``(n, k)``."""
        V = self._as_tensor(V)
        if V.shape.rank != 2 or V.shape[0] != self.n:
            raise InputError(f"expected a matrix of shape ({self.n}, k), got {tuple(V.shape)}")
        self.num_matvecs += int(V.shape[1])
        return self._matmat(V)

    def _traceable_product(self):
        """How a compiled caller may take products inside one ``tf.function``, or None (the default).

        Returns ``(owner, key, product, args)``: ``product(*args, R)`` computes the rows ``R A`` for a
        ``(k, n)`` tensor ``R`` (``A`` symmetric, so ``(A R^T)^T``) without host work, so it can run inside a
        ``tf.while_loop``; ``owner`` is an :class:`~tfpartials.Objective` on which the caller caches its
        compiled function under ``key`` (stable across operator instances with the same product), ``args``
        are this instance's tensors. Operators whose products need host work per call (several batches,
        a distribution strategy, numpy code) return None and estimators use :meth:`matmat`.
        """
        return None

    def matvec(self, v) -> tf.Tensor:
        """A @ v for v of shape ``(n,)`` (or a ``{name: array}`` dict for parameter-space operators)."""
        v = self._as_tensor(v)
        if v.shape.rank != 1 or v.shape[0] != self.n:
            raise InputError(f"expected a vector of shape ({self.n},), got {tuple(v.shape)}")
        return self.matmat(v[:, None])[:, 0]

    def __matmul__(self, other):
        if isinstance(other, LinearOperator):
            return ProductOperator(self, other)
        if isinstance(other, dict):
            return self.matvec(other)
        t = tf.convert_to_tensor(other)
        if t.shape.rank == 1:
            return self.matvec(t)
        if t.shape.rank == 2:
            return self.matmat(t)
        raise InputError(f"expected a vector (n,) or a matrix (n, k), got shape {tuple(t.shape)}")

    # -- algebra --------------------------------------------------------------------------------------------
    def __add__(self, other):
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return SumOperator(self, other)

    def __sub__(self, other):
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return SumOperator(self, ScaledOperator(other, -1.0))

    def __mul__(self, scalar):
        if isinstance(scalar, int | float | np.number):
            return ScaledOperator(self, float(scalar))
        return NotImplemented

    __rmul__ = __mul__

    def __neg__(self):
        return ScaledOperator(self, -1.0)

    # -- views ----------------------------------------------------------------------------------------------
    def to_dense(self, chunk: int | None = None) -> tf.Tensor:
        """The dense ``(n, n)`` matrix, built from matmats with identity columns (``chunk`` at a time)."""
        n = self.n
        chunk = n if chunk is None else max(1, int(chunk))
        cols = []
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            E = tf.one_hot(tf.range(start, stop), n, dtype=self.dtype, axis=0)  # (n, k)
            cols.append(self.matmat(E))
        return tf.concat(cols, axis=1)

    def to_scipy(self):
        """A ``scipy.sparse.linalg.LinearOperator`` computing the same products (numpy in, numpy out)."""
        from scipy.sparse.linalg import LinearOperator as SciPyOp

        np_dtype = np.dtype(self.dtype.as_numpy_dtype)

        def mv(v):
            return self.matvec(np.asarray(v, np_dtype).reshape(-1)).numpy()

        def mm(V):
            return self.matmat(np.asarray(V, np_dtype)).numpy()

        return SciPyOp(self.shape, matvec=mv, rmatvec=mv if self.symmetric else None, matmat=mm, dtype=np_dtype)

    def __repr__(self) -> str:
        tags = [t for t in ("symmetric", "psd") if getattr(self, t)]
        return f"{type(self).__name__}(n={self.n}, dtype={self.dtype.name}{', ' + ', '.join(tags) if tags else ''})"


class SumOperator(LinearOperator):
    """A + B."""

    def __init__(self, a: LinearOperator, b: LinearOperator):
        if a.shape != b.shape:
            raise InputError(f"cannot add operators of shapes {a.shape} and {b.shape}")
        super().__init__(a.n, a.dtype, symmetric=a.symmetric and b.symmetric, psd=a.psd and b.psd,
                         space=a.space)
        self.a, self.b = a, b

    def _matmat(self, V):
        return self.a.matmat(V) + tf.cast(self.b.matmat(V), self.dtype)


class ScaledOperator(LinearOperator):
    """c * A."""

    def __init__(self, a: LinearOperator, c: float):
        super().__init__(a.n, a.dtype, symmetric=a.symmetric, psd=a.psd and c >= 0, space=a.space)
        self.a, self.c = a, float(c)

    def _matmat(self, V):
        return tf.cast(self.c, self.dtype) * self.a.matmat(V)


class ProductOperator(LinearOperator):
    """A @ B (not tagged symmetric unless A is B)."""

    def __init__(self, a: LinearOperator, b: LinearOperator):
        if a.shape != b.shape:
            raise InputError(f"cannot multiply operators of shapes {a.shape} and {b.shape}")
        same = a is b
        super().__init__(a.n, a.dtype, symmetric=same and a.symmetric, psd=same and a.symmetric, space=a.space)
        self.a, self.b = a, b

    def _matmat(self, V):
        return self.a.matmat(tf.cast(self.b.matmat(V), self.a.dtype))
