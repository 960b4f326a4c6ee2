"""Hessian-vector products of the dataset loss, forward-over-reverse, batched over many vectors at once.

For one batch, ``H v`` is the directional derivative of the gradient along ``v``: a
``tf.autodiff.ForwardAccumulator`` (tangent ``v`` on the parameter tensors) around a ``GradientTape``
(Pearlmutter 1994, "Fast exact multiplication by the Hessian"). Many vectors are done at once by vectorising
the single-vector computation over the columns with ``tf.vectorized_map`` (pfor), which turns every
matrix-vector product of the network into a matrix-matrix product. Summed over the fixed-shape, masked
batches with weight 1/N this is the exact dataset HVP.

Not everything vectorises (pfor runs ops it has no rule for in a loop, e.g. a ``Conv3D`` whose filter varies
with the column; :mod:`tfpartials._pfor_rules` adds the rules for 1-D/2-D and depthwise convolutions; a Keras LSTM can be neither forward-differentiated nor vectorised), so each product is built by a
:class:`ColumnKernel` that tries, in order,

* ``"forward"``: forward-over-reverse, vectorised;
* ``"reverse"``: reverse-over-reverse (the gradient of ``g . v``), vectorised;
* ``"loop"``: reverse-over-reverse one column at a time in a ``tf.map_fn`` loop,

falls back at trace time when a mode cannot be built, and says so once with a :class:`FallbackWarning` (also
when pfor had to loop over some op). The same kernel computes blocks ``H[out, tan]`` (tangents on some
variables, gradients of others), which is what :func:`tfpartials.hessian` uses to build one block triangle.
Vectors are processed :data:`MAX_CHUNK` at a time at most, fewer if the memory planner says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from .. import _cache, _pfor_rules
from .._backend import tf
from .._checks import InputError, check_choice
from .._fallback import Fallback, FallbackMemo, FallbackWarning, Implementation
from .._memory import activation_elements, plan_chunks
from .._tracing import PFOR_LOOP_THRESHOLD, pfor_looped_layers
from .._types import DataLike, LossLike, ModelLike, VectorLike, WrtLike
from .objective import Objective
from .problem import prepare
from .risk import accumulate

__all__ = ["hvp", "hvp_matmat", "hvp_kernel", "ColumnKernel", "FallbackWarning", "Method", "METHODS",
           "vectorize_columns", "gradient_of", "column_memory", "column_chunk", "in_column_chunks",
           "activation_elements", "MAX_CHUNK"]

Method = Literal["auto", "forward", "reverse", "loop"]
MAX_CHUNK = 64  # columns per compiled call: larger chunks gain nothing on CPU (memory-bound) and cost memory
MODES = ("forward", "reverse", "loop")
METHODS = ("auto", *MODES)
_MODE_TEXT = {"forward": "forward-over-reverse (vectorised)", "reverse": "reverse-over-reverse (vectorised)",
              "loop": "reverse-over-reverse (one vector at a time)"}


def vectorize_columns(column: Callable[[tf.Tensor], tf.Tensor], T: tf.Tensor, mode: str) -> tf.Tensor:
    """Stack ``column(T[i])`` over the rows of ``T`` (k, m): one call when k is 1, else pfor or a loop.

    pfor runs an op it cannot vectorise in a while loop over the columns (correct, slower); the kernels note
    that and say so once.
    """
    if T.shape[0] == 1:
        return column(T[0])[None]
    if mode == "loop":
        return tf.map_fn(column, T, parallel_iterations=4)
    _pfor_rules.install()  # convolutions whose filter varies with the column: one batched op, not a loop
    return tf.vectorized_map(column, T, fallback_to_while_loop=True)


def gradient_of(obj: Objective, params: Sequence, x, y, mask, scale, regw, indices: Sequence[int]) -> list:
    """Gradients of one batch's objective w.r.t. ``params[i]`` for ``i`` in ``indices`` (None policy applied)."""
    chosen = [params[i] for i in indices]
    with tf.GradientTape() as inner:
        inner.watch(chosen)
        value = obj.batch_value(params, x, y, mask, scale, regw)
    grads = inner.gradient(value, chosen, unconnected_gradients=tf.UnconnectedGradients.NONE)
    full = list(params)  # fix_none checks names positionally over the whole space
    for i, g in zip(indices, grads):
        full[i] = g
    fixed = obj.fix_none(full, params)
    return [fixed[i] for i in indices]


def _flat(tensors) -> tf.Tensor:
    return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)


def _split(t, shapes, sizes) -> list:
    return [tf.reshape(p, s) for p, s in zip(tf.split(t, sizes), shapes)]


def hvp_kernel(obj: Objective, mode: str, tangent_vars: Sequence[int], output_vars: Sequence[int]):
    """Python function ``(params, x, y, mask, scale, regw, T) -> R`` for one batch, to be compiled.

    ``T`` is ``(k, m)`` (m = size of the tangent variables) and row ``i`` of ``R`` (k, size of the output
    variables) is ``H[out, tan] @ T[i]``: with tangents and outputs all variables, ``R = (H @ T.T).T``.
    Cost per row: about two gradients (forward-over-reverse) or three (reverse-over-reverse).
    """
    tan, out = tuple(tangent_vars), tuple(output_vars)
    shapes = [obj.space.shapes[i] for i in tan]
    sizes = [obj.space.sizes[i] for i in tan]

    def forward(params, x, y, mask, scale, regw, T):
        primals = [params[i] for i in tan]

        def column(t):
            with tf.autodiff.ForwardAccumulator(primals, _split(t, shapes, sizes)) as acc:
                grads = gradient_of(obj, params, x, y, mask, scale, regw, out)
            return _flat([acc.jvp(g, unconnected_gradients=tf.UnconnectedGradients.ZERO) for g in grads])

        return vectorize_columns(column, T, mode)

    def reverse(params, x, y, mask, scale, regw, T):
        chosen = [params[i] for i in out]

        def column(t):  # H[out, tan] t = d/dtheta_out (g_tan . t), by symmetry of H
            with tf.GradientTape() as outer:
                outer.watch(chosen)
                dot = tf.reduce_sum(_flat(gradient_of(obj, params, x, y, mask, scale, regw, tan)) * t)
            return _flat(outer.gradient(dot, chosen, unconnected_gradients=tf.UnconnectedGradients.ZERO))

        return vectorize_columns(column, T, mode)

    return forward if mode == "forward" else reverse


def ColumnKernel(obj: Objective, key: str, build: Callable[[str], Callable], method: str = "auto",
                 what: str = "Hessian-vector products", shared: FallbackMemo | None = None,
                 order: Sequence[str] = MODES) -> Fallback:
    """A per-batch product ``(params, x, y, mask, scale, regw, T) -> (k, ...)`` with automatic fallback.

    ``build(mode)`` returns the Python function for a mode (``"forward"``, ``"reverse"``, ``"loop"``), compiled
    once through :meth:`Objective.function`; :class:`~tfpartials._fallback.Fallback` tries the modes in
    ``order`` (only ``method`` when it is not ``"auto"``). Kernels sharing ``shared`` (same objective and family)
    skip a mode another one found unavailable, and warn once between them. One vector (``k = 1``) is traced
    without pfor, so it is checked separately.
    """
    check_choice("method", method, METHODS)
    modes = list(order) if method == "auto" else [method]
    if method == "auto" and "loop" in modes and pfor_looped_layers(obj.model, ruled=False) >= PFOR_LOOP_THRESHOLD:
        # a real CNN: the compiled loop over the columns runs as fast as pfor and traces about 4x faster
        modes = ["loop"] + [m for m in modes if m != "loop"]
    by_name = {_MODE_TEXT[m]: m for m in modes}
    impls = [Implementation(_MODE_TEXT[m], (lambda m=m: build(m)), vectorized=m != "loop", forward=m == "forward")
             for m in modes]
    return Fallback(what, impls, model=obj.model, memo=shared, exhausted="raise" if method == "auto" else "unsupported",
                    compile=lambda impl: obj.function(f"{key}/{by_name[impl.name]}", impl.build),
                    variant_of=lambda args: args[-1].shape[0] == 1)


def cached_kernel(obj: Objective, family: str, key: str, build: Callable[[str], Callable],
                  method: str = "auto", what: str = "Hessian-vector products",
                  order: Sequence[str] = MODES) -> ColumnKernel:
    """The :class:`ColumnKernel` of ``obj`` for ``key`` (one per objective, so a fallback is decided once).

    ``order`` is the sequence of modes ``method="auto"`` tries.
    """
    shared = _cache.cached(obj, ("kernel-shared", family, method), FallbackMemo)
    return _cache.cached(obj, ("kernel", key, method, tuple(order)),
                         lambda: ColumnKernel(obj, key, build, method, what, shared, order))


def batch_hvp_kernel(obj: Objective, method: str = "auto", tangent_vars: Sequence[int] | None = None,
                     output_vars: Sequence[int] | None = None, order: Sequence[str] = MODES) -> ColumnKernel:
    """The per-batch kernel of ``H[out, tan]``-products (all variables by default), cached on ``obj``."""
    every = tuple(range(len(obj.space)))
    tan = every if tangent_vars is None else tuple(tangent_vars)
    out = every if output_vars is None else tuple(output_vars)
    key = f"hvp/{','.join(map(str, tan))}/{','.join(map(str, out))}"
    return cached_kernel(obj, "hvp", key, lambda mode: hvp_kernel(obj, mode, tan, out), method, order=order)


def column_memory(n: int, itemsize: int, batch_size: int, activations: int) -> tuple[int, int]:
    """(working bytes per vector, fixed working bytes) of a vectorised second-order product.

    Per vector: the tangents of every activation of a batch and a few parameter-sized vectors; fixed: the
    forward pass, the gradient and some slack. An estimate, on the generous side.
    """
    activations = max(int(activations), 64)
    per_column = itemsize * (4 * n + 6 * batch_size * activations)
    fixed = itemsize * (4 * batch_size * activations + 4 * n) + 64 * 1024**2
    return per_column, fixed


def column_chunk(obj: Objective, batch_size: int, budget: int | None = None) -> int:
    """How many vectors one compiled call may take (at most :data:`MAX_CHUNK`) within the memory budget."""
    per_column, fixed = column_memory(obj.space.size, obj.dtype.size, batch_size, activation_elements(obj.model))
    return plan_chunks(MAX_CHUNK, per_column, budget=budget, fixed=fixed, what="vectorised products").chunk


def in_column_chunks(product: Callable[[tf.Tensor], tf.Tensor], V: tf.Tensor, chunk: int) -> tf.Tensor:
    """``product(V)`` for ``(n, k)`` V, ``chunk`` columns at a time (the last padded, so one trace serves all)."""
    k = int(V.shape[1])
    if k <= chunk:
        return product(V)
    parts = []
    for start in range(0, k, chunk):
        block = V[:, start:start + chunk]
        width = int(block.shape[1])
        if width < chunk:
            block = tf.pad(block, [[0, 0], [0, chunk - width]])
        parts.append(product(block)[:, :width])
    return tf.concat(parts, axis=1)


def hvp_matmat(obj: Objective, data, V, *, method: str = "auto", quiet: bool = False, strategy=None,
               description: str = "Hessian-vector product") -> tf.Tensor:
    """``H @ V`` for an ``(n, k)`` matrix over the whole dataset, exact; a tensor in the objective's dtype."""
    V = tf.cast(tf.convert_to_tensor(V), obj.dtype)
    kernel = batch_hvp_kernel(obj, method)
    params = obj.space.values()

    def product(block):
        rows = accumulate(obj, data, kernel, params, tf.transpose(block), description=description, quiet=quiet,
                          strategy=strategy)
        return tf.transpose(rows)

    return in_column_chunks(product, V, column_chunk(obj, data.batch_size))


def hvp(model: ModelLike, data: DataLike, v: VectorLike, loss: LossLike = None, wrt: WrtLike = None, *, batch_size: int | None = None,
        precision: str | None = None, method: Method = "auto", training: bool = False,
        include_regularization: bool = True, reduction: str = "mean", unconnected: str = "error",
        from_logits: bool | None = None, allow_nan: bool = False, quiet: bool = False,
        strategy=None) -> dict[str, np.ndarray]:
    """Hessian-vector product ``H v`` of the dataset loss with respect to the chosen variables.

    ``H = d^2/dtheta^2 [(1/N) sum_i loss(y_i, model(x_i; theta)) + R(theta)]``, exact over the dataset (N counted
    exactly), the model in inference mode. Cost: about two gradients (one forward-mode pass over a
    reverse-mode pass, Pearlmutter 1994); reverse-over-reverse is used where forward mode is unavailable.

    Args:
        model: a built Keras model (not modified), or an :class:`~tfpartials.Objective`.
        data: ``(x, y)`` arrays, a ``tf.data.Dataset`` of ``(x, y)``, a path, or a :class:`~tfpartials.Data`.
        v: the vector, flat ``(n,)`` in parameter order or a ``{name: array}`` dict.
        loss, wrt, batch_size, precision, unconnected, from_logits: as in :func:`tfpartials.gradients`.
        method: ``"auto"`` (forward-over-reverse, falling back), ``"forward"``, ``"reverse"`` or ``"loop"``.
        strategy: a ``tf.distribute.Strategy`` spreading the data pass over replicas (same numbers).

    Returns:
        ``{name: array}`` keyed by ``<layer>/<variable>``, shaped like the variables.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="lin")])
        >>> x = np.array([[1.0, 0.0], [0.0, 2.0]], "float32"); y = np.zeros((2, 1), "float32")
        >>> hv = tp.hvp(model, (x, y), {"lin/kernel": np.ones((2, 1)), "lin/bias": np.zeros(1)}, loss="mse")
        >>> hv["lin/kernel"].ravel().tolist()          # (2/N) X^T X 1 = [1, 4]
        [1.0, 4.0]
    """
    obj, d = prepare(model, data, loss, wrt, batch_size=batch_size, precision=precision, training=training,
                     include_regularization=include_regularization, reduction=reduction,
                     unconnected=unconnected, from_logits=from_logits, allow_nan=allow_nan, strategy=strategy)
    if not isinstance(v, dict) and np.ndim(v) != 1:
        raise InputError(f"v: expected a vector of shape ({obj.space.size},) or a {{name: array}} dict, got shape "
                         f"{np.shape(v)}; for many vectors use HessianOperator(...).matmat(V)")
    vec = obj.space.vector_from(v, obj.dtype)
    out = hvp_matmat(obj, d, vec[:, None], method=method, quiet=quiet, strategy=strategy)
    return obj.space.to_dict(out[:, 0].numpy())
