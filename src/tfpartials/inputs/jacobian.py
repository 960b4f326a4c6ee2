"""First derivatives with respect to inputs: per-example gradients and Jacobians, forward or reverse mode."""

from __future__ import annotations

from typing import Literal

import numpy as np

from .._backend import tf
from .._checks import InputError, check_choice
from .._types import InputsLike, ModelLike
from ._model_fn import (
    ZERO,
    check_component,
    component_alias,
    flat_index,
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

__all__ = ["input_gradient", "input_jacobian", "jacobian_flat", "Mode"]

Mode = Literal["auto", "forward", "reverse"]


def input_gradient(model: ModelLike, x: InputsLike, output: int | str | None = None, input: int | str | None = None, *,
                   component=None, index=None, reduce: Literal["sum", "mean"] | None = "sum", training: bool = False,
                   precision: str | None = None, max_memory: str | int | None = None,
                   batch_size: int | None = None, quiet: bool = False) -> np.ndarray:
    """Per-example gradient of a scalar output with respect to the input.

    ``g_b = d s(y_b) / d x_b`` with ``y_b = model(x, training=False)[output][b]`` and ``s`` the chosen scalar:
    the single output unit; component ``index`` of a vector output (an int, a coordinate tuple, or one
    index per example such as class labels); or, with no index, the sum (``reduce="sum"``) or mean
    (``reduce="mean"``) of the components. Examples never mix (inference mode). Cost: one forward and one
    backward pass over the data. Reference: Simonyan et al., "Deep inside convolutional networks", 2014.

    Args:
        model: a built Keras model (not modified).
        x: inputs, ``(B, *in)``; a list or dict for a multi-input model.
        output: output name or index (multi-output models).
        input: input name or index to differentiate with respect to; the others are held fixed.
        component: output component(s), see above (an int, a coordinate tuple, or one index per example).
        index: former name of ``component`` (still accepted).
        reduce: how to combine the components of a vector output when ``component`` is None; ``None`` requires
            a single-unit output or an ``index``.
        precision: ``"float64"`` computes on a float64 copy of the model.
        max_memory: working-memory budget (``"2GiB"``, bytes); default half the available memory.
        batch_size: at most this many examples per pass (memory only; results do not depend on it).

    Returns:
        ``(B, *in)`` array.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
        >>> model.set_weights([np.array([[1.0], [2.0], [3.0]], "float32")])
        >>> tp.input_gradient(model, np.zeros((2, 3), "float32"))[0].tolist()
        [1.0, 2.0, 3.0]
    """
    refuse_training(training, "per-example input gradients")
    check_choice("reduce", reduce, ("sum", "mean", None))
    index = component_alias(component, index)
    fn = get_function(model, input, output, precision)
    prep = fn.prepare(x)
    B, n_out = prep.num_examples, prep.n_out
    w = np.zeros((B, n_out), fn.dtype.as_numpy_dtype)
    if index is None:
        if n_out == 1:
            w[:] = 1
        elif reduce is None:
            raise InputError(f"output {fn.output_name!r} has {n_out} components (shape {prep.out_shape}); "
                             f"choose one with component=INDEX (0..{n_out - 1}) or pass reduce='sum'")
        else:
            w[:] = 1.0 if reduce == "sum" else 1.0 / n_out
    elif isinstance(index, np.ndarray) or hasattr(index, "numpy"):
        idx = np.asarray(index)
        if idx.shape != (B,) or not np.issubdtype(idx.dtype, np.integer):
            raise InputError(f"index: expected one integer per example, shape ({B},), got {idx.dtype} {idx.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= n_out):
            raise InputError(f"index: values must lie in 0..{n_out - 1}, got [{idx.min()}, {idx.max()}]")
        w[np.arange(B), idx] = 1
    else:
        w[:, flat_index("index", index, prep.out_shape)] = 1
    budget, fixed = budget_and_fixed(max_memory, prep.x.nbytes, "the input gradient",
                                     "pass fewer examples at a time")
    in_shape = prep.in_shape

    def build():
        def step(xb, others, pe, dirs):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(xb)
                y = fn.rows(xb, others, in_shape)
                s = tf.reduce_sum(y * pe[0])
            return tape.gradient(s, xb, unconnected_gradients=ZERO)[:, None]
        return step

    step = fn.step(("gradient", in_shape), [Candidate("batched gradient", build, False)],
                   what="an input gradient")
    out = np.empty_like(prep.x)
    for b0, b1, _, _, res in sweep(step, prep, [np.zeros(1, np.int32)], row_bytes(fn, prep, 3), budget=budget,
                                   fixed=fixed, per_example=[w], what="input gradient",
                                   description="input gradient", quiet=quiet, batch_size=batch_size):
        out[b0:b1] = res[:, 0]
    return out.reshape((B, *prep.in_shape))


def _jacobian_step(fn, in_shape, n_in: int, n_out: int, mode: str):
    """Rows of J (reverse: one VJP per output component) or columns (forward: one JVP per input coordinate)."""
    if mode == "reverse":
        def vectorised():
            def step(xb, others, pe, dirs):
                with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
                    tape.watch(xb)
                    y = fn.rows(xb, others, in_shape)
                bc = tf.shape(xb)[0]

                def vjp(k):
                    w = one_hot_rows(k[0], bc, n_out, y.dtype)
                    return tape.gradient(y, xb, output_gradients=w, unconnected_gradients=ZERO)
                return map_directions(vjp, dirs)  # (bc, dc, n_in): rows of J
            return step

        def stacked():
            def step(xb, others, pe, dirs):
                k = dirs[0]
                bc, dc = tf.shape(xb)[0], tf.shape(k)[0]
                xr, orows = tile_rows(xb, others, dc)
                kr = tf.repeat(k, bc)
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(xr)
                    y = fn.rows(xr, orows, in_shape)
                    s = tf.reduce_sum(tf.gather(y, kr[:, None], batch_dims=1))
                g = tape.gradient(s, xr, unconnected_gradients=ZERO)
                return split_rows(g, dc, bc)
            return step
    else:
        def vectorised():
            def step(xb, others, pe, dirs):
                bc = tf.shape(xb)[0]

                def jvp(i):
                    with tf.autodiff.ForwardAccumulator(xb, one_hot_rows(i[0], bc, n_in, xb.dtype)) as acc:
                        y = fn.rows(xb, others, in_shape)
                    return acc.jvp(y, unconnected_gradients=ZERO)
                return map_directions(jvp, dirs)  # (bc, dc, n_out): columns of J
            return step

        def stacked():
            def step(xb, others, pe, dirs):
                i = dirs[0]
                bc, dc = tf.shape(xb)[0], tf.shape(i)[0]
                xr, orows = tile_rows(xb, others, dc)
                v = tf.one_hot(tf.repeat(i, bc), n_in, dtype=xr.dtype)
                with tf.autodiff.ForwardAccumulator(xr, v) as acc:
                    y = fn.rows(xr, orows, in_shape)
                jv = acc.jvp(y, unconnected_gradients=ZERO)
                return split_rows(jv, dc, bc)
            return step
    forward = mode == "forward"
    return fn.step(("jacobian", mode, in_shape), [Candidate(f"{mode} mode, vectorized_map", vectorised, forward),
                                                  Candidate(f"{mode} mode, stacked copies", stacked, forward)],
                   what=f"a {mode}-mode Jacobian")


def jacobian_flat(fn, prep, mode: str, *, budget: int, fixed: int, quiet: bool = False,
                  batch_size: int | None = None) -> np.ndarray:
    """``(B, n_out, n_in)`` by ``mode`` ("forward" or "reverse") for prepared inputs, chunked."""
    B, n_in, n_out = prep.num_examples, prep.n_in, prep.n_out
    step = _jacobian_step(fn, prep.in_shape, n_in, n_out, mode)
    D = n_out if mode == "reverse" else n_in
    J = None
    for b0, b1, d0, d1, res in sweep(step, prep, [np.arange(D, dtype=np.int32)],
                                     row_bytes(fn, prep, 3 if mode == "reverse" else 4), budget=budget,
                                     fixed=fixed, what="input Jacobian", description=f"Jacobian ({mode} mode)",
                                     quiet=quiet, batch_size=batch_size):
        if mode == "reverse" and (b0, b1, d0, d1) == (0, B, 0, D):
            return res  # one chunk: already (B, n_out, n_in)
        if J is None:
            J = np.empty((B, n_out, n_in), fn.dtype.as_numpy_dtype)
        if mode == "reverse":
            J[b0:b1, d0:d1, :] = res
        else:
            J[b0:b1, :, d0:d1] = np.swapaxes(res, 1, 2)
    return J


def input_jacobian(model: ModelLike, x: InputsLike, output: int | str | None = None, input: int | str | None = None, *,
                   component=None, mode: Mode = "auto", max_memory: str | int | None = None, training: bool = False,
                   precision: str | None = None, batch_size: int | None = None,
                   quiet: bool = False) -> np.ndarray:
    """Per-example Jacobian of the chosen output with respect to the chosen input.

    ``J[b] = d y_b / d x_b`` with ``y_b = model(x, training=False)[output][b]``; examples never mix (inference
    mode), so ``J[b]`` does not depend on the other examples of the batch. Reverse mode takes one
    vector-Jacobian product per output component, forward mode one Jacobian-vector product per input
    coordinate; the products of a chunk run as one vectorised computation (``tf.vectorized_map`` over the
    directions, or the model on stacked copies of the examples when an op has no vectorisation rule).
    Cost: ``min(n_in, n_out)`` products per example (``mode="auto"`` picks forward when ``n_in < n_out``, and
    reverse when TensorFlow cannot run the model in forward mode, e.g. through an LSTM).
    Reference: Griewank & Walther, "Evaluating Derivatives", 2nd ed., SIAM 2008, ch. 3.

    Args:
        model: a built Keras model (not modified).
        x: inputs, ``(B, *in)``; a list or dict for a multi-input model (the other inputs are held fixed).
        output: output name or index (multi-output models).
        input: input name or index (multi-input models).
        component: None or ``"all"`` for every output component (the whole Jacobian), or one component (a flat
            index or coordinate tuple into the per-example output shape) for its row ``d y_b[component] / d x_b``
            only, at the cost of one gradient per example; same meaning as in :func:`~tfpartials.input_hessian`,
            :func:`~tfpartials.partial_derivative` and :func:`~tfpartials.laplacian`.
        mode: ``"auto"``, ``"forward"`` or ``"reverse"``; all give the same numbers.
        max_memory: budget for the result and the working memory (``"2GiB"``); default half of what is free.
        training: must be False (training mode couples examples through BatchNorm and randomises Dropout).
        precision: ``"float64"`` computes on a float64 copy of the model.
        batch_size: at most this many examples per pass (memory only).

    Returns:
        ``(B, *out, *in)`` array, or ``(B, *in)`` for one ``component``.

    Raises:
        InputError: wrong input shape, unknown input/output, integer input, ``training=True``.
        ResourceError: the Jacobian itself does not fit ``max_memory``.
        Unsupported: ``mode="forward"`` on a model TensorFlow cannot differentiate in forward mode.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, use_bias=False)])
        >>> W = np.arange(6, dtype="float32").reshape(2, 3); model.set_weights([W])
        >>> J = tp.input_jacobian(model, np.ones((4, 2), "float32"))
        >>> J.shape, bool(np.allclose(J[0], W.T))
        ((4, 3, 2), True)
    """
    refuse_training(training, "per-example input Jacobians")
    check_choice("mode", mode, ("auto", "forward", "reverse"))
    fn = get_function(model, input, output, precision)
    prep = fn.prepare(x)
    if component is not None and not (isinstance(component, str) and component == "all"):
        check_component(component, prep.out_shape, fn.output_name)
        return input_gradient(model, x, output, input, index=component, reduce=None, precision=precision,
                              max_memory=max_memory, batch_size=batch_size, quiet=quiet)
    B, n_in, n_out = prep.num_examples, prep.n_in, prep.n_out
    chosen = mode if mode != "auto" else ("forward" if n_in < n_out else "reverse")
    budget, fixed = budget_and_fixed(
        max_memory, B * n_in * n_out * fn.dtype.size, f"the input Jacobian ({B} x {n_out} x {n_in})",
        "choose one output with output=..., pass fewer examples, or use input_gradient for one component")
    kwargs = dict(budget=budget, fixed=fixed, quiet=quiet, batch_size=batch_size)
    try:
        J = jacobian_flat(fn, prep, chosen, **kwargs)
    except Unsupported as exc:
        if chosen != "forward":
            raise
        if mode == "forward":
            raise Unsupported(f"{exc}; forward mode is not available for this model: use mode='reverse' "
                              "(--mode reverse), which gives the same numbers") from exc
        J = jacobian_flat(fn, prep, "reverse", **kwargs)  # auto: the same numbers by the other mode
    return J.reshape((B, *prep.out_shape, *prep.in_shape))
