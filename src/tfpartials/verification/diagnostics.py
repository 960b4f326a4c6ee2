"""What breaks derivatives: cut gradients, NaN/Inf, and layers that behave differently in training mode.

* **Cut gradients.** A variable whose gradient is ``None`` is either unused or cut off by an op without a
  gradient (``Round``, ``ArgMax``, ``Floor``, ``StopGradient``, a ``Cast`` to an integer, ...). We trace the
  loss once as a graph, keep the ops that lie on a path from the variable to the loss, ask the graph for the
  gradient of the loss with respect to each of their outputs, and report the first op (in graph order) where
  the gradient stops: one of its floating inputs on the path has no gradient while one of its outputs on the
  path has a gradient or is not floating. Control-flow and function-call ops (``While``, ``PartitionedCall``)
  are treated as single ops, so a cut inside them is reported as that op (best effort).
* **NaN/Inf.** The derivative is recomputed eagerly under ``tf.debugging.enable_check_numerics()`` (switched off
  again afterwards), which stops at the first op, forward or backward, whose output holds a NaN or an Inf.
* **Training-dependent layers.** Each layer is run on its actual inputs with ``training=True`` and
  ``training=False`` through ``stateless_call`` (moving statistics and random seeds are not updated, so the
  user's model is unchanged and the comparison is deterministic) and named when the outputs differ.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from .._backend import keras, tf
from .._tracing import traced
from ..autodiff.objective import Objective
from ..autodiff.risk import as_tensors
from ..io.data import Data

__all__ = ["GradientCut", "NonFinite", "TrainingDependence", "Diagnostics", "gradient_cuts", "first_nonfinite",
           "nonfinite_gradient", "training_dependent_layers", "diagnose"]

_REASONS = {
    "BatchNormalization": "normalises with the batch statistics in training mode (moving averages otherwise)",
    "Dropout": "drops units at random in training mode",
    "GaussianNoise": "adds random noise in training mode",
    "GaussianDropout": "multiplies by random noise in training mode",
    "AlphaDropout": "drops units at random in training mode",
    "SpatialDropout1D": "drops channels at random in training mode",
    "SpatialDropout2D": "drops channels at random in training mode",
    "SpatialDropout3D": "drops channels at random in training mode",
}


@dataclass(frozen=True)
class GradientCut:
    """A variable whose gradient is ``None``, and why.

    Attributes:
        variable: parameter name (``<layer>/<variable>``).
        op_type: type of the op that cut the gradient (``"Round"``, ``"ArgMax"``, ``"Cast"``, ...) or ``None``
            when the variable is not used at all.
        op_name: the op's name in the traced graph (its prefix is usually the layer's name).
        message: one sentence for people.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> class Rounded(keras.layers.Layer):       # round() has no gradient
        ...     def call(self, x):
        ...         return keras.ops.round(4.0 * x)
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, name="d1"), Rounded(name="rnd"),
        ...                           keras.layers.Dense(1, name="out")])
        >>> x = np.ones((4, 2), "float32"); y = np.zeros((4, 1), "float32")
        >>> report = tp.check(model, (x, y), loss="mse", what="gradients")
        >>> report.passed, [(c.variable, c.op_type) for c in report.diagnostics.gradient_cuts]
        (False, [('d1/kernel', 'Round'), ('d1/bias', 'Round')])
    """

    variable: str
    op_type: str | None
    op_name: str | None
    message: str


@dataclass(frozen=True)
class NonFinite:
    """The first op that produced a NaN or an Inf while computing ``quantity``.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> class Root(keras.layers.Layer):          # d sqrt(z)/dz = 1 / (2 sqrt(z)) is infinite at z = 0
        ...     def call(self, x):
        ...         return keras.ops.sqrt(x)
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, kernel_initializer="zeros"),
        ...                           Root()])
        >>> x = np.ones((4, 2), "float32"); y = np.ones((4, 1), "float32")
        >>> found = tp.check(model, (x, y), loss="mse", what="gradients").diagnostics.non_finite
        >>> [(f.quantity, f.op_type) for f in found]
        [('loss gradient', 'SqrtGrad')]
    """

    quantity: str
    op_type: str | None
    op_name: str | None
    message: str


@dataclass(frozen=True)
class TrainingDependence:
    """A layer whose output differs between ``training=True`` and ``training=False``.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dropout(0.5, name="drop"),
        ...                           keras.layers.Dense(1)])
        >>> x = np.ones((4, 2), "float32"); y = np.zeros((4, 1), "float32")
        >>> found = tp.check(model, (x, y), loss="mse", what="gradients").diagnostics.training_dependent
        >>> [(f.layer, f.class_name, f.reason) for f in found]
        [('drop', 'Dropout', 'drops units at random in training mode')]
    """

    layer: str
    class_name: str
    max_abs_difference: float
    reason: str


@dataclass(frozen=True)
class Diagnostics:
    """Everything found that breaks or qualifies derivatives (empty tuples when nothing was found).

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> x = np.ones((4, 2), "float32"); y = np.zeros((4, 1), "float32")
        >>> d = tp.check(model, (x, y), loss="mse", what="gradients").diagnostics
        >>> d.empty, d.gradient_cuts, d.non_finite, d.training_dependent
        (True, (), (), ())
    """

    gradient_cuts: tuple[GradientCut, ...] = ()
    non_finite: tuple[NonFinite, ...] = ()
    training_dependent: tuple[TrainingDependence, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not (self.gradient_cuts or self.non_finite or self.training_dependent)

    def merge(self, other: Diagnostics) -> Diagnostics:
        def unique(a, b):
            return tuple(dict.fromkeys((*a, *b)))
        return Diagnostics(unique(self.gradient_cuts, other.gradient_cuts),
                           unique(self.non_finite, other.non_finite),
                           unique(self.training_dependent, other.training_dependent),
                           unique(self.notes, other.notes))


# ------------------------------------------------------------------------------------------------ cut gradients
def _first_batch(obj: Objective, data: Data):
    batch = next(iter(data.batches()))
    scale, regw = obj.weights(data.num_examples, batch.count)
    return (as_tensors(batch.x, obj.dtype), as_tensors(batch.y, obj.dtype), tf.constant(batch.mask, obj.dtype),
            scale, regw)


def _floating(t) -> bool:
    return t.dtype.is_floating or t.dtype.is_complex


def _describe_op(op) -> str:
    if op.type == "Cast":
        try:
            return f"Cast to {tf.as_dtype(op.get_attr('DstT')).name}"
        except (ValueError, TypeError):
            return "Cast"
    return op.type


def _analyse_cuts(value, params: list, none_idx: list[int]) -> dict[int, tuple]:
    """For each None-gradient parameter index: (op type, op name, description) of the first cut, or None."""
    graph = value.graph
    backward: set = set()
    stack = [value.op]
    while stack:  # ops from which the loss is reachable
        op = stack.pop()
        if op in backward:
            continue
        backward.add(op)
        stack.extend(t.op for t in op.inputs)
    order = {op: i for i, op in enumerate(graph.get_operations())}
    found: dict[int, tuple] = {}
    for i in none_idx:
        on_path_tensors = {params[i].ref()}
        forward_ops: set = set()
        stack = [params[i]]
        while stack:
            t = stack.pop()
            for op in t.consumers():
                if op in forward_ops or op not in backward:
                    continue
                forward_ops.add(op)
                for out in op.outputs:
                    on_path_tensors.add(out.ref())
                    stack.append(out)
        if not forward_ops:
            found[i] = (None, None, None)
            continue
        ops = sorted(forward_ops, key=lambda o: order.get(o, 0))
        cands = [params[i]] + [out for op in ops for out in op.outputs
                               if _floating(out) and any(c in backward for c in out.consumers())
                               or out is value]
        cands = list({c.ref(): c for c in cands}.values())
        with graph.as_default():
            grads = tf.gradients(value, cands)
        has_grad = {c.ref(): g is not None for c, g in zip(cands, grads)}
        cut = None
        for op in ops:
            path_inputs = [t for t in op.inputs if t.ref() in on_path_tensors and _floating(t)]
            if not path_inputs or any(has_grad.get(t.ref(), False) for t in path_inputs):
                continue
            outs = [t for t in op.outputs if t.ref() in on_path_tensors]
            if any(has_grad.get(t.ref(), False) or not _floating(t) for t in outs):
                cut = op
                break
        found[i] = (cut.type, cut.name, _describe_op(cut)) if cut is not None else (None, None, "an op")
    return found


def gradient_cuts(obj: Objective, data: Data) -> tuple[GradientCut, ...]:
    """Variables of ``obj`` whose loss gradient is ``None``, each with the op that cut it (see module doc).

    Cost: one trace of the loss and its gradient on the first batch (nothing is executed).
    """
    args = _first_batch(obj, data)
    result: list[GradientCut] = []
    names = obj.space.names

    def analyse(params, x, y, mask, scale, regw):
        value = obj.batch_value(params, x, y, mask, scale, regw)
        grads = tf.gradients(value, params)
        none_idx = [i for i, g in enumerate(grads) if g is None]
        if none_idx:
            for i, (op_type, op_name, what) in _analyse_cuts(value, list(params), none_idx).items():
                result.append(_cut_message(names[i], op_type, op_name, what))
        return value

    traced(analyse, autograph=False).get_concrete_function(obj.space.values(), *args)
    return tuple(result)


def _cut_message(name: str, op_type, op_name, what) -> GradientCut:
    if op_type is None and what is None:
        msg = f"{name}: gradient is None: the variable is not used in computing the loss"
    elif op_type is None:
        msg = f"{name}: gradient is None: cut inside the graph (no single op found)"
    else:
        msg = f"{name}: gradient is None: cut by op {what!s} ({op_name}), which has no gradient"
    return GradientCut(name, op_type, op_name, msg)


# -------------------------------------------------------------------------------------------------- NaN / Inf
_OP_RE = re.compile(r'Detected Infinity or NaN in output \d+ of (?:eagerly-executing|graph) op "([^"]+)"')
_NAME_RE = re.compile(r'op name:?\s*"?([\w/.:-]+)', re.IGNORECASE)


def first_nonfinite(quantity: str, runs: Iterable[Callable[[], object]]) -> NonFinite | None:
    """Run each thunk eagerly with TF's numeric checks on; the first op that outputs NaN/Inf, or None.

    ``tf.debugging.enable_check_numerics()`` is always switched off again, even on errors.
    """
    tf.debugging.enable_check_numerics()
    try:
        for run in runs:
            try:
                run()
            except tf.errors.InvalidArgumentError as exc:
                text = str(exc)
                m = _OP_RE.search(text)
                if m is None:
                    raise
                name = _NAME_RE.search(text)
                kinds = [k for k, key in (("NaN", "NaN elements"), ("Inf", "Inf elements")) if key in text]
                kind = "/".join(kinds) or "NaN/Inf"
                return NonFinite(quantity, m.group(1), name.group(1) if name else None,
                                 f"{quantity}: the first {kind} value comes from op {m.group(1)}")
    finally:
        tf.debugging.disable_check_numerics()
    return None


def nonfinite_gradient(obj: Objective, data: Data) -> NonFinite | None:
    """Locate the first op producing NaN/Inf in the loss or its gradient (eager, batch by batch)."""
    params = obj.space.values()

    def runs():
        for batch in data.batches():
            scale, regw = obj.weights(data.num_examples, batch.count)
            x, y = as_tensors(batch.x, obj.dtype), as_tensors(batch.y, obj.dtype)
            mask = tf.constant(batch.mask, obj.dtype)

            def run(x=x, y=y, mask=mask, scale=scale, regw=regw):
                with tf.GradientTape() as tape:
                    tape.watch(params)
                    value = obj.batch_value(params, x, y, mask, scale, regw)
                return tape.gradient(value, params)
            yield run

    return first_nonfinite("loss gradient", runs())


# -------------------------------------------------------------------------------------- training-dependent layers
def _leaf_layers(model) -> list:
    return [layer for layer in model._flatten_layers(include_self=False)
            if not list(layer._flatten_layers(include_self=False))
            and not isinstance(layer, keras.layers.InputLayer) and getattr(layer, "_call_has_training_arg", True)]


def _layer_inputs(owner, owner_x, leaves: set, out: dict) -> None:
    """Actual inputs (inference mode) of each leaf layer of a functional/Sequential model, nested models too."""
    members, wanted, spans = [], [], []
    for layer in getattr(owner, "layers", []):
        try:
            flat = tf.nest.flatten(layer.input)
        except (AttributeError, ValueError, RuntimeError):
            continue
        members.append(layer)
        spans.append((len(wanted), len(wanted) + len(flat)))
        wanted.extend(flat)
    if not wanted or not getattr(owner, "inputs", None):
        return
    inputs = owner.inputs[0] if len(owner.inputs) == 1 else owner.inputs
    probe = keras.Model(inputs, wanted)
    values = tf.nest.flatten(probe(owner_x, training=False))
    for layer, (a, b) in zip(members, spans):
        value = tf.nest.pack_sequence_as(layer.input, values[a:b])
        if id(layer) in leaves:
            out[id(layer)] = value
        elif isinstance(layer, keras.Model):
            try:
                _layer_inputs(layer, value, leaves, out)
            except Exception:  # noqa: BLE001 - best effort for exotic nested models
                continue


def _run_stateless(layer, inputs, training: bool):
    outputs, _ = layer.stateless_call([tf.convert_to_tensor(v.value) for v in layer.trainable_variables],
                                      [tf.convert_to_tensor(v.value) for v in layer.non_trainable_variables],
                                      inputs, training=training)
    return [np.asarray(t, np.float64) for t in tf.nest.flatten(outputs)]


def training_dependent_layers(model, x) -> tuple[TrainingDependence, ...]:
    """Layers of ``model`` whose output on ``x`` changes with ``training=True`` (see module docstring).

    Cost: one inference pass to collect layer inputs, then two calls of each leaf layer. For models that are
    not functional (subclassed), the whole model is compared and, if it differs, the layers of the known
    training-dependent kinds are named.
    """
    leaves = _leaf_layers(model)
    found: list[TrainingDependence] = []
    inputs: dict = {}
    try:
        _layer_inputs(model, x, {id(layer) for layer in leaves}, inputs)
    except Exception:  # noqa: BLE001 - not a functional model: compared as a whole below
        inputs = {}
    for layer in leaves:
        if id(layer) not in inputs or not layer.built:
            continue
        a = _run_stateless(layer, inputs[id(layer)], True)
        b = _run_stateless(layer, inputs[id(layer)], False)
        diff = max((float(np.max(np.abs(p - q))) if p.size else 0.0) for p, q in zip(a, b)) if a else 0.0
        scale = max((float(np.max(np.abs(q))) if q.size else 0.0) for q in b) if b else 0.0
        if diff > 1e-6 * max(1.0, scale):
            cls = type(layer).__name__
            found.append(TrainingDependence(layer.name, cls, diff,
                                            _REASONS.get(cls, "computes something else in training mode")))
    if not inputs:
        a = _run_stateless(model, x, True)
        b = _run_stateless(model, x, False)
        diff = max(float(np.max(np.abs(p - q))) for p, q in zip(a, b))
        if diff > 1e-6:
            for layer in leaves:
                cls = type(layer).__name__
                if cls in _REASONS:
                    found.append(TrainingDependence(layer.name, cls, diff, _REASONS[cls]))
    return tuple(found)


def diagnose(obj: Objective, data: Data, *, examples: int = 32) -> Diagnostics:
    """All three diagnostics for an objective and its data (``examples`` for the training-mode comparison)."""
    cuts = gradient_cuts(obj, data)
    x, _ = data.first(examples)
    x = as_tensors(x, obj.dtype)
    dependent = training_dependent_layers(obj.model, x)
    return Diagnostics(gradient_cuts=cuts, training_dependent=dependent)
