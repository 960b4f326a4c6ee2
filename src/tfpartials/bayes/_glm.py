"""Per-example output Jacobians and output-space loss Hessians: the pieces of the linearised (GLM) predictive.

For a batch, ``J[b, c, :] = d f_c(x_b; theta) / d theta`` over the chosen parameters (flat ParameterSpace order)
and ``Lam[b] = d^2 loss_b / d f^2`` (outputs x outputs). The Gauss-Newton matrix of the summed loss is
``sum_b J_b^T Lam_b J_b``; its diagonal, and the functional covariance ``J_b Sigma J_b^T`` of the linearised
model ``f(x; theta) ~ f(x; theta*) + J (theta - theta*)``, are computed from them without forming a ``P x P``
matrix. The examples of a batch are mapped with ``tf.vectorized_map`` (one reverse pass per output unit each).
"""

from __future__ import annotations

import numpy as np

from .._backend import tf
from .._checks import InputError
from .._memory import plan_chunks
from .._tracing import PFOR_LOOP_THRESHOLD, pfor_looped_layers, unaudited_layer
from ..autodiff.objective import Objective
from ..autodiff.risk import accumulate, as_tensors
from ..io.data import Data, load_data

__all__ = ["output_dim", "jacobian_function", "jacobian_chunk", "summed_ggn", "loss_sum", "outputs_and_jacobians"]

_ZERO = tf.UnconnectedGradients.ZERO


def _flat_output(out) -> tf.Tensor:
    flat = tf.nest.flatten(out)
    if len(flat) != 1:
        raise InputError(f"the Laplace approximation needs a model with one output, got {len(flat)} outputs")
    o = flat[0]
    if o.shape.rank == 1:
        return o[:, None]
    if o.shape.rank != 2:
        raise InputError(f"the Laplace approximation needs outputs of shape (batch, units), got {tuple(o.shape)}")
    return o


def output_dim(obj: Objective, data: Data) -> int:
    """Number of output units ``C`` of the model (outputs must be ``(batch, C)`` or ``(batch,)``)."""
    x, _ = data.first(1)
    out = obj.forward(obj.space.values(), as_tensors(x, obj.dtype))
    return int(_flat_output(out).shape[1])


def _per_example_jacobian(obj: Objective, params, x, num_out: int):
    """``(B, C, P)`` per-example output Jacobians w.r.t. ``params`` (vectorised over the examples)."""
    def one(xi):
        xb = tf.nest.map_structure(lambda t: t[None], xi)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(params)
            f = tf.cast(_flat_output(obj.forward(params, xb)), obj.dtype)[0]
        rows = []
        for c in range(num_out):
            seed = tf.one_hot(c, num_out, dtype=f.dtype)   # e_c^T J, without slicing f off the tape
            g = tape.gradient(f, params, output_gradients=seed, unconnected_gradients=_ZERO)
            rows.append(tf.concat([tf.reshape(tf.convert_to_tensor(t), [-1]) for t in g], axis=0))
        return tf.stack(rows)

    if unaudited_layer(obj.model) is None and pfor_looped_layers(obj.model) < PFOR_LOOP_THRESHOLD:
        return tf.vectorized_map(one, x, fallback_to_while_loop=True)
    # the library's one vectorisation rule: custom layers and real CNNs take the exact compiled loop
    spec = tf.TensorSpec([num_out, obj.space.size], obj.dtype)
    return tf.map_fn(one, x, fn_output_signature=spec)


def jacobian_function(obj: Objective, num_out: int):
    """Compiled ``(params, x) -> (f (B, C), J (B, C, P))`` for one batch, cached on the objective."""
    def build():
        def step(params, x):
            f = tf.cast(_flat_output(obj.forward(params, x)), obj.dtype)
            return f, _per_example_jacobian(obj, list(params), x, num_out)
        return step
    return obj.function(f"laplace/jacobian/{num_out}", build)


def jacobian_chunk(obj: Objective, num_out: int, batch_size: int, max_memory=None) -> int:
    """Examples per Jacobian pass so that ``(B, C, P)`` and its working copies fit the memory budget."""
    from .._memory import resolve_budget

    per = num_out * obj.space.size * 8 * 4
    budget = resolve_budget(max_memory)
    plan = plan_chunks(batch_size, per, budget=budget, what="per-example output Jacobians")
    return plan.chunk


def _ggn_step(obj: Objective, num_out: int, full: bool):
    def build():
        def step(params, x, y, mask, scale, regw):
            params = list(params)
            f_struct = obj.forward(params, x)
            f = tf.cast(_flat_output(f_struct), obj.dtype)
            J = _per_example_jacobian(obj, params, x, num_out)
            z = tf.stop_gradient(f)
            shape = tf.shape(_raw_output(f_struct))
            with tf.GradientTape() as t1:
                t1.watch(z)
                with tf.GradientTape() as t2:
                    t2.watch(z)
                    per = tf.cast(obj._loss_of(tf.reshape(z, shape), y), obj.dtype)
                    total = tf.reduce_sum(per)
                g = t2.gradient(total, z, unconnected_gradients=_ZERO)
            lam = t1.batch_jacobian(g, z, unconnected_gradients=_ZERO)  # (B, C, C)
            w = tf.cast(mask, obj.dtype)
            lj = tf.matmul(lam, J) * w[:, None, None]                     # masked Lam_b J_b (B, C, P)
            if full:
                rows = tf.reshape(J, [-1, tf.shape(J)[-1]])
                return tf.matmul(rows, tf.reshape(lj, tf.shape(rows)), transpose_a=True), tf.reduce_sum(w * per)
            return tf.reduce_sum(J * lj, axis=[0, 1]), tf.reduce_sum(w * per)
        return step
    return obj.function(f"laplace/ggn/{num_out}/{'full' if full else 'diag'}", build)


def _raw_output(out):
    return tf.nest.flatten(out)[0]


def summed_ggn(obj: Objective, data: Data, num_out: int, *, full: bool = False,
               quiet: bool = True) -> tuple[np.ndarray, float]:
    """``sum_i J_i^T Lam_i J_i`` (``full``) or its exact diagonal, and ``sum_i loss_i``, in one data pass.

    Cost: ``C`` reverse passes per example, plus ``O(C P^2)`` per example for the full matrix.
    """
    step = _ggn_step(obj, num_out, full)
    out, total = accumulate(obj, data, step, obj.space.values(),
                            description="Gauss-Newton " + ("matrix" if full else "diagonal"), quiet=quiet)
    return np.asarray(out, np.float64), float(total)


def loss_sum(obj: Objective, data: Data, *, quiet: bool = True) -> float:
    """``sum_i loss_i`` over the dataset (no regularisation: the prior stands in for it)."""
    def build():
        def step(params, x, y, mask, scale, regw):
            per = tf.cast(obj.per_example_loss(list(params), x, y), obj.dtype)
            return tf.reduce_sum(tf.cast(mask, obj.dtype) * per)
        return step
    fn = obj.function("laplace/loss_sum", build)
    total = accumulate(obj, data, fn, obj.space.values(), description="log-likelihood", quiet=quiet)
    return float(total)


def outputs_and_jacobians(obj: Objective, x, num_out: int, *, batch_size: int = 128, max_memory=None):
    """Yield ``(start, stop, f, J)`` numpy blocks for the inputs ``x`` (no targets needed)."""
    chunk = jacobian_chunk(obj, num_out, batch_size, max_memory)
    d = load_data(x, batch_size=chunk, model=obj.model, require_targets=False)
    if obj.dtype.name == "float64":
        d = d.cast("float64")
    fn = jacobian_function(obj, num_out)
    params = obj.space.values()
    start = 0
    for batch in d.batches():
        f, J = fn(params, as_tensors(batch.x, obj.dtype))
        k = batch.count
        yield start, start + k, np.asarray(f, np.float64)[:k], np.asarray(J, np.float64)[:k]
        start += k
