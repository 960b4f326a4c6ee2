"""The function every input-space derivative differentiates: ``x -> chosen output of model(x, training=False)``.

An :class:`InputFunction` selects one input (by name or index; the other inputs of a multi-input model are
held fixed at their data values) and one output (by name or index), and evaluates the model on *rows*: flat
examples, ``(N, n_in) -> (N, n_out)``. In inference mode each row of a batch is computed independently of
the others, so derivatives of the sum over rows are per-example derivatives. The compiled derivative steps
and the chunked sweep over examples and directions are in :mod:`._sweep`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .. import _cache
from .._backend import keras, tf
from .._checks import InputError
from .._memory import activation_bytes
from .._tracing import traced
from ..io.precision import with_precision
from ..io.signature import signature

if TYPE_CHECKING:
    from ._sweep import Candidate, Step

__all__ = ["InputFunction", "Prepared", "get_function", "refuse_training", "flat_index", "check_component",
           "component_alias"]

ZERO = tf.UnconnectedGradients.ZERO


def refuse_training(training: bool, what: str = "per-example input derivatives") -> None:
    """Raise unless ``training`` is False: training mode couples the examples of a batch."""
    if training:
        raise InputError(f"training=True is refused for {what}: in training mode BatchNormalization normalises "
                         "with the statistics of the whole batch, so one example's output depends on the other "
                         "examples and a per-example derivative is not defined, and Dropout makes it random; "
                         "use training=False (inference mode)")


@dataclass(frozen=True)
class Prepared:
    """Validated inputs: the chosen input flattened per example, the others as they are."""

    x: np.ndarray  # (B, n_in), compute dtype
    others: tuple[np.ndarray, ...]  # the other model inputs, (B, ...) each
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @property
    def num_examples(self) -> int:
        return int(self.x.shape[0])

    @property
    def n_in(self) -> int:
        return int(self.x.shape[1])

    @property
    def n_out(self) -> int:
        return int(math.prod(self.out_shape))

    def subset(self, start: int, stop: int) -> Prepared:
        """Examples ``start:stop``."""
        return Prepared(self.x[start:stop], tuple(o[start:stop] for o in self.others), self.in_shape,
                        self.out_shape)


class InputFunction:
    """``x -> model(x, training=False)[output]`` on flat rows, for one chosen input and output.

    Args:
        model: a built Keras model (never modified).
        input: name or index of the input to differentiate with respect to (default: the only one).
        output: name or index of the output to differentiate (default: the only one).
        precision: ``"float64"`` evaluates a float64 copy of the model.
    """

    def __init__(self, model, input: int | str | None = None, output: int | str | None = None,
                 precision: str | None = None):
        if not isinstance(model, keras.Model):
            raise TypeError(f"model: expected a Keras model, got {type(model).__name__}")
        self.model = with_precision(model, precision)
        self.signature = sig = signature(self.model)
        self.input_index = sig.input_index(input)
        self.output_index = sig.output_index(output)
        self.input_name = sig.input_names[self.input_index]
        self.output_name = sig.output_names[self.output_index]
        self.dict_inputs = isinstance(getattr(self.model, "input", None), dict)
        self.input_dtypes = self._input_dtypes()
        dtype = tf.as_dtype(self.input_dtypes[self.input_index])
        if not dtype.is_floating:
            raise InputError(f"input {self.input_name!r} has dtype {dtype.name} (e.g. token ids for an Embedding): "
                             "outputs are not differentiable with respect to integer inputs; differentiate with "
                             "respect to a floating input (or the embedding output) instead")
        self.dtype = dtype
        self._functions = _cache.table(self)
        self._activation_bytes: int | None = None
        self.forward_unavailable: Exception | None = None  # why forward mode failed, once it has
        self.recurrent = any(isinstance(layer, keras.layers.RNN) for layer in _all_layers(self.model))

    # -- structure ---------------------------------------------------------------------------------------------
    def _input_dtypes(self) -> list[str]:
        tensors = getattr(self.model, "inputs", None) or []
        if isinstance(getattr(self.model, "input", None), dict):
            tensors = list(self.model.input.values())
        n = len(self.signature.input_names)
        if len(tensors) == n:
            return [str(getattr(t, "dtype", None) or "float32") for t in tensors]
        weights = self.model.trainable_variables
        return [str(weights[0].dtype) if weights else "float32"] * n

    def prepare(self, x) -> Prepared:
        """Validate ``x`` against the model (shape, count, finite values) and flatten the chosen input.

        Raises:
            InputError: wrong shape, wrong number of inputs, NaN/Inf values or no examples.
        """
        from ..io.data import load_data

        if isinstance(x, tuple):
            x = list(x)
        data = load_data(x, model=self.model, require_targets=False)
        arrays = data.x if isinstance(data.x, list) else [data.x]
        cast = []
        for a, dt in zip(arrays, self.input_dtypes):
            a = np.asarray(a)
            if tf.as_dtype(dt).is_floating:
                a = a.astype(tf.as_dtype(dt).as_numpy_dtype, copy=False)
            cast.append(a)
        chosen = cast[self.input_index]
        in_shape = tuple(int(d) for d in chosen.shape[1:])
        others = tuple(a for i, a in enumerate(cast) if i != self.input_index)
        flat = np.ascontiguousarray(chosen.reshape(len(chosen), -1))
        declared = self.signature.output_shapes[self.output_index]
        if all(d is not None for d in declared) and None not in self.signature.input_shapes[self.input_index]:
            return Prepared(flat, others, in_shape, tuple(int(d) for d in declared))
        first = Prepared(flat[:1], tuple(o[:1] for o in others), in_shape, ())
        y = self._output_function(first)(tf.constant(first.x), [tf.constant(o) for o in first.others])
        return Prepared(flat, others, in_shape, tuple(int(d) for d in y.shape[1:]))

    def rows(self, x_rows, others_rows: Sequence, in_shape: tuple[int, ...], flatten: bool = True):
        """Model output for flat rows ``(N, n_in)`` -> ``(N, n_out)`` (or ``(N, *out)`` unflattened)."""
        # no Shape op on a differentiated tensor: nested forward accumulators cannot handle one
        chosen = tf.reshape(x_rows, [-1, *in_shape])
        arrays = list(others_rows)
        arrays.insert(self.input_index, chosen)
        if self.dict_inputs:
            out = self.model(dict(zip(self.signature.input_names, arrays)), training=False)
        else:
            out = self.model(arrays[0] if len(arrays) == 1 else arrays, training=False)
        out = self._select(out)
        out = tf.cast(out, self.dtype)
        if not flatten:
            return out
        if out.shape[1:].is_fully_defined():
            return tf.reshape(out, [-1, int(math.prod(out.shape[1:]))])
        return tf.reshape(out, tf.stack([tf.shape(tf.stop_gradient(out))[0], -1]))

    def _select(self, out):
        if isinstance(out, dict):
            if self.output_name in out:
                return out[self.output_name]
            return list(out.values())[self.output_index]
        if isinstance(out, list | tuple):
            return out[self.output_index]
        return out

    def outputs(self, prep: Prepared, batch_size: int | None = None) -> np.ndarray:
        """The chosen output ``(B, *out)`` at the prepared inputs, in chunks of ``batch_size`` examples."""
        step = self._output_function(prep)
        size = prep.num_examples if batch_size is None else int(batch_size)
        parts = []
        for b0 in range(0, prep.num_examples, size):
            b1 = min(b0 + size, prep.num_examples)
            parts.append(step(tf.constant(prep.x[b0:b1]), [tf.constant(o[b0:b1]) for o in prep.others]).numpy())
        return np.concatenate(parts).reshape((prep.num_examples, *prep.out_shape))

    def _output_function(self, prep: Prepared):
        step = self.function(("outputs", prep.in_shape), lambda: lambda xb, others: self.rows(
            xb, others, prep.in_shape, flatten=False))
        step.get_concrete_function(_spec(prep.x), [_spec(o) for o in prep.others])
        return step

    # -- compiled functions and memory ---------------------------------------------------------------------------
    def function(self, key, builder: Callable[[], Callable]) -> Callable:
        """A cached ``tf.function`` for ``key`` (built by ``builder()``), traced once per shape."""
        fn = self._functions.get(key)
        if fn is None:
            fn = traced(builder(), reduce_retracing=True)
            self._functions[key] = fn
        return fn

    def step(self, key, candidates: Sequence[Candidate], generic: bool = True,
             what: str = "this derivative") -> Step:
        """A cached :class:`Step` for ``key`` from its candidate implementations, best first.

        For models with recurrent layers, stacked copies are tried before ``tf.vectorized_map`` (vectorising
        a while loop is slow to compile and to run).
        """
        from ._sweep import Step

        step = self._functions.get(key)
        if step is None:
            if self.recurrent:
                candidates = sorted(candidates, key=lambda c: "vectorized_map" in c.name)
            step = Step(self, candidates, generic, what)
            self._functions[key] = step
        return step

    def activation_bytes(self) -> int:
        """Rough bytes of activations per example (sum of the layer output sizes)."""
        if self._activation_bytes is None:
            self._activation_bytes = activation_bytes(self.model, self.dtype.size)
        return self._activation_bytes


def _all_layers(model) -> list:
    out, stack = [], list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop()
        out.append(layer)
        stack.extend(getattr(layer, "layers", []) or [])
        inner = getattr(layer, "layer", None) or getattr(layer, "forward_layer", None)
        if inner is not None:
            stack.append(inner)
    return out


def get_function(model, input=None, output=None, precision: str | None = None) -> InputFunction:
    """An :class:`InputFunction`, reused across calls for the same model and selection (compiled once).

    Copies made for ``precision`` are never reused (the user's weights may change between calls).
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"model: expected a Keras model, got {type(model).__name__}")
    sig = signature(model)
    key = ("input_function", sig.input_index(input), sig.output_index(output))
    if precision is None:
        return _cache.cached(model, key, lambda: InputFunction(model, input, output, precision))
    fn = InputFunction(model, input, output, precision)
    if fn.model is model:  # already in that precision: the same function as precision=None
        return _cache.cached(model, key, lambda: fn)
    return fn


# -------------------------------------------------------------------------------------------------- validation
def flat_index(what: str, value, shape: tuple[int, ...]) -> int:
    """A flat index into ``shape`` from an int (flat) or a tuple of coordinates; InputError if out of range."""
    size = int(math.prod(shape))
    if isinstance(value, bool):
        raise TypeError(f"{what}: expected an integer index, got {value!r}")
    if isinstance(value, int | np.integer):
        if not 0 <= int(value) < size:
            raise InputError(f"{what} {int(value)} out of range: expected 0..{size - 1} (flat index into shape "
                             f"{shape})")
        return int(value)
    if isinstance(value, tuple | list) and all(isinstance(v, int | np.integer) and not isinstance(v, bool)
                                               for v in value):
        if len(value) != len(shape) or any(not 0 <= v < s for v, s in zip(value, shape)):
            raise InputError(f"{what} {tuple(int(v) for v in value)} out of range for shape {shape}")
        return int(np.ravel_multi_index(tuple(int(v) for v in value), shape))
    raise TypeError(f"{what}: expected an int or a tuple of ints, got {value!r}")


def component_alias(component, index):
    """``component``, or the former keyword ``index`` that some functions took for it (not both)."""
    if index is None:
        return component
    if component is not None:
        raise InputError("pass the output component as component=... (index= is its former name), not both")
    return index


def check_component(component, out_shape: tuple[int, ...], output_name: str, name: str = "component",
                    allow_all: bool = True) -> int | None:
    """Resolve the output component: None (the single unit), an index, or ``"all"`` (returned as None)."""
    n_out = int(math.prod(out_shape))
    if isinstance(component, str):
        if allow_all and component == "all":
            return None
        choices = "an index or 'all'" if allow_all else "an index"
        raise InputError(f"{name}: expected {choices}, got {component!r}")
    if component is None:
        if n_out != 1:
            raise InputError(f"output {output_name!r} has {n_out} components (shape {out_shape}); choose one with "
                             f"{name}=INDEX (flat index 0..{n_out - 1})" + (f" or {name}='all'" if allow_all else ""))
        return 0
    return flat_index(f"{name}", component, out_shape)


def _spec(a: np.ndarray) -> tf.TensorSpec:
    """A spec for ``a`` with an unknown leading (example) dimension."""
    return tf.TensorSpec([None, *a.shape[1:]], tf.as_dtype(a.dtype))
