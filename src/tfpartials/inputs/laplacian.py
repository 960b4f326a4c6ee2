"""Laplacian and divergence of network outputs with respect to inputs, without forming Hessians or Jacobians."""

from __future__ import annotations

import numpy as np

from .._backend import tf
from .._checks import InputError
from .._memory import plan_chunks
from .._types import InputsLike, ModelLike
from ._model_fn import (
    ZERO,
    check_component,
    get_function,
    refuse_training,
)
from ._sweep import (
    Candidate,
    Unsupported,
    budget_and_fixed,
    map_directions,
    one_hot_rows,
    row_bytes,
    split_rows,
    sweep,
    tile_rows,
)
from .hessian import hessian_flat
from .partials import nested_directional_derivative

__all__ = ["laplacian", "divergence"]


def laplacian(model: ModelLike, x: InputsLike, output: int | str | None = None, input: int | str | None = None, *, component=None,
              training: bool = False, precision: str | None = None, max_memory: str | int | None = None,
              batch_size: int | None = None, quiet: bool = False) -> np.ndarray:
    """Per-example Laplacian of an output with respect to the input: ``sum_i d^2 y_b / d x_i^2``.

    Each diagonal term is a second directional derivative along a coordinate axis, taken by two nested
    forward-mode accumulators; this gives the term for every output component at once, so the Laplacian of
    a vector output (``component="all"``) costs the same as that of one component. No Hessian is stored
    (except for models TensorFlow cannot run in forward mode, e.g. an LSTM: then the traces of per-example
    Hessians, a few examples at a time).
    Cost: ``n_in`` second-order directional derivatives (about 4 forward passes each) per example, all
    vectorised in chunks. Reference: Griewank & Walther, "Evaluating Derivatives", 2008, ch. 13.

    Args:
        model: a built Keras model (not modified).
        x: inputs, ``(B, *in)``; a list or dict for a multi-input model (the other inputs are held fixed).
        output: output name or index (multi-output models).
        input: input name or index (multi-input models).
        component: output component: None for a single-unit output, a flat index or coordinate tuple,
            or ``"all"`` (the Laplacian of each component).
        max_memory: working-memory budget (``"2GiB"``).
        precision: ``"float64"`` computes on a float64 copy of the model.
        batch_size: at most this many examples per pass (memory only).

    Returns:
        ``(B,)``, or ``(B, *out)`` for ``component="all"``.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        >>> tp.laplacian(model, np.ones((2, 3), "float32")).tolist()  # affine: zero curvature
        [0.0, 0.0]
    """
    refuse_training(training, "per-example input derivatives")
    fn = get_function(model, input, output, precision)
    prep = fn.prepare(x)
    comp = check_component(component, prep.out_shape, fn.output_name)
    B, n_in, n_out = prep.num_examples, prep.n_in, prep.n_out
    budget, fixed = budget_and_fixed(max_memory, B * n_out * fn.dtype.size, "the Laplacian",
                                     "pass fewer examples")
    in_shape = prep.in_shape

    def second(xb, others, v):  # d^2 y / dt^2 at x + t v, all output components
        return nested_directional_derivative(lambda z: fn.rows(z, others, in_shape), xb, [v, v])

    def vectorised():
        def step(xb, others, pe, dirs):
            bc = tf.shape(xb)[0]
            return map_directions(lambda i: second(xb, others, one_hot_rows(i[0], bc, n_in, xb.dtype)), dirs)
        return step

    def stacked():
        def step(xb, others, pe, dirs):
            i = dirs[0]
            bc, dc = tf.shape(xb)[0], tf.shape(i)[0]
            xr, orows = tile_rows(xb, others, dc)
            v = tf.one_hot(tf.repeat(i, bc), n_in, dtype=xr.dtype)
            return split_rows(second(xr, orows, v), dc, bc)  # (bc, dc, n_out); summed after the padding is cut
        return step

    step = fn.step(("laplacian", in_shape), [Candidate("forward-over-forward, vectorized_map", vectorised, True),
                                             Candidate("forward-over-forward, stacked copies", stacked, True)],
                   generic=False, what="a forward-mode Laplacian")
    out = np.zeros((B, n_out), fn.dtype.as_numpy_dtype)
    dirs = np.arange(n_in, dtype=np.int32)
    try:
        for b0, b1, _, _, res in sweep(step, prep, [dirs], row_bytes(fn, prep, 5), budget=budget, fixed=fixed,
                                       what="Laplacian", description="Laplacian", quiet=quiet,
                                       batch_size=batch_size):
            out[b0:b1] += res.sum(axis=1)
    except Unsupported:  # no forward mode for this model (e.g. LSTM): traces of Hessians, a few examples at a time
        comps = np.arange(n_out, dtype=np.int32) if comp is None else np.array([comp], np.int32)
        per_example = len(comps) * n_in * n_in * fn.dtype.size
        plan = plan_chunks(B, per_example, budget=budget, fixed=fixed, what="Laplacian (Hessian traces)",
                           max_chunk=batch_size)
        for b0, b1 in plan.ranges():
            H = hessian_flat(fn, prep.subset(b0, b1), comps, budget=budget,
                             fixed=fixed + (b1 - b0) * per_example, quiet=quiet, batch_size=batch_size)
            out[b0:b1, comps] = np.trace(H, axis1=2, axis2=3)
    if comp is None:
        return out.reshape((B, *prep.out_shape))
    return out[:, comp]


def divergence(model: ModelLike, x: InputsLike, output: int | str | None = None, input: int | str | None = None, *,
               training: bool = False, precision: str | None = None, max_memory: str | int | None = None,
               batch_size: int | None = None, quiet: bool = False) -> np.ndarray:
    """Per-example divergence of a vector field ``y = F(x)`` with as many outputs as inputs: ``sum_i dF_i/dx_i``.

    The trace of the Jacobian, one forward-mode Jacobian-vector product per coordinate (the diagonal entry
    is kept, the Jacobian is never stored). Cost: ``n_in`` Jacobian-vector products per example, vectorised.
    Reference: Griewank & Walther, "Evaluating Derivatives", 2008, ch. 3.

    Args:
        model: a built Keras model whose chosen output has the same number of entries as the chosen input
            (matched in flat order).
        x: inputs, ``(B, *in)``.

    Returns:
        ``(B,)`` array.

    Raises:
        InputError: the output and input sizes differ.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, use_bias=False)])
        >>> model.set_weights([np.array([[1.0, 7.0], [5.0, 3.0]], "float32")])
        >>> tp.divergence(model, np.ones((1, 2), "float32")).tolist()  # trace of W
        [4.0]
    """
    refuse_training(training, "per-example input derivatives")
    fn = get_function(model, input, output, precision)
    prep = fn.prepare(x)
    B, n_in, n_out = prep.num_examples, prep.n_in, prep.n_out
    if n_in != n_out:
        raise InputError(f"divergence needs as many outputs as inputs: output {fn.output_name!r} has {n_out} "
                         f"entries {prep.out_shape}, input {fn.input_name!r} has {n_in} {prep.in_shape}")
    budget, fixed = budget_and_fixed(max_memory, B * fn.dtype.size, "the divergence", "pass fewer examples")
    in_shape = prep.in_shape

    def vectorised():
        def step(xb, others, pe, dirs):
            bc = tf.shape(xb)[0]

            def diagonal(i):
                with tf.autodiff.ForwardAccumulator(xb, one_hot_rows(i[0], bc, n_in, xb.dtype)) as acc:
                    y = fn.rows(xb, others, in_shape)
                return tf.gather(acc.jvp(y, unconnected_gradients=ZERO), i[0], axis=1)
            return map_directions(diagonal, dirs)  # (bc, dc)
        return step

    def stacked():
        def step(xb, others, pe, dirs):
            i = dirs[0]
            bc, dc = tf.shape(xb)[0], tf.shape(i)[0]
            xr, orows = tile_rows(xb, others, dc)
            ir = tf.repeat(i, bc)
            with tf.autodiff.ForwardAccumulator(xr, tf.one_hot(ir, n_in, dtype=xr.dtype)) as acc:
                y = fn.rows(xr, orows, in_shape)
            diag = tf.gather(acc.jvp(y, unconnected_gradients=ZERO), ir[:, None], batch_dims=1)[:, 0]
            return split_rows(diag, dc, bc)  # (bc, dc)
        return step

    def reverse():  # for models TensorFlow cannot run in forward mode: row i of J by one VJP, keep entry i
        def step(xb, others, pe, dirs):
            i = dirs[0]
            bc, dc = tf.shape(xb)[0], tf.shape(i)[0]
            xr, orows = tile_rows(xb, others, dc)
            ir = tf.repeat(i, bc)
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(xr)
                y = fn.rows(xr, orows, in_shape)
                s = tf.reduce_sum(tf.gather(y, ir[:, None], batch_dims=1))
            g = tape.gradient(s, xr, unconnected_gradients=ZERO)
            return split_rows(tf.gather(g, ir[:, None], batch_dims=1)[:, 0], dc, bc)
        return step

    step = fn.step(("divergence", in_shape), [Candidate("forward mode, vectorized_map", vectorised, True),
                                              Candidate("forward mode, stacked copies", stacked, True),
                                              Candidate("reverse mode, stacked copies", reverse, False)],
                   what="a divergence")
    out = np.zeros(B, fn.dtype.as_numpy_dtype)
    dirs = np.arange(n_in, dtype=np.int32)
    for b0, b1, _, _, res in sweep(step, prep, [dirs], row_bytes(fn, prep, 4), budget=budget, fixed=fixed,
                                   what="divergence", description="divergence", quiet=quiet,
                                   batch_size=batch_size):
        out[b0:b1] += res.sum(axis=1)
    return out
