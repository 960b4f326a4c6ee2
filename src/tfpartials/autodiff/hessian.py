"""The dense Hessian of the dataset loss with respect to chosen parameters, with named blocks.

Built from batched Hessian-vector products with identity columns (:mod:`tfpartials.autodiff.hvp`), one block
triangle at a time: the variables are grouped in model order (small variables such as biases join the group
before them) and for the columns of group ``G`` only the rows of ``G`` and of the variables after it are
computed, with the tangent on ``G`` alone. Forward mode then starts at ``G`` and reverse mode stops at ``G``,
so later layers cost less; the other triangle is the transpose (``H`` is symmetric), which makes the result
exactly symmetric: each off-diagonal pair is computed once and mirrored, and the small square blocks on the
diagonal where a chunk meets itself are averaged with their transpose.

Each chunk of columns is one compiled, vectorised call (reverse-over-reverse with pfor, which measured faster
than forward-over-reverse for identity columns; forward mode and a loop are the fallbacks), chunks are sized
by the memory planner, the data is read once, and the whole computation is refused before it starts when
``n^2 x itemsize`` plus working space exceeds ``max_memory``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._backend import keras, tf
from .._checks import InputError, check_choice, check_positive_int, format_bytes, parse_size
from .._memory import DEFAULT_DENSE_LIMIT, activation_elements, plan_chunks, require_fits
from .._progress import progress
from .._types import DataLike, LossLike, ModelLike, WrtLike
from ..io.data import DEFAULT_BATCH_SIZE, Data
from ..params import ParameterSpace
from .hvp import MAX_CHUNK, METHODS, Method, batch_hvp_kernel, column_memory
from .objective import Objective
from .problem import prepare
from .risk import accumulate, as_tensors, prefetch

__all__ = ["HessianResult", "hessian", "dense_hessian", "hessian_memory", "MAX_CHUNK"]

_ALTERNATIVE = ("use `tfpartials spectrum` (top eigenvalues, trace and spectral density without forming the "
                "matrix; in Python tp.top_eigenvalues / tp.hutchpp_trace on tp.HessianOperator), restrict it to "
                "some variables with --wrt (wrt=[...]), or raise --max-memory (max_memory=...)")


@dataclass(frozen=True, eq=False)
class HessianResult:
    """A dense Hessian with the names and positions of its variables.

    Attributes:
        matrix: ``(n, n)`` array, symmetric, in the computation's dtype.
        names: variable names ``<layer>/<variable>`` in parameter order.
        offsets: start of each variable in the flat vector, plus ``n`` at the end (``len(names) + 1``).
        shapes: the variables' shapes.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="lin")])
        >>> x = np.array([[1.0, 0.0], [0.0, 2.0]], "float32"); y = np.zeros((2, 1), "float32")
        >>> H = tp.hessian(model, (x, y), loss="mse")
        >>> H.names, H.offsets, H.n
        (('lin/kernel', 'lin/bias'), (0, 2, 3), 3)
        >>> H.block("lin/kernel", "lin/bias").ravel().tolist()     # (2/N) X^T 1
        [1.0, 2.0]
    """

    matrix: np.ndarray
    names: tuple[str, ...]
    offsets: tuple[int, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def n(self) -> int:
        return int(self.matrix.shape[0])

    def _slice(self, name: str) -> slice:
        if name not in self.names:
            raise InputError(f"unknown parameter {name!r}; available: {', '.join(self.names)}")
        i = self.names.index(name)
        return slice(self.offsets[i], self.offsets[i + 1])

    def block(self, name_a: str, name_b: str, *, reshape: bool = False) -> np.ndarray:
        """The ``(size_a, size_b)`` block d^2 L / d(a) d(b); with ``reshape`` shaped ``(*shape_a, *shape_b)``."""
        out = self.matrix[self._slice(name_a), self._slice(name_b)]
        if reshape:
            out = out.reshape(*self.shapes[self.names.index(name_a)], *self.shapes[self.names.index(name_b)])
        return out

    def block_norms(self) -> np.ndarray:
        """Frobenius norms of all blocks, ``(len(names), len(names))``."""
        m = len(self.names)
        out = np.zeros((m, m))
        for i in range(m):
            for j in range(m):
                blk = self.matrix[self.offsets[i]:self.offsets[i + 1], self.offsets[j]:self.offsets[j + 1]]
                out[i, j] = float(np.linalg.norm(blk.astype(np.float64)))
        return out


def hessian_memory(n: int, itemsize: int, batch_size: int, activations: int) -> tuple[int, int, int]:
    """(matrix bytes, working bytes per column, fixed working bytes) of a dense Hessian computation.

    An estimate on the generous side: see :func:`~tfpartials.autodiff.hvp.column_memory`.
    """
    per_column, fixed = column_memory(n, itemsize, batch_size, activations)
    matrix = n * n * itemsize
    return matrix, per_column, matrix + fixed


def _batch_guess(data, batch_size: int | None) -> int:
    """The batch size the data will be served in, as far as it is known before reading it."""
    if batch_size is not None:
        return batch_size
    if isinstance(data, Data):
        return data.batch_size
    if isinstance(data, tuple) and data and hasattr(data[0], "shape") and len(getattr(data[0], "shape", ())) > 0:
        return max(1, min(DEFAULT_BATCH_SIZE, int(data[0].shape[0] or DEFAULT_BATCH_SIZE)))
    return DEFAULT_BATCH_SIZE


def _groups(sizes: Sequence[int], chunk: int) -> list[list[int]]:
    """Consecutive variables grouped in model order; one smaller than a chunk joins the group before it."""
    groups: list[list[int]] = []
    for i, s in enumerate(sizes):
        if groups and s < chunk:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def hessian(model: ModelLike, data: DataLike, loss: LossLike = None, wrt: WrtLike = None, *, max_memory: str | int | None = "2GiB",
            batch_size: int | None = None, precision: str | None = None, method: Method = "auto",
            chunk_size: int | None = None, training: bool = False, include_regularization: bool = True,
            reduction: str = "mean", unconnected: str = "error", from_logits: bool | None = None,
            allow_nan: bool = False, quiet: bool = False, strategy=None) -> HessianResult:
    """Dense Hessian of the dataset loss with respect to the chosen variables, with named blocks.

    ``H = d^2/dtheta^2 [(1/N) sum_i loss(y_i, model(x_i; theta)) + R(theta)]``, exact over the dataset, model in
    inference mode. Cost: about ``n`` Hessian-vector products (fewer for later layers, see the module
    docstring), vectorised ``chunk`` columns at a time; memory ``n^2 x itemsize`` plus working space.

    Args:
        model: a built Keras model (not modified), or an :class:`~tfpartials.Objective`.
        data: ``(x, y)`` arrays, a ``tf.data.Dataset`` of ``(x, y)``, a path, or a :class:`~tfpartials.Data`.
        loss, wrt, batch_size, precision, unconnected, from_logits: as in :func:`tfpartials.gradients`.
        max_memory: refuse (:class:`~tfpartials.ResourceError`, before any work) when the matrix plus working
            space would exceed this (``"2GiB"``, ``"512MiB"``, bytes; None for 2 GiB).
        method: ``"auto"``, ``"forward"``, ``"reverse"`` or ``"loop"`` (see :func:`tfpartials.hvp`).
        chunk_size: most columns per compiled call (default 128, fewer if memory is short).
        strategy: a ``tf.distribute.Strategy``: each chunk's data pass is spread over its replicas. The n x n
            result is still held whole on every worker (the memory guard applies per worker).

    Returns:
        :class:`HessianResult`: ``.matrix`` (n, n), exactly symmetric, ``.names``, ``.offsets``, ``.shapes``,
        ``.block(a, b)``.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="lin")])
        >>> x = np.array([[1.0, 0.0], [0.0, 2.0]], "float32"); y = np.zeros((2, 1), "float32")
        >>> H = tp.hessian(model, (x, y), loss="mse")             # (2/N) [X 1]^T [X 1]
        >>> H.block("lin/kernel", "lin/kernel").tolist()
        [[1.0, 0.0], [0.0, 4.0]]
    """
    check_choice("method", method, METHODS)
    budget = DEFAULT_DENSE_LIMIT if max_memory is None else parse_size(max_memory, "max_memory")
    if chunk_size is not None:
        check_positive_int("chunk_size", chunk_size)
    if batch_size is not None:
        check_positive_int("batch_size", batch_size)
    # the memory guard runs before the data is read or a float64 copy is made
    if isinstance(model, Objective):
        space, itemsize, keras_model = model.space, model.dtype.size, model.model
    else:
        if not isinstance(model, keras.Model):
            raise TypeError(f"model: expected a Keras model, got {type(model).__name__}")
        if precision is not None:
            check_choice("precision", precision, ("float32", "float64"))
        space, keras_model = ParameterSpace(model, wrt), model
        itemsize = {"float64": 8, "float32": 4}.get(precision or "", space.dtype.size)
    n = space.size
    activations = activation_elements(keras_model)
    matrix_bytes, per_column, fixed = hessian_memory(n, itemsize, _batch_guess(data, batch_size), activations)
    require_fits(fixed + per_column, budget,
                 f"the dense Hessian of {n:,} parameters ({format_bytes(matrix_bytes)} for the {n:,} x {n:,} "
                 "matrix plus working space)", _ALTERNATIVE)

    obj, d = prepare(model, data, loss, wrt, batch_size=batch_size, precision=precision, training=training,
                     include_regularization=include_regularization, reduction=reduction,
                     unconnected=unconnected, from_logits=from_logits, allow_nan=allow_nan, strategy=strategy)
    _, per_column, fixed = hessian_memory(n, obj.dtype.size, d.batch_size, activations)
    plan = plan_chunks(n, per_column, budget=budget, fixed=fixed, what="dense Hessian columns",
                       max_chunk=chunk_size or MAX_CHUNK)
    matrix = dense_hessian(obj, d, plan.chunk, method, quiet)
    return HessianResult(matrix, tuple(obj.space.names), tuple(obj.space.offsets),
                         tuple(tuple(s) for s in obj.space.shapes))


# For identity columns the vectorised reverse-over-reverse kernel measured faster than forward-over-reverse
# (and traces in half the time); forward mode and the loop remain the fallbacks.
DENSE_ORDER = ("reverse", "forward", "loop")


def dense_hessian(obj: Objective, data, chunk: int, method: str, quiet: bool) -> np.ndarray:
    """Fill the upper block triangle chunk by chunk in one pass over the data, then mirror it.

    Each batch's weighted contribution (scale 1/N, a padded last batch masked) is added to the rows of every
    chunk; see the module docstring for the blocks and the mirroring.
    """
    space = obj.space
    n, m = space.size, len(space)
    offsets = space.offsets
    dtype = obj.dtype
    H = np.zeros((n, n), dtype=dtype.as_numpy_dtype)
    params = space.values()
    work = []  # (kernel, first row, end row, first and end column of the group, chunk width)
    for group in _groups(space.sizes, chunk):
        c0, c1 = offsets[group[0]], offsets[group[-1] + 1]
        k = min(chunk, c1 - c0)
        kernel = batch_hvp_kernel(obj, method, tangent_vars=group, output_vars=range(group[0], m), order=DENSE_ORDER)
        work.extend((kernel, r0, min(r0 + k, c1), c0, c1, k) for r0 in range(c0, c1, k))
    strategy = getattr(obj, "strategy", None)
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        # distributed: one data pass per chunk, each SUM-reduced over the replicas (see autodiff/risk.py)
        with progress("dense Hessian", len(work), quiet=quiet, unit="chunks", min_total=2) as bar:
            for kernel, r0, r1, c0, c1, k in work:
                index = tf.range(r0 - c0, r0 - c0 + k)
                index = tf.where(index < r1 - c0, index, -1)
                T = tf.one_hot(index, c1 - c0, dtype=dtype)
                rows = accumulate(obj, data, kernel, params, T, quiet=True).numpy()
                H[r0:r1, c0:] += rows[:r1 - r0]
                bar.advance(1)
        data = None
    with progress("dense Hessian", 0 if data is None else data.num_batches * len(work), quiet=quiet or data is None,
                  unit="chunks", min_total=2) as bar:
        for batch in (prefetch(data.batches()) if data is not None else ()):
            scale, regw = obj.weights(data.num_examples, batch.count)
            x, y, mask = as_tensors(batch.x, dtype), as_tensors(batch.y, dtype), tf.constant(batch.mask, dtype)
            for kernel, r0, r1, c0, c1, k in work:
                index = tf.range(r0 - c0, r0 - c0 + k)
                index = tf.where(index < r1 - c0, index, -1)  # pad the last chunk with zero rows (no retrace)
                T = tf.one_hot(index, c1 - c0, dtype=dtype)
                rows = kernel(params, x, y, mask, scale, regw, T).numpy()
                H[r0:r1, c0:] += rows[:r1 - r0]
                bar.advance(1)
    for _, r0, r1, _, _, _ in work:  # in increasing order: the mirror only ever writes below the computed rows
        S = H[r0:r1, r0:r1]
        H[r0:r1, r0:r1] = (S + S.T) / 2
        H[r1:, r0:r1] = H[r0:r1, r1:].T
    return H
