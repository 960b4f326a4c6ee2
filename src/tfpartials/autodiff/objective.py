"""The spine: a Keras model, a loss and data as a pure function of the chosen parameters.

``Objective.batch_value(params, x, y, mask, scale, reg_weight)`` is

    scale * sum_i mask_i * loss_i(params)  +  reg_weight * R(params)

evaluated with ``model.stateless_call`` (so nothing mutates the user's model). Summed over the fixed-shape
batches of a :class:`~tfpartials.io.data.Data` with ``scale = 1/N`` and ``reg_weight = count_b/N`` this is the
exact dataset objective (1/N) sum_i loss_i + R, whatever the batch size. Every parameter-space quantity
(gradient, HVP, GGN product, dense Hessian, per-example gradient) is a transformation of this function.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

from .. import _cache
from .._backend import keras, tf
from .._checks import InputError, check_choice
from .._tracing import traced
from ..io.losses import Loss, MultiLoss, resolve_loss
from ..params import ParameterSpace

__all__ = ["Objective", "make_objective", "Reduction", "Unconnected"]

Reduction = Literal["mean", "sum"]
Unconnected = Literal["error", "zero"]


class Objective:
    """A pure function of the selected parameters of ``model`` (see module docstring).

    Args:
        model: a built Keras model (not mutated).
        loss: anything :func:`~tfpartials.io.losses.resolve_loss` accepts.
        wrt: variable names / globs / layer names, ``None`` for all trainable variables.
        training: run the model in training mode (Dropout random, BatchNorm batch statistics); default False.
        include_regularization: add the model's regularisation losses (what training minimises).
        reduction: ``"mean"`` (1/N sum) or ``"sum"``.
        unconnected: ``"error"`` (default) raises when a chosen variable does not affect the loss;
            ``"zero"`` treats its derivative as zero.
        strategy: an optional ``tf.distribute.Strategy``; every dataset pass over this objective is spread
            over its replicas and SUM-reduced with exact 1/N weights (see :mod:`tfpartials.autodiff.risk`).
        jit_compile: compile every per-batch function with XLA (opt-in; faster for some models, slower to
            trace; see BENCHMARKS.md).

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="lin")])
        >>> obj = tp.Objective(model, "mse", wrt=["lin/kernel"], reduction="sum")
        >>> x = np.array([[1.0, 0.0], [0.0, 2.0]], "float32"); y = np.zeros((2, 1), "float32")
        >>> tp.hessian(obj, (x, y)).matrix.tolist()       # summed squared errors: 2 X^T X
        [[2.0, 0.0], [0.0, 8.0]]
    """

    def __init__(self, model, loss: Any = None, wrt=None, *, training: bool = False,
                 include_regularization: bool = True, reduction: Reduction = "mean",
                 unconnected: Unconnected = "error", from_logits: bool | None = None, strategy=None,
                 jit_compile: bool = False):
        if not isinstance(model, keras.Model):
            raise TypeError(f"model: expected a Keras model, got {type(model).__name__}")
        check_choice("reduction", reduction, ("mean", "sum"))
        check_choice("unconnected", unconnected, ("error", "zero"))
        self.model = model
        self.loss: Loss | MultiLoss = resolve_loss(loss, from_logits, model)
        _warn_if_logits_look_like_probabilities(model, self.loss)
        self.space = ParameterSpace(model, wrt)
        self.training = bool(training)
        if self.training:
            warnings.warn("training=True: Dropout makes derivatives random and BatchNorm couples the examples "
                          "of a batch (and uses batch statistics); results depend on the batch size",
                          stacklevel=3)
        self.include_regularization = bool(include_regularization)
        self.reduction = reduction
        self.unconnected = unconnected
        self.dtype = self.space.dtype
        self.strategy = strategy  # a tf.distribute.Strategy: dataset passes are spread over its replicas
        self.jit_compile = bool(jit_compile)
        self._pending_error: Exception | None = None
        self.trace_counts: dict[str, int] = {}

    # -- the pure function --------------------------------------------------------------------------------------
    def non_trainable(self) -> list:
        return [tf.convert_to_tensor(v.value) for v in self.model.non_trainable_variables]

    def forward(self, params: Sequence, x, *, return_losses: bool = False):
        """Model outputs (and regularisation losses) at ``params`` via ``stateless_call``."""
        trainable = self.space.full_trainable(list(params))
        res = self.model.stateless_call(trainable, self.non_trainable(), x, training=self.training,
                                        return_losses=True)
        outputs, losses = res[0], res[2]
        if return_losses:
            return outputs, losses
        return outputs

    def per_example_loss(self, params: Sequence, x, y):
        """Per-example loss (B,) at ``params``; regularisation not included."""
        outputs = self.forward(params, x)
        return self._loss_of(outputs, y)

    def _loss_of(self, outputs, y):
        if isinstance(self.loss, MultiLoss):  # one loss per output, matched by name, weighted
            return self.loss.per_example(y, tf.nest.map_structure(lambda o: tf.cast(o, self.dtype), outputs))
        if isinstance(outputs, list | tuple) and len(outputs) > 1:
            ys = y if isinstance(y, list | tuple) else [y]
            if len(ys) != len(outputs):
                raise InputError(f"the model has {len(outputs)} outputs but {len(ys)} target arrays were given")
            return tf.add_n([self.loss.per_example(yt, tf.cast(o, self.dtype)) for yt, o in zip(ys, outputs)])
        if isinstance(outputs, list | tuple):
            outputs = outputs[0]
        if isinstance(outputs, dict):
            outputs = list(outputs.values())[0]
        if isinstance(y, list | tuple) and len(y) == 1:
            y = y[0]
        return self.loss.per_example(y, outputs)

    def regularization(self, losses) -> tf.Tensor:
        if not self.include_regularization or not losses:
            return tf.constant(0.0, self.dtype)
        return tf.cast(tf.add_n([tf.cast(v, self.dtype) for v in losses]), self.dtype)

    def batch_value(self, params: Sequence, x, y, mask, scale, reg_weight):
        """scale * sum(mask * loss_i) + reg_weight * R at ``params`` (one batch)."""
        outputs, losses = self.forward(params, x, return_losses=True)
        per = tf.cast(self._loss_of(outputs, y), self.dtype)
        value = scale * tf.reduce_sum(tf.cast(mask, self.dtype) * per)
        if self.include_regularization and losses:
            value = value + reg_weight * self.regularization(losses)
        return value

    # -- dataset weighting --------------------------------------------------------------------------------------
    def weights(self, num_examples: int, count: int) -> tuple[tf.Tensor, tf.Tensor]:
        """(scale, reg_weight) for a batch holding ``count`` real examples of ``num_examples``."""
        scale = 1.0 / num_examples if self.reduction == "mean" else 1.0
        return tf.constant(scale, self.dtype), tf.constant(count / num_examples, self.dtype)

    # -- gradients with the unconnected policy --------------------------------------------------------------------
    def checked_gradient(self, tape, target, params):
        grads = tape.gradient(target, params, unconnected_gradients=tf.UnconnectedGradients.NONE)
        return self.fix_none(grads, params)

    def fix_none(self, grads, params):
        out = []
        for g, p, name in zip(grads, params, self.space.names):
            if g is None:
                if self.unconnected == "error":
                    raise self._remember(InputError(
                        f"the loss does not depend on parameter {name!r} (its gradient is None): the variable "
                        "is unused in the forward pass or cut off by a non-differentiable op (argmax, round, "
                        "a cast to an integer); exclude it with wrt=... or pass unconnected='zero' "
                        "(--unconnected zero)"))
                g = tf.zeros_like(p)
            elif isinstance(g, tf.IndexedSlices):
                g = tf.convert_to_tensor(g)
            out.append(g)
        return out

    # -- compiled functions, traced once per shape signature -------------------------------------------------------
    def _remember(self, exc: Exception) -> Exception:
        """Keep a user-facing error raised while tracing, so the caller sees it instead of a StagingError."""
        self._pending_error = exc
        return exc

    def _counted(self, key: str, py):
        def counted(*args):
            self.trace_counts[key] = self.trace_counts.get(key, 0) + 1
            return py(*args)
        return counted

    def function(self, key: str, builder):
        """Cached ``tf.function`` for ``key``; ``builder()`` returns the Python function to compile."""
        functions = _cache.table(self)
        fn = functions.get(("function", key))
        if fn is None:
            compiled = traced(self._counted(key, builder()), reduce_retracing=True,
                                   jit_compile=self.jit_compile or None)

            concrete: dict = {}  # exact argument signature -> its traced graph, called without dispatch

            def fn(*args, _compiled=compiled, _concrete=concrete):
                self._pending_error = None
                sig = _exact_signature(args) if self.strategy is None else None
                try:
                    graph = _concrete.get(sig) if sig is not None else None
                    if graph is not None:
                        return graph(*args)
                    out = _compiled(*args)
                    if sig is not None and len(_concrete) < _MAX_CONCRETE:
                        _concrete[sig] = _compiled.get_concrete_function(*args)
                    return out
                except Exception:
                    pending, self._pending_error = self._pending_error, None
                    if pending is not None:
                        raise pending from None
                    raise

            fn.compiled = compiled
            fn.concrete = concrete
            functions[("function", key)] = fn
        return fn


#: shapes remembered per compiled function for direct calls (a dataset's batch and its last, a few widths)
_MAX_CONCRETE = 16


class _Polymorphic(Exception):
    pass


def _exact_signature(args):
    """A hashable key of the exact dtypes, shapes and nesting of ``args`` (eager tensors in lists and tuples),
    or None for anything else. Calls with the same key reuse one traced graph directly: the polymorphic
    ``tf.function`` dispatch (binding, type lookup, scopes) costs ~0.5-1 ms a call, as much as a small model's
    whole product. Tracing and its scopes are unchanged: a new key goes through the ``tf.function``."""
    def key(a):
        if isinstance(a, _EAGER):
            return a.dtype, a._shape_tuple()
        if isinstance(a, list | tuple):
            return type(a), tuple(key(b) for b in a)
        raise _Polymorphic

    try:
        return key(args)
    except _Polymorphic:
        return None


_EAGER = type(tf.constant(0.0))


def _warn_if_logits_look_like_probabilities(model, loss: Loss) -> None:
    """Cross-entropy without from_logits on a model whose last layer has no squashing activation is almost
    always a mistake: the loss then treats logits as probabilities and its derivatives are meaningless."""
    if not loss.is_classification or loss.from_logits:
        return
    layers = getattr(model, "layers", None) or []
    if not layers:
        return
    last = layers[-1]
    act = getattr(last, "activation", None)
    name = getattr(act, "__name__", "") if act is not None else ""
    if isinstance(last, keras.layers.Softmax | keras.layers.Activation):
        return
    if act is not None and name in ("linear", ""):
        warnings.warn(f"loss {loss.name!r} expects probabilities, but the last layer {last.name!r} has a linear "
                      "activation (logits?); pass from_logits=True (--from-logits) if the model outputs logits",
                      stacklevel=4)


def make_objective(model, loss=None, wrt=None, **kwargs) -> Objective:
    """Build an :class:`Objective` (accepts an existing one unchanged)."""
    if isinstance(model, Objective):
        return model
    return Objective(model, loss, wrt, **kwargs)
