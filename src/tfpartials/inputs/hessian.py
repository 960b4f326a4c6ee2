"""Per-example Hessians of network outputs with respect to inputs (forward-over-reverse)."""

from __future__ import annotations

import numpy as np

from .._backend import tf
from .._types import InputsLike, ModelLike
from ._model_fn import (
    ZERO,
    check_component,
    component_alias,
    get_function,
    refuse_training,
)
from ._sweep import (
    Candidate,
    budget_and_fixed,
    map_directions,
    one_hot_rows,
    row_bytes,
    split_rows,
    sweep,
    tile_rows,
)

__all__ = ["input_hessian", "hessian_flat"]


def _hessian_step(fn, in_shape, n_in: int, n_out: int):
    """Column ``i`` of the Hessian of component ``c``, one forward-over-reverse product per direction (c, i)."""
    def hvp(xb, others, c, v):
        with tf.autodiff.ForwardAccumulator(xb, v) as acc:
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(xb)
                y = fn.rows(xb, others, in_shape)
                s = tf.reduce_sum(tf.gather(y, c, axis=1, batch_dims=min(c.shape.rank, 1)))
            g = tape.gradient(s, xb, unconnected_gradients=ZERO)
        return acc.jvp(g, unconnected_gradients=ZERO)

    def vectorised():
        def step(xb, others, pe, dirs):
            bc = tf.shape(xb)[0]
            return map_directions(lambda d: hvp(xb, others, d[0], one_hot_rows(d[1], bc, n_in, xb.dtype)), dirs)
        return step

    def stacked():
        def step(xb, others, pe, dirs):
            c, i = dirs
            bc, dc = tf.shape(xb)[0], tf.shape(c)[0]
            xr, orows = tile_rows(xb, others, dc)
            v = tf.one_hot(tf.repeat(i, bc), n_in, dtype=xr.dtype)
            return split_rows(hvp(xr, orows, tf.repeat(c, bc)[:, None], v), dc, bc)
        return step

    def reverse_over_reverse():  # for models TensorFlow cannot run in forward mode (e.g. LSTM)
        def step(xb, others, pe, dirs):
            c, i = dirs
            bc, dc = tf.shape(xb)[0], tf.shape(c)[0]
            xr, orows = tile_rows(xb, others, dc)
            v = tf.one_hot(tf.repeat(i, bc), n_in, dtype=xr.dtype)
            with tf.GradientTape(watch_accessed_variables=False) as outer:
                outer.watch(xr)
                with tf.GradientTape(watch_accessed_variables=False) as inner:
                    inner.watch(xr)
                    y = fn.rows(xr, orows, in_shape)
                    s = tf.reduce_sum(tf.gather(y, tf.repeat(c, bc)[:, None], axis=1, batch_dims=1))
                g = inner.gradient(s, xr, unconnected_gradients=ZERO)
                t = tf.reduce_sum(g * v)
            return split_rows(outer.gradient(t, xr, unconnected_gradients=ZERO), dc, bc)  # row i = column i
        return step
    return fn.step(("hessian", in_shape), [
        Candidate("forward-over-reverse, vectorized_map", vectorised, True),
        Candidate("forward-over-reverse, stacked copies", stacked, True),
        Candidate("reverse-over-reverse, stacked copies", reverse_over_reverse, False)], what="an input Hessian")


def input_hessian(model: ModelLike, x: InputsLike, output: int | str | None = None, input: int | str | None = None, *,
                  component=None, index=None, max_memory: str | int | None = None, training: bool = False,
                  precision: str | None = None, batch_size: int | None = None, quiet: bool = False) -> np.ndarray:
    """Per-example Hessian of one output component (or of every component) with respect to the input.

    ``H[b] = d^2 y_b[component] / d x_b^2`` with ``y_b = model(x, training=False)[output][b]``. Each column is one
    Hessian-vector product by forward-over-reverse differentiation (a forward-mode derivative of the
    gradient along a coordinate direction); the columns of a chunk of examples run as one vectorised
    computation. Cost: ``n_in`` Hessian-vector products (about 4-5 gradients each) per example and component.
    Reference: Pearlmutter, "Fast exact multiplication by the Hessian", Neural Computation 1994.

    Args:
        model: a built Keras model (not modified).
        x: inputs, ``(B, *in)``; a list or dict for a multi-input model (the other inputs are held fixed).
        output: output name or index (multi-output models).
        input: input name or index (multi-input models).
        component: the output component: None for a single-unit output, a flat index or coordinate tuple into
            the per-example output shape, or ``"all"`` for every component (same meaning as in
            :func:`~tfpartials.partial_derivative`, :func:`~tfpartials.laplacian` and
            :func:`~tfpartials.input_jacobian`).
        index: former name of ``component`` (still accepted).
        max_memory: budget for the result and the working memory (``"2GiB"``).
        training: must be False (training mode couples examples and randomises Dropout).
        precision: ``"float64"`` computes on a float64 copy of the model.
        batch_size: at most this many examples per pass (memory only).

    Returns:
        ``(B, *in, *in)``, or ``(B, *out, *in, *in)`` for ``component="all"``.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="tanh")])
        >>> tp.input_hessian(model, np.zeros((3, 2), "float32")).shape
        (3, 2, 2)
    """
    refuse_training(training, "per-example input Hessians")
    fn = get_function(model, input, output, precision)
    prep = fn.prepare(x)
    B, n_in, n_out = prep.num_examples, prep.n_in, prep.n_out
    comp = check_component(component_alias(component, index), prep.out_shape, fn.output_name)
    comps = np.arange(n_out, dtype=np.int32) if comp is None else np.array([comp], np.int32)
    nc = len(comps)
    item = fn.dtype.size
    budget, fixed = budget_and_fixed(
        max_memory, B * nc * n_in * n_in * item, f"the input Hessian ({B} x {nc} x {n_in} x {n_in})",
        "choose one component with component=..., use laplacian() or partial_derivative() for the entries you "
        "need, or pass fewer examples")
    H = hessian_flat(fn, prep, comps, budget=budget, fixed=fixed, quiet=quiet, batch_size=batch_size)
    if comp is None:
        return H.reshape((B, *prep.out_shape, *prep.in_shape, *prep.in_shape))
    return H.reshape((B, *prep.in_shape, *prep.in_shape))


def hessian_flat(fn, prep, comps: np.ndarray, *, budget: int, fixed: int, quiet: bool = False,
                 batch_size: int | None = None) -> np.ndarray:
    """``(B, len(comps), n_in, n_in)``: the Hessians of output components ``comps`` for prepared inputs."""
    B, n_in, nc = prep.num_examples, prep.n_in, len(comps)
    step = _hessian_step(fn, prep.in_shape, n_in, prep.n_out)
    Ht = np.empty((B, nc * n_in, n_in), fn.dtype.as_numpy_dtype)  # Ht[b, c * n_in + i, :] = H_c[b] e_i
    dir_c = np.repeat(np.asarray(comps, np.int32), n_in)
    dir_i = np.tile(np.arange(n_in, dtype=np.int32), nc)
    for b0, b1, d0, d1, res in sweep(step, prep, [dir_c, dir_i], row_bytes(fn, prep, 6), budget=budget,
                                     fixed=fixed, what="input Hessian", description="input Hessian",
                                     quiet=quiet, batch_size=batch_size):
        Ht[b0:b1, d0:d1, :] = res
    return np.ascontiguousarray(np.swapaxes(Ht.reshape(B, nc, n_in, n_in), 2, 3))
