"""Vectorisation (pfor) rules for convolutions whose filter varies over the vectorised axis.

TensorFlow's pfor converts ``Conv2D`` and ``Conv2DBackpropInput`` only when the filter is the same in every
iteration, ``Conv2DBackpropFilter`` with a varying input only in a while loop, and the depthwise ops only when
every operand varies. Many-vector Hessian products (tangents on the filters) and per-example gradients (a
varying input and a varying output gradient) hit exactly those cases, so a CNN's derivatives ran one vector at
a time. :func:`install` wraps TensorFlow's converters for these op types with rules that build one batched op
instead (K is the number of iterations, NHWC layout):

* ``Conv2D(x, W[K])``: fold K into the output channels, ``W -> (kh, kw, ci, K*co)``, one convolution.
* ``Conv2DBackpropInput(sizes, W[K], dy)``: fold K into the input channels, ``W -> (kh, kw, K*ci, co)``.
* ``Conv2DBackpropFilter(x[K], sizes, dy)``: fold K into the input's channels, ``x -> (B, H, W, K*ci)``.
* ``Conv2DBackpropFilter(x[K], sizes, dy[K])``: im2col, ``dW[k] = patches(x[k])^T dy[k]`` as one batched matmul
  (:func:`tfpartials._im2col.patches` gives the ``(kh, kw, ci)`` patches; SAME, VALID and explicit padding).
* ``Conv2D(x[K], W[K])``: im2col as well, ``y[k] = patches(x[k]) W[k]``.
* ``DepthwiseConv2dNative*``: a loop-invariant operand is folded into (or broadcast over) the channels;
  ``DepthwiseConv2dNativeBackpropFilter(x[K], sizes, dy[K])`` (per-example gradients) as one product and
  sum over positions per kernel offset.

Every other case (NCHW, both operands varying in ``Conv2DBackpropInput``, shapes unknown at trace time, ...)
is handed to TensorFlow's own converter unchanged, so nothing that vectorised before changes. When TensorFlow's
private pfor internals are not as expected, :func:`install` installs nothing and returns False: pfor then
keeps its own converters (and its while-loop fallback).
"""

from __future__ import annotations

import threading

from . import _im2col
from ._backend import tf

__all__ = ["install", "installed", "COVERED_OPS"]

COVERED_OPS = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "DepthwiseConv2dNative",
               "DepthwiseConv2dNativeBackpropInput", "DepthwiseConv2dNativeBackpropFilter")

_LOCK = threading.Lock()
_STATE: dict[str, bool] = {}
_MARK = "_tfpartials_pfor_rule"


# -- helpers --------------------------------------------------------------------------------------------------
def _attrs(pfor_input) -> dict | None:
    """The convolution attributes, or None when the layout is not NHWC."""
    fmt = pfor_input.get_attr("data_format")
    if (fmt.decode() if isinstance(fmt, bytes) else fmt) != "NHWC":
        return None
    padding = pfor_input.get_attr("padding")
    out = {"strides": list(pfor_input.get_attr("strides")),
           "padding": padding.decode() if isinstance(padding, bytes) else padding,
           "dilations": list(pfor_input.get_attr("dilations"))}
    try:
        out["explicit_paddings"] = list(pfor_input.get_attr("explicit_paddings"))
    except ValueError:  # the depthwise ops of some versions have no such attribute
        out["explicit_paddings"] = []
    return out


def _plain(pfor_input) -> bool:
    return not any(inp.is_sparse_stacked for inp in pfor_input.inputs)


def _stacked(pfor_input) -> tuple[bool, ...]:
    return tuple(bool(inp.is_stacked) for inp in pfor_input.inputs)


def _conv_kw(a: dict) -> dict:
    return {"strides": a["strides"], "padding": a["padding"], "explicit_paddings": a["explicit_paddings"],
            "data_format": "NHWC", "dilations": a["dilations"]}


def _static_ints(t, n: int) -> list[int] | None:
    value = tf.get_static_value(t)
    if value is None or len(value) != n:
        return None
    return [int(v) for v in value]


def _explicit_pads(a: dict) -> list[list[int]] | None:
    """``[[top, bottom], [left, right]]`` of EXPLICIT padding, or None when it pads the batch or channels."""
    p = a["explicit_paddings"]
    if len(p) != 8 or any(p[:2]) or any(p[6:]):
        return None
    return [[p[2], p[3]], [p[4], p[5]]]


def _patches(x, kh: int, kw: int, a: dict):
    """``(N, H', W', kh*kw*ci)`` patches of ``x`` (N, H, W, ci) as a convolution with attributes ``a`` sees them."""
    padding = a["padding"]
    if a["strides"][0] != 1 or a["strides"][3] != 1 or a["dilations"][0] != 1 or a["dilations"][3] != 1:
        return None
    if padding == "EXPLICIT":
        pads = _explicit_pads(a)
        if pads is None:
            return None
        x = tf.pad(x, [[0, 0], *pads, [0, 0]])
        padding = "VALID"
    if padding not in ("SAME", "VALID"):
        return None
    s, d = a["strides"], a["dilations"]
    return _im2col.patches(x, (kh, kw), (s[1], s[2]), (d[1], d[2]), padding)


def _merge_leading(x):
    """``(K, B, ...) -> (K*B, ...)``, keeping the static trailing shape (the patches need H, W and ci)."""
    tail = x.shape[2:]
    if tail.is_fully_defined():
        return tf.reshape(x, [-1, *tail.as_list()])
    return tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0))


# -- Conv2D ---------------------------------------------------------------------------------------------------
def _conv2d(pfor_input):
    a = _attrs(pfor_input)
    if a is None or not _plain(pfor_input):
        return None
    x_st, w_st = _stacked(pfor_input)
    x, w = pfor_input.inputs[0].t, pfor_input.inputs[1].t
    if w_st and not x_st:  # W[K]: K folded into the output channels
        s = tf.shape(w)
        k, co = s[0], s[4]
        w2 = tf.reshape(tf.transpose(w, [1, 2, 3, 0, 4]), tf.stack([s[1], s[2], s[3], k * co]))
        y = tf.raw_ops.Conv2D(input=x, filter=w2, **_conv_kw(a))
        ys = tf.shape(y)
        y = tf.reshape(y, tf.stack([ys[0], ys[1], ys[2], k, co]))
        return tf.transpose(y, [3, 0, 1, 2, 4])
    if w_st and x_st:  # both: im2col and one batched matmul
        if w.shape.rank != 5 or w.shape[1] is None or w.shape[2] is None:
            return None
        kh, kw = int(w.shape[1]), int(w.shape[2])
        xs = tf.shape(x)
        p = _patches(_merge_leading(x), kh, kw, a)
        if p is None:
            return None
        ps, ws = tf.shape(p), tf.shape(w)
        rows = tf.reshape(p, tf.stack([xs[0], -1, ps[3]]))
        y = tf.matmul(rows, tf.reshape(w, tf.stack([ws[0], -1, ws[4]])))
        return tf.reshape(y, tf.stack([xs[0], xs[1], ps[1], ps[2], ws[4]]))
    return None


def _conv2d_backprop_input(pfor_input):
    a = _attrs(pfor_input)
    if a is None or not _plain(pfor_input):
        return None
    sizes_st, w_st, dy_st = _stacked(pfor_input)
    if sizes_st or not w_st or dy_st:
        return None
    sizes, w, dy = (inp.t for inp in pfor_input.inputs)
    s = tf.shape(w)
    k, ci = s[0], s[3]
    w2 = tf.reshape(tf.transpose(w, [1, 2, 0, 3, 4]), tf.stack([s[1], s[2], k * ci, s[4]]))
    sizes2 = sizes * tf.concat([tf.ones([3], sizes.dtype), tf.reshape(tf.cast(k, sizes.dtype), [1])], 0)
    dx = tf.raw_ops.Conv2DBackpropInput(input_sizes=sizes2, filter=w2, out_backprop=dy, **_conv_kw(a))
    xs = tf.shape(dx)
    dx = tf.reshape(dx, tf.stack([xs[0], xs[1], xs[2], k, ci]))
    return tf.transpose(dx, [3, 0, 1, 2, 4])


def _conv2d_backprop_filter(pfor_input):
    a = _attrs(pfor_input)
    if a is None or not _plain(pfor_input):
        return None
    x_st, sizes_st, dy_st = _stacked(pfor_input)
    if sizes_st or not x_st:
        return None  # a loop-invariant input: TensorFlow's rule folds dy's stack into the output channels
    x, sizes, dy = (inp.t for inp in pfor_input.inputs)
    if not dy_st:  # x[K]: K folded into the input channels
        xs = tf.shape(x)
        k, ci = xs[0], xs[4]
        x2 = tf.reshape(tf.transpose(x, [1, 2, 3, 0, 4]), tf.stack([xs[1], xs[2], xs[3], k * ci]))
        sizes2 = sizes * tf.concat([tf.ones([2], sizes.dtype), tf.reshape(tf.cast(k, sizes.dtype), [1]),
                                    tf.ones([1], sizes.dtype)], 0)
        dw = tf.raw_ops.Conv2DBackpropFilter(input=x2, filter_sizes=sizes2, out_backprop=dy, **_conv_kw(a))
        ws = tf.shape(dw)
        dw = tf.reshape(dw, tf.stack([ws[0], ws[1], k, ci, ws[3]]))
        return tf.transpose(dw, [2, 0, 1, 3, 4])
    fsize = _static_ints(sizes, 4)  # both vary: im2col, dW[k] = patches(x[k])^T dy[k]
    if fsize is None:
        return None
    kh, kw, ci, co = fsize
    xs = tf.shape(x)
    p = _patches(_merge_leading(x), kh, kw, a)
    if p is None:
        return None
    rows = tf.reshape(p, tf.stack([xs[0], -1, kh * kw * ci]))
    grads = tf.reshape(dy, tf.stack([xs[0], -1, co]))
    dw = tf.matmul(rows, grads, transpose_a=True)
    return tf.reshape(dw, tf.stack([xs[0], kh, kw, ci, co]))


# -- depthwise ------------------------------------------------------------------------------------------------
def _fold_batch(t):
    """``(K, B, ...) -> (K*B, ...)``."""
    return tf.reshape(t, tf.concat([[-1], tf.shape(t)[2:]], 0))


def _unfold_batch(t, k):
    """``(K*B, ...) -> (K, B, ...)``."""
    return tf.reshape(t, tf.concat([tf.reshape(k, [1]), [-1], tf.shape(t)[1:]], 0))


def _depthwise(pfor_input):
    a = _attrs(pfor_input)
    if a is None or not _plain(pfor_input):
        return None
    x_st, w_st = _stacked(pfor_input)
    x, w = pfor_input.inputs[0].t, pfor_input.inputs[1].t
    if x_st and not w_st:  # x[K]: K folded into the batch
        k = tf.shape(x)[0]
        y = tf.raw_ops.DepthwiseConv2dNative(input=_fold_batch(x), filter=w, **_conv_kw(a))
        return _unfold_batch(y, k)
    if not w_st or x_st:
        return None  # both vary: TensorFlow's rule folds K into the channels
    s = tf.shape(w)  # W[K] (K, kh, kw, c, m): K folded into the channel multiplier
    k, c, m = s[0], s[3], s[4]
    w2 = tf.reshape(tf.transpose(w, [1, 2, 3, 0, 4]), tf.stack([s[1], s[2], c, k * m]))
    y = tf.raw_ops.DepthwiseConv2dNative(input=x, filter=w2, **_conv_kw(a))
    ys = tf.shape(y)
    y = tf.reshape(y, tf.stack([ys[0], ys[1], ys[2], c, k, m]))
    y = tf.transpose(y, [4, 0, 1, 2, 3, 5])
    return tf.reshape(y, tf.stack([k, ys[0], ys[1], ys[2], c * m]))


def _depthwise_backprop_input(pfor_input):
    a = _attrs(pfor_input)
    if a is None or not _plain(pfor_input):
        return None
    sizes_st, w_st, dy_st = _stacked(pfor_input)
    if sizes_st or (w_st and dy_st):
        return None
    sizes, w, dy = (inp.t for inp in pfor_input.inputs)
    if dy_st:  # dy[K]: K folded into the batch
        k = tf.shape(dy)[0]
        sizes2 = sizes * tf.concat([tf.reshape(tf.cast(k, sizes.dtype), [1]), tf.ones([3], sizes.dtype)], 0)
        dx = tf.raw_ops.DepthwiseConv2dNativeBackpropInput(input_sizes=sizes2, filter=w,
                                                           out_backprop=_fold_batch(dy), **_conv_kw(a))
        return _unfold_batch(dx, k)
    pfor_input.stack_inputs(stack_indices=[2])  # W[K]: dy broadcast over K, then TensorFlow's rule
    return None


def _depthwise_filter_both_vary(x, sizes, dy, a):
    """``dW[k] = sum_{b,h,w} window_ij(x[k])[b,h,w,c] dy[k][b,h,w,c*m+mm]`` for each kernel offset (i, j): the
    per-iteration filter gradient as kh*kw products and sums over positions, with static shapes; None when
    they are unknown. (TensorFlow's rule folds K into the channels of one batch-1 op, which oneDNN runs
    about 10x slower than these sums on MobileNetV2's layers.)"""
    fsize = _static_ints(sizes, 4)
    if fsize is None or x.shape.rank != 5 or dy.shape.rank != 5:
        return None
    if not (x.shape[2:].is_fully_defined() and dy.shape[2:].is_fully_defined()):
        return None
    kh, kw, c, m = fsize
    s, d = a["strides"], a["dilations"]
    if s[0] != 1 or s[3] != 1 or d[0] != 1 or d[3] != 1 or x.shape[4] != c or dy.shape[4] != c * m:
        return None
    H, W = int(x.shape[2]), int(x.shape[3])
    ho, wo = int(dy.shape[2]), int(dy.shape[3])
    if a["padding"] == "SAME":
        pads = [_im2col.same_pads(H, kh, s[1], d[1]), _im2col.same_pads(W, kw, s[2], d[2])]
    elif a["padding"] == "VALID":
        pads = [[0, 0], [0, 0]]
    elif a["padding"] == "EXPLICIT":
        pads = _explicit_pads(a)
    else:
        return None
    if pads is None:
        return None
    xp = tf.pad(x, [[0, 0], [0, 0], pads[0], pads[1], [0, 0]]) if any(map(any, pads)) else x
    g = tf.reshape(dy, tf.concat([tf.shape(dy)[:2], [ho, wo, c, m]], 0))
    rows = []
    for i in range(kh):
        for j in range(kw):
            top, left = i * d[1], j * d[2]
            window = xp[:, :, top:top + (ho - 1) * s[1] + 1:s[1], left:left + (wo - 1) * s[2] + 1:s[2], :]
            rows.append(tf.reduce_sum(window[..., None] * g, axis=[1, 2, 3]))  # (K, c, m)
    return tf.reshape(tf.stack(rows, axis=1), tf.concat([tf.shape(dy)[:1], [kh, kw, c, m]], 0))


def _depthwise_backprop_filter(pfor_input):
    a = _attrs(pfor_input)
    if a is None or not _plain(pfor_input):
        return None
    x_st, sizes_st, dy_st = _stacked(pfor_input)
    if sizes_st:
        return None
    if x_st and dy_st:  # per-example filter gradients
        return _depthwise_filter_both_vary(*(inp.t for inp in pfor_input.inputs), a)
    if x_st:  # x[K]: dy broadcast over K, then TensorFlow's rule
        pfor_input.stack_inputs(stack_indices=[2])
        return None
    x, sizes, dy = (inp.t for inp in pfor_input.inputs)  # dy[K] (K, B, H', W', c*m): K folded into the multiplier
    fsize = _static_ints(sizes, 4)
    if fsize is None:
        pfor_input.stack_inputs(stack_indices=[0])
        return None
    kh, kw, c, m = fsize
    ds = tf.shape(dy)
    k = ds[0]
    dy2 = tf.reshape(dy, tf.stack([k, ds[1], ds[2], ds[3], c, m]))
    dy2 = tf.reshape(tf.transpose(dy2, [1, 2, 3, 4, 0, 5]), tf.stack([ds[1], ds[2], ds[3], c * k * m]))
    sizes2 = tf.stack([kh, kw, c, k * m])
    dw = tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(input=x, filter_sizes=sizes2, out_backprop=dy2,
                                                        **_conv_kw(a))
    dw = tf.reshape(dw, tf.stack([kh, kw, c, k, m]))
    return tf.transpose(dw, [3, 0, 1, 2, 4])


_RULES = {"Conv2D": _conv2d, "Conv2DBackpropInput": _conv2d_backprop_input,
          "Conv2DBackpropFilter": _conv2d_backprop_filter, "DepthwiseConv2dNative": _depthwise,
          "DepthwiseConv2dNativeBackpropInput": _depthwise_backprop_input,
          "DepthwiseConv2dNativeBackpropFilter": _depthwise_backprop_filter}

def _wrapped(rule, original, wrap):
    """pfor converter: ``rule``'s vectorised output (one stacked tensor), else TensorFlow's ``original``."""

    @tf.autograph.experimental.do_not_convert
    def converter(pfor_input):
        out = rule(pfor_input)
        return original(pfor_input) if out is None else [wrap(out, True)]

    setattr(converter, _MARK, True)
    converter.__wrapped__ = original
    converter.__name__ = f"tfpartials_{getattr(rule, '__name__', 'rule').lstrip('_')}"
    return converter


def _install_into(pfor) -> bool:
    """Wrap the converters in ``pfor`` (TensorFlow's pfor module) when its internals are as expected."""
    registry = getattr(pfor, "_pfor_converter_registry", None)
    wrap = getattr(pfor, "wrap", None)
    if not (isinstance(registry, dict) and hasattr(pfor, "_PforInput") and callable(wrap)
            and all(callable(registry.get(op)) for op in _RULES)):
        return False
    for op, rule in _RULES.items():
        if not getattr(registry[op], _MARK, False):
            registry[op] = _wrapped(rule, registry[op], wrap)
    return True


def install() -> bool:
    """Wrap pfor's convolution converters with the rules above (idempotent, thread-safe).

    Returns True when the rules are in force, False when TensorFlow's private pfor internals are not as
    expected (then nothing is changed and pfor keeps its own converters).
    """
    with _LOCK:
        if "installed" not in _STATE:
            try:
                from tensorflow.python.ops.parallel_for import pfor
            except ImportError:  # pragma: no cover - a TensorFlow without this private module
                pfor = None
            _STATE["installed"] = pfor is not None and _install_into(pfor)
        return _STATE["installed"]


def installed() -> bool:
    """Whether :func:`install` has put the rules in force (without installing them)."""
    return _STATE.get("installed", False)
