"""Layer taps for Kronecker-factored curvature: which layers form Kronecker blocks, and one pass that records
their inputs and pre-activation outputs without touching the user's model.

The model is re-evaluated node by node through its own Keras graph (``Functional._run_through_graph``): a
supported layer is replaced, for this evaluation only, by the same linear map written out here on the
parameter tensors (so the pre-activation ``z`` exists as a tensor the tape watches, and the layer's input is
at hand); every other layer runs through its own ``stateless_call``. No variable is assigned, and the only
patch is the scoped, thread-local interception of nested layers described below. The re-evaluation is checked
against ``model.stateless_call`` on the first batch before it is trusted (and, by ``KFACOperator``, each tapped
layer's weight gradient against ``sum_r a_r g_r^T`` over its recorded calls).

A tapped layer yields ``a`` of shape ``(B, R, G, d_in)`` (its input features at ``R`` weight-sharing positions:
sequence steps, convolution patches, for each of ``G`` independent groups) and ``z`` whose gradient reshapes to
``(B, R, G, d_out)``, with ``z[b, r, g, :] = a[b, r, g, :] @ W_g + bias_g`` and ``W_g`` group ``g``'s slice of
the kernel reshaped to ``(d_in, d_out)``. ``G = 1`` except for depthwise convolutions (one group per input
channel: ``d_in = kh*kw`` (``k`` for DepthwiseConv1D), ``d_out`` the depth multiplier).

Layers that run inside another layer's own ``call`` (the query/key/value/output ``EinsumDense`` projections of a
``MultiHeadAttention``, the layer wrapped by ``TimeDistributed``) are not nodes of the graph. For them the
re-evaluation intercepts the sub-layer's ``call`` while it runs: :func:`intercepted_calls` puts a forwarding
``call`` on the sub-layer instance (reference-counted, under a lock, removed on exit even on error; the same
discipline as :func:`tfpartials._tracing.derivative_scope`), and the forwarder evaluates the linear map written
out here only when the calling thread is inside a tapped re-evaluation; any other caller (another thread, the
user) reaches the layer's own ``call``. A layer called several times (shared weights, ``TimeDistributed``'s
steps) yields one tap per call.
"""

from __future__ import annotations

import inspect
import string
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _im2col
from .._backend import keras, tf
from .._checks import InputError

__all__ = ["Tapped", "find_layers", "tapped_forward", "intercepted_calls"]


def _classes(*names: str) -> tuple:
    return tuple(getattr(keras.layers, n) for n in names if hasattr(keras.layers, n))


_NORMALIZATION = _classes("BatchNormalization", "LayerNormalization", "GroupNormalization", "RMSNormalization",
                          "SpectralNormalization")


@dataclass
class Tapped:
    """One layer whose kernel (and bias) form a Kronecker block."""

    layer: Any
    name: str                 # layer path, e.g. "block/dense_1"
    kind: str                 # dense | einsum | conv | depthwise | embedding
    kernel: Any               # keras variable or None (not selected)
    bias: Any                 # keras variable or None (absent or not selected)
    d_in: int
    d_out: int
    kernel_order: np.ndarray  # ([G,] d_in * d_out): row-major (d_in, d_out) position of group g -> kernel index
    extra: dict = field(default_factory=dict)
    groups: int = 1           # G: independent Kronecker blocks of this layer (depthwise: input channels)
    bias_order: np.ndarray | None = None  # (G, d_out): bias index of each group's output (default: arange)
    inside: Any = None        # the layer whose own call runs this one (None: a node of a functional graph)

    @property
    def d_a(self) -> int:
        return (self.d_in if self.kernel is not None else 0) + (1 if self.bias is not None else 0)


def _iter_layers(layer, prefix="", inside=None):
    """``(layer, path, inside)``: every nested layer; ``inside`` is the non-model layer whose own ``call`` runs it
    (e.g. a MultiHeadAttention's projections), None for layers that are nodes of a (nested) functional graph."""
    subs = getattr(layer, "_layers", None)
    if subs is None:
        subs = getattr(layer, "layers", [])
    for sub in subs:
        if isinstance(sub, keras.layers.Layer):
            path = f"{prefix}{sub.name}"
            yield sub, path, inside
            owner = inside if inside is not None or isinstance(sub, keras.Model) else sub
            yield from _iter_layers(sub, path + "/", owner)


def _einsum_plan(layer) -> dict:
    """Axes of an EinsumDense equation: batch+shared letters, contracted (input) and output kernel letters."""
    eq = layer.equation.replace(" ", "")
    lhs, out = eq.split("->")
    inp, ker = lhs.split(",")
    if "..." in inp:
        free = [c for c in string.ascii_letters if c not in eq]
        n_ell = len(layer.full_output_shape) - (len(out) - 3)
        ell = "".join(free[:n_ell])
        inp, out = inp.replace("...", ell), out.replace("...", ell)
    if "..." in ker or "..." in inp:
        raise InputError(f"KFAC: EinsumDense layer {layer.name!r} with equation {layer.equation!r} is not supported")
    k_in = [c for c in ker if c in inp and c not in out]
    k_out = [c for c in ker if c in out and c not in inp]
    if len(k_in) + len(k_out) != len(ker) or inp[0] != out[0] or any(c not in out for c in inp if c not in ker):
        raise InputError(f"KFAC: EinsumDense layer {layer.name!r}: equation {layer.equation!r} is not a plain "
                         "contraction of input features (exclude it with wrt=...)")
    shared = [c for c in inp[1:] if c not in ker]
    return {"inp": inp, "ker": ker, "out": out, "k_in": k_in, "k_out": k_out, "shared": shared}


def _kernel_order(shape, axes_in: list[int], axes_out: list[int]) -> np.ndarray:
    idx = np.arange(int(np.prod(shape))).reshape(shape)
    return np.transpose(idx, axes_in + axes_out).reshape(-1)


def find_layers(model, space) -> tuple[list[Tapped], list[tuple[str, Any]]]:
    """The tapped layers and the (name, variable) pairs that get exact diagonal blocks.

    Raises:
        InputError: a selected variable belongs to a layer that is neither supported nor a normalisation layer.
    """
    selected = {id(v): n for v, n in zip(space.variables, space.names)}
    tapped: list[Tapped] = []
    diagonal: list[tuple[str, Any]] = []
    claimed: set[int] = set()
    for layer, path, inside in _iter_layers(model):
        own = [v for v in getattr(layer, "_trainable_variables", []) if id(v) in selected]
        if not own:
            continue
        if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
            raise InputError(f"KFAC: layer {path!r} is LoRA-enabled or quantised; not supported (exclude it "
                             "with wrt=...)")
        spec = _spec(layer, path, selected)
        if spec is not None:
            spec.inside = inside
            tapped.append(spec)
            claimed.update(id(v) for v in (spec.kernel, spec.bias) if v is not None)
        elif isinstance(layer, _NORMALIZATION):
            for v in own:
                diagonal.append((selected[id(v)], v))
                claimed.add(id(v))
    for v, n in zip(space.variables, space.names):
        if id(v) not in claimed:
            raise InputError(f"KFAC: parameter {n!r} belongs to a layer without a Kronecker-factored form "
                             "(supported: Dense, EinsumDense, Conv1D/2D, DepthwiseConv1D/2D, Embedding, also inside "
                             "MultiHeadAttention and TimeDistributed; "
                             "normalisation layers get their exact diagonal); exclude it with wrt=...")
    return tapped, diagonal


def _spec(layer, path: str, selected: dict) -> Tapped | None:
    def sel(var):
        return var if var is not None and id(var) in selected else None

    kernel = getattr(layer, "kernel", None) if not isinstance(layer, keras.layers.Embedding) else None
    bias = sel(getattr(layer, "bias", None))
    if isinstance(layer, keras.layers.Embedding):
        emb = layer.embeddings
        v, d = (int(s) for s in emb.shape)
        return Tapped(layer, path, "embedding", sel(emb), None, v, d, np.arange(v * d))
    if isinstance(layer, keras.layers.Dense):
        d_in, d_out = (int(s) for s in kernel.shape)
        return Tapped(layer, path, "dense", sel(kernel), bias, d_in, d_out, np.arange(d_in * d_out))
    if isinstance(layer, keras.layers.EinsumDense):
        plan = _einsum_plan(layer)
        shape = tuple(int(s) for s in kernel.shape)
        ax_in = [plan["ker"].index(c) for c in plan["k_in"]]
        ax_out = [plan["ker"].index(c) for c in plan["k_out"]]
        d_in = int(np.prod([shape[a] for a in ax_in]))
        d_out = int(np.prod([shape[a] for a in ax_out]))
        if bias is not None:
            bias_letters = layer.bias_axes or ""
            if [c for c in plan["out"] if c in bias_letters] != plan["k_out"]:
                raise InputError(f"KFAC: EinsumDense layer {path!r}: bias axes {bias_letters!r} do not span the "
                                 "kernel's output axes; exclude its bias with wrt=...")
        return Tapped(layer, path, "einsum", sel(kernel), bias, d_in, d_out,
                      _kernel_order(shape, ax_in, ax_out), {"plan": plan})
    if isinstance(layer, _classes("DepthwiseConv1D", "DepthwiseConv2D")):
        if layer.data_format != "channels_last":
            raise InputError(f"KFAC: convolution {path!r} uses data_format={layer.data_format!r}; only "
                             "channels_last is supported")
        *ks, c_in, mult = (int(s) for s in layer.kernel.shape)
        k = int(np.prod(ks))  # kernel positions: k (1D) or kh*kw (2D), row-major
        order = np.arange(k * c_in * mult).reshape(k, c_in, mult).transpose(1, 0, 2)
        return Tapped(layer, path, "depthwise", sel(layer.kernel), bias, k, mult,
                      order.reshape(c_in, -1), groups=c_in,
                      bias_order=np.arange(c_in * mult).reshape(c_in, mult))
    conv_classes = _classes("Conv1D", "Conv2D")
    if isinstance(layer, conv_classes) and not isinstance(layer, _classes("Conv1DTranspose", "Conv2DTranspose",
                                                                          "DepthwiseConv1D", "DepthwiseConv2D",
                                                                          "SeparableConv1D", "SeparableConv2D")):
        if getattr(layer, "groups", 1) != 1:
            raise InputError(f"KFAC: grouped convolution {path!r} (groups={layer.groups}) is not supported")
        if layer.data_format != "channels_last":
            raise InputError(f"KFAC: convolution {path!r} uses data_format={layer.data_format!r}; only "
                             "channels_last is supported")
        shape = tuple(int(s) for s in kernel.shape)
        d_out = shape[-1]
        d_in = int(np.prod(shape[:-1]))
        return Tapped(layer, path, "conv", sel(kernel), bias, d_in, d_out, np.arange(d_in * d_out))
    return None


# ------------------------------------------------------------------------------------------ linear maps
def _patches(x, layer):
    """Unfolded input patches ``(B, R, k*... *c_in)`` in the kernel's row-major order, and the padded input."""
    rank = len(layer.kernel_size)
    strides, rates = list(layer.strides), list(layer.dilation_rate)
    ksize = list(layer.kernel_size)
    padding = layer.padding.upper()
    if rank == 1:
        if padding == "CAUSAL":
            x = tf.pad(x, [[0, 0], [rates[0] * (ksize[0] - 1), 0], [0, 0]])
            padding = "VALID"
        x = x[:, None]
        ksize, strides, rates = [1] + ksize, [1] + strides, [1] + rates
    p = _im2col.patches(x, ksize, strides, rates, padding)
    return tf.reshape(p, (tf.shape(p)[0], -1, p.shape[-1]))


def _conv(x, kernel, layer):
    padding = layer.padding.upper()
    if padding == "CAUSAL":
        r, k = layer.dilation_rate[0], layer.kernel_size[0]
        x = tf.pad(x, [[0, 0], [r * (k - 1), 0], [0, 0]])
        padding = "VALID"
    return tf.nn.convolution(x, kernel, strides=list(layer.strides), padding=padding,
                             dilations=list(layer.dilation_rate))


def _linear(spec: Tapped, x, kernel, bias):
    """``(a, z, to_rows)``: features ``(B, R, d_in)``, pre-activation output, ``g -> (B, R, d_out)``; for a
    depthwise convolution ``(B, R, G, d_in)`` and ``g -> (B, R, G, d_out)``."""
    layer = spec.layer
    if spec.kind == "embedding":
        idx = tf.cast(x, tf.int32)
        z = tf.gather(kernel, idx)
        a = tf.one_hot(tf.reshape(idx, (tf.shape(idx)[0], -1)), spec.d_in, dtype=kernel.dtype)
        return a, z, lambda g: tf.reshape(g, (tf.shape(g)[0], -1, spec.d_out))
    x = tf.cast(x, kernel.dtype)
    if spec.kind == "dense":
        z = tf.tensordot(x, kernel, [[x.shape.rank - 1], [0]])
        a = tf.reshape(x, (tf.shape(x)[0], -1, spec.d_in))
        if bias is not None:
            z = z + bias
        return a, z, lambda g: tf.reshape(g, (tf.shape(g)[0], -1, spec.d_out))
    if spec.kind == "einsum":
        plan = spec.extra["plan"]
        z = tf.einsum(f"{plan['inp']},{plan['ker']}->{plan['out']}", x, kernel)
        if bias is not None:
            z = z + tf.reshape(bias, [s if c in (layer.bias_axes or "") else 1
                                      for c, s in zip(plan["out"], z.shape)][1:])
        lead = plan["inp"][0] + "".join(plan["shared"])
        a = tf.einsum(f"{plan['inp']}->{lead}{''.join(plan['k_in'])}", x)
        a = tf.reshape(a, (tf.shape(x)[0], -1, spec.d_in))

        def to_rows(g):
            g = tf.einsum(f"{plan['out']}->{lead}{''.join(plan['k_out'])}", g)
            return tf.reshape(g, (tf.shape(g)[0], -1, spec.d_out))

        return a, z, to_rows
    if spec.kind == "depthwise":
        G, k = spec.groups, spec.d_in
        a = tf.reshape(_patches(x, layer), (tf.shape(x)[0], -1, k, G))  # patch order (kh, kw, c)
        a = tf.transpose(a, (0, 1, 3, 2))
        if len(layer.kernel_size) == 1:  # from the patches: z[b, r, c*mult + m] = sum_k a[b, r, c, k] W[k, c, m]
            z = tf.einsum("brck,kcm->brcm", a, kernel)
            z = tf.reshape(z, (tf.shape(x)[0], -1, G * spec.d_out))
        else:
            z = tf.nn.depthwise_conv2d(x, kernel, strides=[1, *layer.strides, 1], padding=layer.padding.upper(),
                                       dilations=list(layer.dilation_rate))
        if bias is not None:
            z = z + bias
        return a, z, lambda g: tf.reshape(g, (tf.shape(g)[0], -1, G, spec.d_out))  # channel c*mult + m
    # convolution
    z = _conv(x, kernel, layer)
    if bias is not None:
        z = z + bias
    return _patches(x, layer), z, lambda g: tf.reshape(g, (tf.shape(g)[0], -1, spec.d_out))


def _activation(layer, z):
    act = getattr(layer, "activation", None)
    return z if act is None else act(z)


# ------------------------------------------------------------------------------------------ the traversal
def _accepts_training(layer) -> bool:
    """Whether ``layer.call`` takes ``training=``: Keras' own rule (the flag it sets from the call signature at
    construction, which its functional models also consult), the signature itself as a fallback."""
    flag = getattr(layer, "_call_has_training_arg", None)
    if flag is None:
        try:
            flag = "training" in inspect.signature(layer.call).parameters
        except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
            flag = False
    return bool(flag)


def _is_graph_model(m) -> bool:
    from keras.src.models.functional import Functional

    return isinstance(m, Functional) or (isinstance(m, keras.Sequential) and getattr(m, "_functional", None))


# ------------------------------------------------------------------------------------------ nested layers
_LOCK = threading.RLock()
_INSTALLED: dict[int, list] = {}   # id(layer) -> [layer, refcount, previous instance ``call`` or _ABSENT]
_ACTIVE = threading.local()        # .stack: handler dicts {id(layer): fn} of this thread's open scopes
_ABSENT = object()


def _forwarder(layer, original):
    def call(*args, **kwargs):
        for handlers in reversed(getattr(_ACTIVE, "stack", ())):
            fn = handlers.get(id(layer))
            if fn is not None:
                return fn(*args, **kwargs)
        return original(*args, **kwargs)

    call._tfpartials_forwarder = True
    return call


@contextmanager
def intercepted_calls(handlers: dict) -> Iterator[None]:
    """Route ``layer.call`` to ``handlers[id(layer)] = (layer, fn)`` for the calling thread, inside the scope.

    Other threads and code outside the scope reach the layer's own ``call``; the forwarder is removed (and any
    ``call`` the instance held before restored) when the last scope using that layer exits, error or not.
    """
    with _LOCK:
        for key, (layer, _) in handlers.items():
            entry = _INSTALLED.get(key)
            if entry is None:
                previous = layer.__dict__.get("call", _ABSENT)
                object.__setattr__(layer, "call", _forwarder(layer, layer.call))
                _INSTALLED[key] = [layer, 1, previous]
            else:
                entry[1] += 1
    stack = getattr(_ACTIVE, "stack", None)
    if stack is None:
        stack = _ACTIVE.stack = []
    stack.append({key: fn for key, (_, fn) in handlers.items()})
    try:
        yield
    finally:
        stack.pop()
        with _LOCK:
            for key in handlers:
                entry = _INSTALLED[key]
                entry[1] -= 1
                if entry[1] == 0:
                    layer, _, previous = _INSTALLED.pop(key)
                    if previous is _ABSENT:
                        object.__delattr__(layer, "call")
                    else:
                        object.__setattr__(layer, "call", previous)


def _tap_call(spec: Tapped, values: dict, on_tap):
    """The tapped layer's call: its linear map on the parameter tensors, the pre-activation handed to on_tap."""
    op = spec.layer

    def call(inp, *args, **kwargs):
        if args or isinstance(inp, list | tuple | dict):
            raise InputError(f"KFAC: layer {spec.name!r} is called with several inputs; not supported")
        kernel = values[id(op.embeddings if spec.kind == "embedding" else op.kernel)]
        bias = values[id(op.bias)] if getattr(op, "bias", None) is not None else None
        a, z, to_rows = _linear(spec, inp, kernel, bias)
        z = on_tap(spec, a, z, to_rows)
        return _activation(op, z)

    return call


def tapped_forward(model, values: dict, x, tapped: dict, on_tap, training: bool = False):
    """Outputs of ``model`` at ``values`` (``id(variable) -> tensor``) with each tapped layer evaluated as its
    linear map; ``on_tap(spec, a, z, to_rows)`` sees the features and the pre-activation (and must return z,
    e.g. after ``tape.watch``), once per call of the layer. Layers run inside another layer's ``call``
    (``spec.inside``) are intercepted for the duration (:func:`intercepted_calls`)."""
    nested = {key: (s.layer, _tap_call(s, values, on_tap)) for key, s in tapped.items() if s.inside is not None}
    if not nested:
        return _forward(model, values, x, tapped, on_tap, training)
    with intercepted_calls(nested):
        return _forward(model, values, x, tapped, on_tap, training)


def _forward(model, values: dict, x, tapped: dict, on_tap, training: bool):
    def own(layer, trainable: bool):
        vs = layer.trainable_variables if trainable else layer.non_trainable_variables
        return [values[id(v)] for v in vs]

    def wrap(op):
        spec = tapped.get(id(op))
        if spec is not None and spec.inside is None:
            return _tap_call(spec, values, on_tap)
        if isinstance(op, keras.Model):
            return lambda inp, *a, **k: _forward(op, values, inp, tapped, on_tap, training)
        if isinstance(op, keras.layers.Layer):
            extra = {"training": training} if _accepts_training(op) else {}
            if op.variables:
                return lambda *a, **k: op.stateless_call(own(op, True), own(op, False), *a, **{**k, **extra})[0]
            return lambda *a, **k: op(*a, **{**k, **extra})
        return op

    if isinstance(model, keras.Sequential) and getattr(model, "_functional", None) is None:
        out = x
        for layer in model.layers:
            out = wrap(layer)(out)
        return out
    if not _is_graph_model(model):
        raise InputError(f"KFAC: model {model.name!r} is a subclassed model; its layers cannot be re-evaluated "
                         "one by one (build it with the Sequential or functional API)")
    fn = model._functional if isinstance(model, keras.Sequential) else model
    inputs = fn._standardize_inputs(x)
    outputs = fn._run_through_graph(inputs, operation_fn=wrap)
    if isinstance(outputs, list | tuple) and len(outputs) == 1:
        return outputs[0]
    return outputs
