"""A Keras model split at a named layer: ``x -> h = layer output`` (the head) and ``h -> model output`` (the tail).

Attribution at a layer explains the output by the layer's activations instead of the raw inputs: the model is
``f(x) = tail(head(x))`` and a method differentiates ``tail`` at ``h = head(x)``. This is how token models are
explained: token ids have no gradient, the embedding output does, and summing its attributions over the
embedding axis gives one score per token.

The split is built from the model's functional graph without changing the user's model: the head is a
functional model from the model's inputs to the layer's output tensor (no layer is called), and the tail is
rebuilt by calling the layers after the chosen one on a new ``Input``; the graph bookkeeping Keras adds to
those layers while doing so is removed again, so the user's model and its layers are left exactly as they
were. A layer called more than once (shared), a tail that also reads the inputs by another route (a residual
around the layer, a second input branch) or a layer whose output carries a mask is refused in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _cache
from .._backend import keras, tf
from .._checks import InputError
from .._tracing import short_reason, traced

__all__ = ["LayerSplit", "split_at"]


@dataclass(frozen=True, eq=False)
class LayerSplit:
    """A model split at ``layer``: ``model(x) == tail(head(x))`` (both run with ``training=False``).

    Attributes:
        layer: the layer's name.
        head: functional model, the model's input -> the layer's output (shares the user's layers).
        tail: functional model, the layer's output -> the model's outputs (shares the user's layers).
        shape: per-example shape of the layer's output.
    """

    layer: str
    head: Any
    tail: Any
    shape: tuple[int | None, ...]

    def activations(self, x: np.ndarray, chunk: int) -> np.ndarray:
        """``head(x)`` for a batch, in chunks of ``chunk`` examples, by one compiled function."""
        dtype = tf.as_dtype(self.head.inputs[0].dtype)

        def build():
            spec = tf.TensorSpec((None, *x.shape[1:]), dtype)
            return traced(lambda xb: self.head(xb, training=False), input_signature=[spec], autograph=False)

        fn = _cache.cached(self, ("activations", tuple(x.shape[1:])), build)
        parts = [fn(tf.constant(x[a:a + chunk])).numpy() for a in range(0, len(x), chunk)]
        return np.concatenate(parts)


def split_at(model, layer: str) -> LayerSplit:
    """The model split at the layer named ``layer`` (cached with the model).

    Raises:
        InputError: the layer is unknown, is called more than once in the model, has several outputs or a mask,
            or is not on a simple path from the inputs to the outputs; or the model has no functional graph.
    """
    if not isinstance(layer, str) or not layer:
        raise TypeError(f"layer: expected a layer name (str), got {layer!r}")
    return _cache.cached(model, ("attribution_split", layer), lambda: _split(model, layer))


def _graph(model):
    if hasattr(model, "_nodes_by_depth") and getattr(model, "inputs", None):
        return model
    inner = getattr(model, "_functional", None)  # a Sequential model's graph
    if inner is not None and hasattr(inner, "_nodes_by_depth"):
        return inner
    raise InputError(f"layer=: model {model.name!r} has no functional graph (a subclassed model, or a Sequential "
                     "model built without an Input); attribution at a layer needs a functional or Sequential model")


def _split(model, name: str) -> LayerSplit:
    graph = _graph(model)
    names = [op.name for op in graph._operations if not isinstance(op, keras.layers.InputLayer)]
    target = next((op for op in graph._operations if op.name == name), None)
    if target is None or isinstance(target, keras.layers.InputLayer):
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise InputError(f"layer: unknown layer {name!r}; the model's layers are {shown}")
    nodes = [n for depth in sorted(graph._nodes_by_depth, reverse=True) for n in graph._nodes_by_depth[depth]]
    own = [n for n in nodes if n.operation is target]
    if len(own) != 1:
        raise InputError(f"layer {name!r} is called {len(own)} times in the model (a shared layer has several "
                         "inbound nodes), so its output is not one tensor; choose a layer called once")
    node = own[0]
    if len(node.outputs) != 1:
        raise InputError(f"layer {name!r} has {len(node.outputs)} outputs; choose a layer with one output")
    h = node.outputs[0]
    if getattr(h, "_keras_mask", None) is not None:
        raise InputError(f"layer {name!r} produces a mask (e.g. Embedding(mask_zero=True)), which a split at its "
                         "output would lose; choose a layer after the masking")
    if not tf.as_dtype(h.dtype).is_floating:
        raise InputError(f"layer {name!r} outputs dtype {h.dtype}, which has no gradient; choose a layer with a "
                         "floating-point output (e.g. the embedding)")

    saved = _snapshot(model)
    try:
        head = keras.Model(graph.inputs, h, name=f"{model.name}_to_{name}")
        start = keras.Input(shape=tuple(h.shape[1:]), dtype=h.dtype, name=f"{name}_output")
        tensors = {id(h): start}
        for n in nodes:
            if n is node or n.is_input or not n.operation:
                continue
            reads = [id(t) in tensors for t in n.input_tensors]
            if not any(reads):
                continue  # before the layer, or on a branch that never meets it
            if not all(reads):
                raise InputError(f"layer {name!r} is not on a simple path: layer {n.operation.name!r} combines its "
                                 "output with tensors computed without it (a residual or a second branch); choose "
                                 "a layer that every path from the inputs to the outputs goes through")
            args, kwargs = n.arguments.fill_in(tensors)
            try:
                outs = n.operation(*args, **kwargs)
            except Exception as exc:  # a layer that cannot be called on a new input: say which, in one line
                raise InputError(f"layer {name!r}: could not rebuild the model after it at layer "
                                 f"{n.operation.name!r} ({short_reason(exc)})") from None
            for ref, value in zip(n.outputs, tf.nest.flatten(outs)):
                tensors[id(ref)] = value
        missing = [t for t in graph.outputs if id(t) not in tensors]
        if missing:
            raise InputError(f"layer {name!r} is not on a simple path: {len(missing)} model output(s) do not depend "
                             "on it; choose a layer that every output depends on")
        outputs = [tensors[id(t)] for t in graph.outputs]
        tail = keras.Model(start, outputs[0] if len(outputs) == 1 else outputs, name=f"{model.name}_from_{name}")
    finally:
        _restore(saved)
    return LayerSplit(name, head, tail, tuple(None if d is None else int(d) for d in h.shape[1:]))


def _snapshot(model) -> list[tuple[Any, int, int]]:
    """How many inbound and outbound nodes every layer of ``model`` has (calling a layer adds one)."""
    layers = list(model._flatten_layers(include_self=True, recursive=True))
    functional = getattr(model, "_functional", None)
    if functional is not None:
        layers += list(functional._flatten_layers(include_self=True, recursive=True))
    return [(op, len(op._inbound_nodes), len(op._outbound_nodes)) for op in layers]


def _restore(saved: list[tuple[Any, int, int]]) -> None:
    """Drop the nodes added since :func:`_snapshot` (the tail model keeps its own graph)."""
    for op, inbound, outbound in saved:
        del op._inbound_nodes[inbound:]
        del op._outbound_nodes[outbound:]
