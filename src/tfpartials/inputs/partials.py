"""Any mixed partial derivative of a network output with respect to input coordinates, by nested forward mode."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._backend import tf
from .._checks import InputError
from .._types import InputsLike, ModelLike
from ._model_fn import (
    ZERO,
    check_component,
    flat_index,
    get_function,
    refuse_training,
)
from ._sweep import (
    Candidate,
    Unsupported,
    budget_and_fixed,
    row_bytes,
    sweep,
)

__all__ = ["partial_derivative", "nested_directional_derivative"]

MAX_ORDER = 8


def nested_directional_derivative(f, x, tangents: Sequence):
    """``D^k f(x)[v_1, ..., v_k]``: ``k`` nested forward-mode accumulators, one per tangent (k = 0: ``f(x)``).

    The outermost accumulator differentiates the inner one's Jacobian-vector product, so each level adds
    one directional derivative. Cost: about ``2^k`` evaluations of ``f``.
    """
    if not tangents:
        return f(x)
    with tf.autodiff.ForwardAccumulator(x, tangents[0]) as acc:
        inner = nested_directional_derivative(f, x, tangents[1:])
    return acc.jvp(inner, unconnected_gradients=ZERO)


def _multi_index(index, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(index, int | np.integer) and not isinstance(index, bool):
        index = (int(index),)
    if not isinstance(index, tuple | list):
        raise TypeError(f"index: expected a tuple of input coordinates such as (0, 0, 1), got {index!r}")
    if len(index) > MAX_ORDER:
        raise InputError(f"index: order {len(index)} is above the supported maximum of {MAX_ORDER} (the cost "
                         "doubles with each order)")
    return tuple(flat_index("index entry", i, in_shape) for i in index)


def partial_derivative(model: ModelLike, x: InputsLike, index: Sequence = (0,), output: int | str | None = None,
                       input: int | str | None = None, *, component=None, training: bool = False,
                       precision: str | None = None, max_memory: str | int | None = None,
                       batch_size: int | None = None, quiet: bool = False) -> np.ndarray:
    """A mixed partial derivative of the output with respect to input coordinates, per example.

    ``index=(i1, ..., ik)`` gives ``d^k y_b[component] / (d x_{i1} ... d x_{ik})`` at each example ``x_b``;
    e.g. ``(0, 0, 1)`` is ``d^3 u / d x0^2 d x1``. Entries are flat indices into the per-example input shape
    (or coordinate tuples). Computed by ``k`` nested forward-mode accumulators along the coordinate basis
    vectors, all examples in one vectorised pass. Cost: about ``2^k`` forward passes; no Hessian or
    higher-order tensor is formed. Reference: Griewank & Walther, "Evaluating Derivatives", 2008, ch. 13.

    Args:
        model: a built Keras model (not modified).
        x: inputs, ``(B, *in)``; a list or dict for a multi-input model (the other inputs are held fixed).
        index: the multi-index of input coordinates (order = its length; repeated entries allowed).
        output: output name or index (multi-output models).
        input: input name or index (multi-input models).
        component: output component: None for a single-unit output, a flat index or coordinate tuple,
            or ``"all"``.
        precision: ``"float64"`` computes on a float64 copy of the model.

    Returns:
        ``(B,)``, or ``(B, *out)`` for ``component="all"``.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
        >>> model.set_weights([np.array([[2.0], [5.0]], "float32")])
        >>> tp.partial_derivative(model, np.ones((2, 2), "float32"), index=(1,)).tolist()
        [5.0, 5.0]
    """
    refuse_training(training, "per-example input derivatives")
    fn = get_function(model, input, output, precision)
    prep = fn.prepare(x)
    multi = _multi_index(index, prep.in_shape)
    comp = check_component(component, prep.out_shape, fn.output_name)
    B, n_in = prep.num_examples, prep.n_in
    item = fn.dtype.size
    budget, fixed = budget_and_fixed(max_memory, B * prep.n_out * item, "the partial derivatives",
                                     "pass fewer examples")
    in_shape, order = prep.in_shape, len(multi)

    def build():
        def step(xb, others, pe, dirs):  # dirs: one (1,) tensor per order, the coordinates of the multi-index
            n = tf.shape(xb)[0]
            tangents = [tf.one_hot(tf.fill([n], i[0]), n_in, dtype=xb.dtype) for i in dirs[:order]]
            d = nested_directional_derivative(lambda z: fn.rows(z, others, in_shape), xb, tangents)
            return d[:, None]
        return step

    step = fn.step(("partial", order, in_shape), [Candidate("nested forward mode", build, order > 0)], generic=False,
                   what="nested forward-mode derivatives")  # one trace per order and shape
    out = np.empty((B, prep.n_out), fn.dtype.as_numpy_dtype)
    coords = [np.array([i], np.int32) for i in multi] or [np.zeros(1, np.int32)]
    try:
        for b0, b1, _, _, res in sweep(step, prep, coords, row_bytes(fn, prep, 2 ** order + 1), budget=budget,
                                       fixed=fixed, what="partial derivative", description="partial derivative",
                                       quiet=quiet, batch_size=batch_size):
            out[b0:b1] = res[:, 0]
    except Unsupported as exc:  # no forward mode for this model (e.g. LSTM): reverse mode up to order 2
        out = _reverse_fallback(fn, prep, multi, comp, exc, budget=budget, fixed=fixed, quiet=quiet,
                                batch_size=batch_size)
    if comp is None:
        return out.reshape((B, *prep.out_shape))
    return out[:, comp]


def _reverse_fallback(fn, prep, multi, comp, exc, **kwargs) -> np.ndarray:
    from .hessian import hessian_flat
    from .jacobian import jacobian_flat

    B, n_out = prep.num_examples, prep.n_out
    out = np.zeros((B, n_out), fn.dtype.as_numpy_dtype)
    comps = np.arange(n_out, dtype=np.int32) if comp is None else np.array([comp], np.int32)
    if len(multi) == 1:
        J = jacobian_flat(fn, prep, "reverse", **kwargs)
        out[:, comps] = J[:, comps, multi[0]]
    elif len(multi) == 2:
        kwargs["fixed"] += B * len(comps) * prep.n_in ** 2 * fn.dtype.size
        H = hessian_flat(fn, prep, comps, **kwargs)
        out[:, comps] = H[:, :, multi[0], multi[1]]
    elif len(multi) > 2:
        raise Unsupported(f"{exc}; derivatives of order {len(multi)} need forward mode, which is not available "
                          "for this model (orders 1 and 2 fall back to reverse mode)") from exc
    else:
        raise exc
    return out
