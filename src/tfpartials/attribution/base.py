"""What every attribution method shares: input checks, target resolution, the attributed function, chunking.

An attribution method explains one scalar per example, ``f_i(x) = target(model(x_i, training=False))``, by a
map with the shape of ``x_i``. ``target`` chooses the scalar:

- ``None``: the predicted class (arg-max of the output) for classifiers (output size > 1), the single output
  for regressors;
- an int: that index of the (flattened) per-example output, for every example;
- a sequence or array of ints, one per example;
- an output name (multi-output models), optionally with an index: ``"score"`` or ``("score", 2)``;
- a callable of the model output (a tensor, or the model's list/dict of outputs) returning shape ``(B,)``.

Every method is a subclass of :class:`AttributionMethod` with one public verb, ``attribute(x, target=None)``.
The differentiated function is the model as a function of its input, :class:`tfpartials.inputs._model_fn.
InputFunction` (which selects the output and refuses integer inputs); with ``layer="name"`` it is the part of
the model after that layer, as a function of the layer's output (:mod:`.layer`), and attributions are taken
with respect to the layer's activations, then summed over the feature (last) axis: one score per token for an
embedding. Gradients are evaluated by compiled functions kept in the one cache (:mod:`tfpartials._cache`) and
traced once per input shape (the batch dimension is left free), in example chunks planned by
:func:`~tfpartials._memory.plan_chunks`. The model always runs with ``training=False`` and is never modified.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _cache
from .._backend import keras, tf
from .._checks import InputError, check_positive_int
from .._memory import plan_chunks, resolve_budget
from .._tracing import traced
from ..inputs._model_fn import InputFunction, Prepared, get_function
from ..io.signature import Signature, signature
from .layer import LayerSplit, split_at

__all__ = ["AttributionMethod", "Target", "TargetSpec", "Job"]

TargetSpec = int | str | Sequence[int] | np.ndarray | tuple[str, Any] | Callable[[Any], Any] | None

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

    def tile(self, copies: int) -> Target:
        """The same target for ``copies`` stacked copies of the batch."""
        return Target(self.output, None if self.index is None else np.tile(self.index, copies), self.fn)


@dataclass(frozen=True)
class Job:
    """One call prepared: the attributed array ``z`` (the inputs, or the layer's activations), the resolved
    target, and the method's per-call state (integrated gradients: the baseline in the same space)."""

    z: np.ndarray
    target: Target
    state: Any


class AttributionMethod(ABC):
    """Base class: one verb, ``attribute(x, target=None)`` -> array with the shape of ``x`` (of the layer's
    output without its feature axis with ``layer=``).

    Args:
        model: a built single-input Keras model (not modified).
        layer: name of a layer to attribute at (its output's activations instead of the inputs); needed for
            integer inputs such as token ids (``layer="embedding"``).
        max_memory: working-memory budget for the chunk planner (``"512MiB"``, bytes, or None for half of
            the available memory).

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False,
        ...                                                                 kernel_initializer="ones")])
        >>> x = np.array([[1.0, 2.0, 3.0]], "float32")                   # f(x) = x0 + x1 + x2
        >>> for m in (tp.Saliency(model), tp.GradientXInput(model), tp.IntegratedGradients(model, steps=8)):
        ...     print(type(m).__name__, isinstance(m, tp.AttributionMethod), m.attribute(x).tolist())
        Saliency True [[1.0, 1.0, 1.0]]
        GradientXInput True [[1.0, 2.0, 3.0]]
        IntegratedGradients True [[1.0, 2.0, 3.0]]
    """

    name = "attribution"

    def __init__(self, model, *, layer: str | None = None, max_memory: str | int | None = None):
        if not isinstance(model, keras.Model):
            raise TypeError(f"model: expected a Keras model, got {type(model).__name__}")
        self.model = model
        self.signature: Signature = signature(model)
        if not self.signature.single_input:
            raise InputError(f"attribution supports models with one input; this model takes "
                             f"{len(self.signature.input_names)} ({', '.join(self.signature.input_names)})")
        self.layer = layer
        self.split: LayerSplit | None = None if layer is None else split_at(model, layer)
        space = model if self.split is None else self.split.tail
        try:
            self.function: InputFunction = get_function(space, output=0)
        except InputError as exc:
            hint = _embedding_name(model)
            if hint is None:
                raise
            raise InputError(f"{exc}; to attribute token ids, attribute at the embedding: layer={hint!r}") from None
        self.dtype = self.function.dtype
        self.budget = resolve_budget(max_memory)
        self.trace_counts: dict[str, int] = _cache.cached(space, ("attribution", "trace_counts"), dict)

    @property
    def space_shape(self) -> tuple[int | None, ...]:
        """Per-example shape of what is attributed: the input, or the layer's output with ``layer=``."""
        return self.split.shape if self.split is not None else tuple(self.signature.input_shapes[0])

    # -- the verb ---------------------------------------------------------------------------------------------
    def attribute(self, x, target: TargetSpec = None) -> np.ndarray:
        """Attributions of ``target`` to every input element, with the shape of ``x``.

        Args:
            x: a batch of inputs ``(B, ...)`` (numpy array or tensor), floating (integer ids with ``layer=``).
            target: which scalar per example to explain (see the module docstring); default the predicted
                class for classifiers, the single output for regressors.
        """
        job = self.begin(x, target)
        return self.finish(self._attribute(job.z, job.target, job.state))

    def targets(self, x, target: TargetSpec = None) -> np.ndarray | None:
        """The flat output index explained for each example (``(B,)`` ints), or None for a callable target."""
        return self.begin(x, target, state=False).target.index

    def begin(self, x, target: TargetSpec = None, state: bool = True) -> Job:
        """Validate ``x``, map it to the attributed space, resolve the target and prepare the method's state."""
        xs = self.check_inputs(x)
        z = self.embed(xs)
        return Job(z, self.resolve_target(z, target), self._prepare(xs, z) if state else None)

    def embed(self, xs: np.ndarray) -> np.ndarray:
        """The attributed array for validated inputs: the inputs, or the layer's activations."""
        if self.split is None:
            return xs
        z = self.split.activations(xs, self._example_chunks(len(xs), 1)[0][1])
        return np.ascontiguousarray(z, dtype=self.dtype.as_numpy_dtype)

    def finish(self, attributions: np.ndarray) -> np.ndarray:
        """Attributions in the attributed space -> what ``attribute`` returns: at a layer whose per-example
        output has positions and features (``(T, D)``, ``(H, W, C)``), the sum over the feature axis."""
        if self.split is None or len(self.space_shape) < 2:
            return attributions
        return attributions.sum(axis=-1, dtype=np.float64).astype(attributions.dtype)

    # -- what subclasses implement ----------------------------------------------------------------------------
    def _prepare(self, xs: np.ndarray, z: np.ndarray) -> Any:
        """Per-call state from the clean inputs (IG: the baseline); SmoothGrad reuses it on noisy ``z``."""
        return None

    def _tile_state(self, state: Any, copies: int) -> Any:
        """The state for ``copies`` stacked copies of the batch (SmoothGrad stacks noisy copies)."""
        return state

    @abstractmethod
    def _attribute(self, z: np.ndarray, target: Target, state: Any) -> np.ndarray:
        """Attributions in the attributed space for a validated array ``z`` and a resolved target."""

    # -- inputs -----------------------------------------------------------------------------------------------
    def check_inputs(self, x) -> np.ndarray:
        """``x`` as a numpy array of the model's input dtype, checked against the model's input shape."""
        if isinstance(x, dict):
            raise InputError("attribution expects one input array (B, ...), got a dict of inputs")
        a = x.numpy() if hasattr(x, "numpy") else np.asarray(x)
        if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise InputError(f"inputs: expected numeric data, got dtype {a.dtype}")
        if self.split is None and not np.issubdtype(a.dtype, np.floating):
            raise InputError(f"inputs: expected floating-point inputs, got dtype {a.dtype}; integer inputs have "
                             "no gradient (cast pixel values to float, or attribute at a layer with layer=)")
        want = self.signature.input_shapes[0]
        got = tuple(a.shape[1:])
        if a.ndim == 0 or len(got) != len(want) or any(w is not None and w != g for w, g in zip(want, got)):
            shown = "(B, " + ", ".join("?" if w is None else str(w) for w in want) + ")"
            raise InputError(f"inputs: expected shape {shown}, got {tuple(a.shape)}")
        if a.shape[0] == 0:
            raise InputError("inputs: the batch is empty (0 examples)")
        if not np.all(np.isfinite(a)):
            raise InputError("inputs: NaN or Inf values; attributions of non-finite inputs are undefined")
        return _as_input(a, self.input_dtype, "inputs")

    @property
    def input_dtype(self) -> tf.DType:
        """The dtype of the model's input (integer for token models attributed at a layer)."""
        return tf.as_dtype(self.split.head.inputs[0].dtype) if self.split is not None else self.dtype

    # -- targets ----------------------------------------------------------------------------------------------
    def resolve_target(self, z: np.ndarray, target: TargetSpec) -> Target:
        """Turn a user target into a :class:`Target` for the attributed batch ``z`` (predictions if needed)."""
        sig = self.signature
        n = len(z)
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
            return Target(out, np.argmax(self._forward_flat(z, out), axis=1).astype(np.int32))
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

    # -- the attributed function, compiled ----------------------------------------------------------------------
    def _output_function(self, out: int) -> InputFunction:
        """The attributed model as a function of ``z`` with output ``out`` selected (cached with the model)."""
        return self.function if out == self.function.output_index else get_function(self.function.model,
                                                                                        output=out)

    def compiled(self, kind: str, target: Target, in_shape: tuple[int, ...], build: Callable,
                 extra: Sequence[tf.TensorSpec] = ()):
        """A compiled ``(z_rows, *extra, index) -> ...`` kept in the one cache with the attributed model.

        ``build(select)`` returns the Python function; ``select(z_rows, index)`` is the explained scalar per
        row, ``(N,)``, of flat rows ``(N, prod(in_shape))``. Traced once per ``in_shape`` (batch free).
        """
        fn = self._output_function(target.output)
        counts = self.trace_counts
        select = _selector(fn, target.fn, in_shape)

        def make():
            py = build(select)

            def counted(*args):
                counts[kind] = counts.get(kind, 0) + 1
                return py(*args)

            rows = tf.TensorSpec((None, math.prod(in_shape)), fn.dtype)
            return traced(counted, input_signature=[rows, *extra, tf.TensorSpec((None,), tf.int32)],
                          autograph=False)

        return _cache.cached(fn, ("attribution", kind, in_shape, _cache.key_of(target.fn)), make)

    def _forward_flat(self, z: np.ndarray, out: int) -> np.ndarray:
        fn = self._output_function(out)
        prep = Prepared(z.reshape(len(z), -1), (), tuple(z.shape[1:]), (self._output_size(out),))
        return fn.outputs(prep, batch_size=self._example_chunks(len(z), 1)[0][1])

    # -- chunked evaluation -----------------------------------------------------------------------------------
    def space_size(self) -> int:
        """Elements per example of the attributed array (unknown dimensions counted as 1)."""
        return int(math.prod(d for d in self.space_shape if d is not None))

    def example_bytes(self) -> int:
        """Estimated working memory of one example through forward and backward passes, in bytes."""
        inputs = self.space_size() * self.dtype.size
        return int(4 * max(self.function.activation_bytes(), 16 * inputs) + 4 * inputs)

    def _example_chunks(self, total: int, per_item_factor: int, internal_batch_size: int | None = None):
        if internal_batch_size is not None:
            chunk = check_positive_int("internal_batch_size", internal_batch_size)
            return [(a, min(a + chunk, total)) for a in range(0, total, chunk)]
        plan = plan_chunks(total, self.example_bytes() * per_item_factor, budget=self.budget,
                           what=f"{self.name} ({total} examples)", max_chunk=_MAX_CHUNK)
        return list(plan.ranges())

    def gradients(self, z: np.ndarray, target: Target) -> tuple[np.ndarray, np.ndarray]:
        """``(∂f_i/∂z_i, f_i)`` for a validated attributed array ``z``, evaluated in planned chunks."""
        in_shape = tuple(z.shape[1:])

        def build(select):
            def grad(rows, index):
                with tf.GradientTape() as tape:
                    tape.watch(rows)
                    f = select(rows, index)
                    total = tf.reduce_sum(f)
                return tape.gradient(total, rows), f
            return grad

        fn = self.compiled("gradient", target, in_shape, build)
        flat = z.reshape(len(z), -1)
        grads, values = [], []
        for a, b in self._example_chunks(len(z), 1):
            g, f = fn(tf.constant(flat[a:b]), tf.constant(_index_or_dummy(target.take(np.arange(a, b)), b - a)))
            grads.append(g.numpy())
            values.append(f.numpy())
        return np.concatenate(grads).reshape(z.shape), np.concatenate(values)

    def values(self, z: np.ndarray, target: Target) -> np.ndarray:
        """``f_i(z_i)`` for a validated attributed array (chunked)."""
        fn = self.compiled("value", target, tuple(z.shape[1:]), lambda select: select)
        flat = z.reshape(len(z), -1)
        out = []
        for a, b in self._example_chunks(len(z), 1):
            t = target.take(np.arange(a, b))
            out.append(fn(tf.constant(flat[a:b]), tf.constant(_index_or_dummy(t, b - a))).numpy())
        return np.concatenate(out)

    def __repr__(self) -> str:
        at = "" if self.layer is None else f", layer={self.layer!r}"
        return f"{type(self).__name__}({self.model.name}{at})"


# ------------------------------------------------------------------------------------------------ helpers
def _selector(fn: InputFunction, target_fn, in_shape: tuple[int, ...]):
    """``(rows, index) -> (N,)``: the explained scalar per row (runs inside the traced function)."""
    if target_fn is None:
        def select(rows, index):
            return tf.gather(fn.rows(rows, (), in_shape), index, axis=1, batch_dims=1)
        return select

    def select_callable(rows, index):
        value = target_fn(fn.model(tf.reshape(rows, [-1, *in_shape]), training=False))
        if not tf.is_tensor(value):
            value = tf.convert_to_tensor(value)
        if value.shape.rank == 2 and value.shape[1] == 1:
            value = value[:, 0]
        if value.shape.rank != 1:
            raise InputError(f"target: the callable must return one value per example, shape (B,), got shape "
                             f"{tuple(value.shape)}")
        return tf.cast(value, fn.dtype)
    return select_callable


def _as_input(a: np.ndarray, dtype: tf.DType, what: str) -> np.ndarray:
    """``a`` in the model's input dtype; integer inputs (token ids) must hold whole numbers."""
    if not dtype.is_floating and np.issubdtype(a.dtype, np.floating) and np.any(a != np.round(a)):
        raise InputError(f"{what}: expected whole numbers for the {dtype.name} model input (token ids), got "
                         "fractional values")
    out = np.asarray(a, dtype=dtype.as_numpy_dtype)
    return np.ascontiguousarray(out) if out.ndim else out  # ascontiguousarray would make a scalar 1-d


def _embedding_name(model) -> str | None:
    """The name of the model's first Embedding layer, for the hint on integer inputs."""
    for layer in getattr(model, "layers", []):
        if isinstance(layer, keras.layers.Embedding):
            return layer.name
    return None


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
