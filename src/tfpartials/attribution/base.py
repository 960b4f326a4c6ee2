"""The attribution verb and what every method shares: input checks, target resolution, compiled gradients.

An attribution method explains one scalar per example, ``f_i(x) = target(model(x_i, training=False))``, by a
map with the shape of ``x_i``. ``target`` chooses the scalar:

- ``None``: the predicted class (arg-max of the output) for classifiers (output size > 1), the single output
  for regressors;
- an int: that index of the (flattened) per-example output, for every example;
- a sequence or array of ints, one per example;
- an output name (multi-output models), optionally with an index: ``"score"`` or ``("score", 2)``;
- a callable of the model output (a tensor, or the model's list/dict of outputs) returning shape ``(B,)``.

Every method is a subclass of :class:`AttributionMethod` with one public verb, ``attribute(x, target=None)``,
returning a numpy array with the shape of ``x``. Gradients are evaluated in compiled ``tf.function`` s traced
once per input shape (the batch dimension is left free), in example chunks planned by
:func:`~tfpartials._memory.plan_chunks`. The model always runs with ``training=False`` and is never modified.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._backend import keras, tf
from .._checks import InputError, check_positive_int
from .._memory import plan_chunks, resolve_budget
from .._tracing import traced
from ..io.signature import Signature, signature

__all__ = ["AttributionMethod", "Target", "TargetSpec", "attribute", "make_method", "METHODS"]

TargetSpec = int | str | Sequence[int] | np.ndarray | tuple[str, Any] | Callable[[Any], Any] | None

#: method names accepted by :func:`attribute` and the command line
METHODS = ("saliency", "gradient-x-input", "integrated-gradients", "smoothgrad")

_MAX_CHUNK = 4096  # examples (or interpolation points) per compiled call: larger batches gain nothing on CPU


@dataclass(frozen=True)
class Target:
    """A resolved target: which output, and either one flat index per example or a callable.

    Attributes:
        output: index of the chosen model output (0 for single-output models).
        index: ``(B,)`` int32 flat indices into the chosen per-example output, or None with ``fn``.
        fn: the user's callable of the model output, or None.
    """

    output: int
    index: np.ndarray | None
    fn: Callable[[Any], Any] | None = None

    def take(self, rows: np.ndarray) -> Target:
        """The same target for a subset of examples."""
        return Target(self.output, None if self.index is None else self.index[rows], self.fn)


class AttributionMethod(ABC):
    """Base class: one verb, ``attribute(x, target=None) -> array with the shape of x``.

    Args:
        model: a built single-input Keras model with a floating-point input (not modified).
        max_memory: working-memory budget for the chunk planner (``"512MiB"``, bytes, or None for half of
            the available memory).
    """

    name = "attribution"

    def __init__(self, model, *, max_memory: str | int | None = None):
        if not isinstance(model, keras.Model):
            raise TypeError(f"model: expected a Keras model, got {type(model).__name__}")
        self.model = model
        self.signature: Signature = signature(model)
        if not self.signature.single_input:
            raise InputError(f"attribution supports models with one input; this model takes "
                             f"{len(self.signature.input_names)} ({', '.join(self.signature.input_names)})")
        in_dtype = _model_input_dtype(model)
        if in_dtype is not None and not tf.as_dtype(in_dtype).is_floating:
            raise InputError(f"the model input has dtype {in_dtype}: integer inputs (such as token ids) have no "
                             "gradient; attribute a model that starts at the embedding output instead")
        self.dtype = tf.as_dtype(in_dtype if in_dtype is not None else model.compute_dtype)
        self.budget = resolve_budget(max_memory)
        self.trace_counts: dict[str, int] = {}
        self._functions: dict[Any, Any] = {}
        self._pending: Exception | None = None

    # -- the verb ---------------------------------------------------------------------------------------------
    def attribute(self, x, target: TargetSpec = None) -> np.ndarray:
        """Attributions of ``target`` to every input element, with the shape of ``x``.

        Args:
            x: a batch of inputs ``(B, ...)`` (numpy array or tensor) of floating dtype.
            target: which scalar per example to explain (see the module docstring); default the predicted
                class for classifiers, the single output for regressors.
        """
        xs = self.check_inputs(x)
        tgt = self.resolve_target(xs, target)
        return self._attribute(xs, tgt, self._prepare(xs))

    def targets(self, x, target: TargetSpec = None) -> np.ndarray | None:
        """The flat output index explained for each example (``(B,)`` ints), or None for a callable target."""
        xs = self.check_inputs(x)
        return self.resolve_target(xs, target).index

    # -- what subclasses implement ----------------------------------------------------------------------------
    def _prepare(self, x: np.ndarray) -> Any:
        """Per-call state computed from the clean inputs (IG: the baseline); SmoothGrad reuses it on noisy x."""
        return None

    def _tile_state(self, state: Any, copies: int) -> Any:
        """The state for ``copies`` stacked copies of the batch (SmoothGrad stacks noisy copies)."""
        return state

    @abstractmethod
    def _attribute(self, x: np.ndarray, target: Target, state: Any) -> np.ndarray:
        """Attributions for validated inputs and a resolved target."""

    # -- inputs -----------------------------------------------------------------------------------------------
    def check_inputs(self, x) -> np.ndarray:
        """``x`` as a numpy array of the model's dtype, checked against the model's input shape."""
        if isinstance(x, dict):
            raise InputError("attribution expects one input array (B, ...), got a dict of inputs")
        a = x.numpy() if hasattr(x, "numpy") else np.asarray(x)
        if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise InputError(f"inputs: expected numeric data, got dtype {a.dtype}")
        if not np.issubdtype(a.dtype, np.floating):
            raise InputError(f"inputs: expected floating-point inputs, got dtype {a.dtype}; integer inputs have "
                             "no gradient (cast pixel values to float, or attribute from an embedding output)")
        want = self.signature.input_shapes[0]
        got = tuple(a.shape[1:])
        if a.ndim == 0 or len(got) != len(want) or any(w is not None and w != g for w, g in zip(want, got)):
            shown = "(B, " + ", ".join("?" if w is None else str(w) for w in want) + ")"
            raise InputError(f"inputs: expected shape {shown}, got {tuple(a.shape)}")
        if a.shape[0] == 0:
            raise InputError("inputs: the batch is empty (0 examples)")
        if not np.all(np.isfinite(a)):
            raise InputError("inputs: NaN or Inf values; attributions of non-finite inputs are undefined")
        return np.ascontiguousarray(a, dtype=self.dtype.as_numpy_dtype)

    # -- targets ----------------------------------------------------------------------------------------------
    def resolve_target(self, x: np.ndarray, target: TargetSpec) -> Target:
        """Turn a user target into a :class:`Target` for the batch ``x`` (predictions computed if needed)."""
        sig = self.signature
        n = len(x)
        if callable(target) and not isinstance(target, str | np.ndarray):
            return Target(0, None, target)
        output_name, index = None, target
        if isinstance(target, str):
            output_name, index = target, None
        elif isinstance(target, tuple) and len(target) == 2 and isinstance(target[0], str):
            output_name, index = target
        if output_name is not None:
            if output_name not in sig.output_names:
                raise InputError(f"target: unknown output {output_name!r}; the model outputs "
                                 f"{', '.join(sig.output_names)}")
            out = sig.output_names.index(output_name)
        elif sig.single_output:
            out = 0
        else:
            raise InputError(f"target: the model has {len(sig.output_names)} outputs "
                             f"({', '.join(sig.output_names)}); pass an output name, (name, index) or a callable")
        size = self._output_size(out)
        if index is None:
            if size == 1:
                return Target(out, np.zeros(n, np.int32))
            flat = self._forward_flat(x, out)
            return Target(out, np.argmax(flat, axis=1).astype(np.int32))
        idx = _as_index_array(index, n)
        bad = (idx < 0) | (idx >= size)
        if np.any(bad):
            first = int(idx[np.argmax(bad)])
            raise InputError(f"target: index {first} is outside the output of size {size} "
                             f"(valid 0..{size - 1})")
        return Target(out, idx.astype(np.int32))

    def _output_size(self, out: int) -> int:
        shape = self.signature.output_shapes[out]
        if any(s is None for s in shape):
            raise InputError(f"target: output {self.signature.output_names[out]!r} has an unknown size "
                             f"{shape}; pass explicit indices or a callable target")
        return int(np.prod(shape, dtype=np.int64)) if shape else 1

    # -- compiled pieces --------------------------------------------------------------------------------------
    def _select(self, outputs, target_fn, out: int, index):
        """The explained scalar per example, ``(B,)``, from the model outputs (runs inside tf.function)."""
        if target_fn is not None:
            value = target_fn(outputs)
            if not tf.is_tensor(value):
                value = tf.convert_to_tensor(value)
            if value.shape.rank == 2 and value.shape[1] == 1:
                value = value[:, 0]
            if value.shape.rank != 1:
                raise self._remember(InputError(f"target: the callable must return one value per example, "
                                                f"shape (B,), got shape {tuple(value.shape)}"))
            return tf.cast(value, self.dtype)
        o = _pick_output(outputs, out, self.signature.output_names)
        flat = tf.reshape(o, [tf.shape(o)[0], -1])
        return tf.cast(tf.gather(flat, index, axis=1, batch_dims=1), self.dtype)

    def _remember(self, exc: Exception) -> Exception:
        self._pending = exc
        return exc

    def _compiled(self, key: tuple, builder: Callable[[], Callable], signature_: Sequence[Any]):
        """A ``tf.function`` for ``key`` with a fixed input signature (batch dimensions free): one trace."""
        fn = self._functions.get(key)
        if fn is None:
            py = builder()
            name = key[0]

            def counted(*args):
                self.trace_counts[name] = self.trace_counts.get(name, 0) + 1
                return py(*args)

            compiled = traced(counted, input_signature=list(signature_), autograph=False)

            def fn(*args, _compiled=compiled):
                self._pending = None
                try:
                    return _compiled(*args)
                except Exception:
                    pending, self._pending = self._pending, None
                    if pending is not None:
                        raise pending from None
                    raise

            self._functions[key] = fn
        return fn

    def _x_spec(self) -> tf.TensorSpec:
        return tf.TensorSpec((None, *self.signature.input_shapes[0]), self.dtype)

    def _gradient_fn(self, target: Target):
        """Compiled ``(x, index) -> (d f_i / d x_i, f_i)`` for a batch."""
        key = ("gradient", target.output, target.fn)

        def build():
            def grad(x, index):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    f = self._select(self.model(x, training=False), target.fn, target.output, index)
                    total = tf.reduce_sum(f)
                return tape.gradient(total, x), f
            return grad

        return self._compiled(key, build, [self._x_spec(), tf.TensorSpec((None,), tf.int32)])

    def _value_fn(self, target: Target):
        """Compiled ``(x, index) -> f_i`` for a batch (no gradient)."""
        key = ("value", target.output, target.fn)

        def build():
            def value(x, index):
                return self._select(self.model(x, training=False), target.fn, target.output, index)
            return value

        return self._compiled(key, build, [self._x_spec(), tf.TensorSpec((None,), tf.int32)])

    def _forward_flat(self, x: np.ndarray, out: int) -> np.ndarray:
        key = ("forward", out)

        def build():
            def forward(xb):
                o = _pick_output(self.model(xb, training=False), out, self.signature.output_names)
                return tf.reshape(o, [tf.shape(o)[0], -1])
            return forward

        fn = self._compiled(key, build, [self._x_spec()])
        return np.concatenate([fn(x[a:b]).numpy() for a, b in self._example_chunks(len(x), 1)])

    # -- chunked evaluation -----------------------------------------------------------------------------------
    def example_bytes(self) -> int:
        """Estimated working memory of one example through forward and backward passes, in bytes."""
        itemsize = self.dtype.size
        in_size = int(np.prod(self.signature.input_shapes[0], dtype=np.int64))
        acts = 0
        for layer in self.model.layers:
            try:
                shapes = [t.shape for t in tf.nest.flatten(layer.output)]
            except (AttributeError, ValueError):
                continue
            for s in shapes:
                dims = [d for d in tuple(s)[1:] if d is not None]
                acts += int(np.prod(dims, dtype=np.int64)) if dims else 1
        acts = max(acts, 16 * in_size)
        return int(4 * acts * itemsize + 4 * in_size * itemsize)

    def _example_chunks(self, total: int, per_item_factor: int, internal_batch_size: int | None = None):
        if internal_batch_size is not None:
            chunk = check_positive_int("internal_batch_size", internal_batch_size)
            return [(a, min(a + chunk, total)) for a in range(0, total, chunk)]
        plan = plan_chunks(total, self.example_bytes() * per_item_factor, budget=self.budget,
                           what=f"{self.name} ({total} examples)", max_chunk=_MAX_CHUNK)
        return list(plan.ranges())

    def gradients(self, x: np.ndarray, target: Target) -> tuple[np.ndarray, np.ndarray]:
        """``(∂f_i/∂x_i, f_i)`` for validated inputs, evaluated in planned chunks."""
        fn = self._gradient_fn(target)
        grads, values = [], []
        for a, b in self._example_chunks(len(x), 1):
            t = target.take(np.arange(a, b))
            g, f = fn(tf.constant(x[a:b]), tf.constant(_index_or_dummy(t, b - a)))
            grads.append(g.numpy())
            values.append(f.numpy())
        return np.concatenate(grads), np.concatenate(values)

    def values(self, x: np.ndarray, target: Target) -> np.ndarray:
        """``f_i(x_i)`` for validated inputs (chunked)."""
        fn = self._value_fn(target)
        out = []
        for a, b in self._example_chunks(len(x), 1):
            t = target.take(np.arange(a, b))
            out.append(fn(tf.constant(x[a:b]), tf.constant(_index_or_dummy(t, b - a))).numpy())
        return np.concatenate(out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model.name})"


# ------------------------------------------------------------------------------------------------ helpers
def _model_input_dtype(model):
    inputs = getattr(model, "inputs", None)
    if inputs:
        try:
            return keras.backend.standardize_dtype(inputs[0].dtype)
        except (AttributeError, ValueError, TypeError):
            return None
    return None


def _pick_output(outputs, out: int, names: Sequence[str]):
    if isinstance(outputs, dict):
        return outputs[names[out]]
    if isinstance(outputs, list | tuple):
        return outputs[out]
    return outputs


def _as_index_array(index, n: int) -> np.ndarray:
    if isinstance(index, bool | float):
        raise InputError(f"target: expected a class index, indices, an output name or a callable, got {index!r}")
    if isinstance(index, int | np.integer):
        return np.full(n, int(index), np.int64)
    try:
        arr = np.asarray(index)
    except (TypeError, ValueError):
        raise InputError(f"target: expected a class index, indices, an output name or a callable, "
                         f"got {type(index).__name__}") from None
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"target: expected integer indices, got dtype {arr.dtype}")
    if arr.ndim == 0:
        return np.full(n, int(arr), np.int64)
    if arr.shape != (n,):
        raise InputError(f"target: expected one index per example, shape ({n},), got shape {arr.shape}")
    return arr.astype(np.int64)


def _index_or_dummy(target: Target, n: int) -> np.ndarray:
    return target.index if target.index is not None else np.zeros(n, np.int32)


# ------------------------------------------------------------------------------------------------ the verb
def make_method(method: str, model, **options) -> AttributionMethod:
    """Build an attribution method by name (``"saliency"``, ``"gradient-x-input"``,
    ``"integrated-gradients"``, ``"smoothgrad"``); SmoothGrad takes ``inner=`` a method name (default saliency)
    and passes options it does not know to the inner method."""
    from .gradient_x_input import GradientXInput
    from .integrated_gradients import IntegratedGradients
    from .saliency import Saliency
    from .smoothgrad import SmoothGrad

    key = str(method).lower().replace("_", "-")
    aliases = {"ig": "integrated-gradients", "gxi": "gradient-x-input", "gradient-times-input": "gradient-x-input",
               "input-x-gradient": "gradient-x-input"}
    key = aliases.get(key, key)
    if key not in METHODS:
        raise InputError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    if key == "smoothgrad":
        sg_keys = ("num_samples", "noise_std", "seed")
        sg = {k: options.pop(k) for k in sg_keys if k in options}
        inner = options.pop("inner", "saliency")
        if str(inner).lower().replace("_", "-") == "smoothgrad":
            raise InputError("smoothgrad: the inner method cannot itself be smoothgrad")
        return SmoothGrad(make_method(inner, model, **options), **sg)
    cls = {"saliency": Saliency, "gradient-x-input": GradientXInput,
           "integrated-gradients": IntegratedGradients}[key]
    return cls(model, **options)


def attribute(model, x, method: str = "integrated-gradients", target: TargetSpec = None, **options) -> np.ndarray:
    """Attributions of ``model`` at ``x`` by a method named like the command line's ``--method``.

    ``attribute(model, x, "integrated-gradients", target=3, steps=64)`` equals
    ``IntegratedGradients(model, steps=64).attribute(x, target=3)``.

    Args:
        model: a single-input Keras model.
        x: a batch of inputs ``(B, ...)``.
        method: one of :data:`METHODS`.
        target: see :class:`AttributionMethod`.
        **options: constructor options of the method (``steps``, ``baseline``, ``num_samples``, ...).
    """
    return make_method(method, model, **options).attribute(x, target)
