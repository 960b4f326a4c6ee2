"""What every derivative tfpartials traces runs inside: exact second derivatives, no native crashes, quiet logs.

TensorFlow's own kernels and gradient rules are not all fit for higher derivatives or vectorisation, and the
failures are silent (wrong numbers) or fatal (a segfault). :func:`derivative_scope` routes around the ones the
soundness audit (``tests/soundness``, ``docs/soundness.md``) found, only while tfpartials traces its own
functions; the user's training code and models are untouched.

* **Moments.** ``tf.nn.moments`` (and so Keras' ``ops.moments``: LayerNormalization, GroupNormalization,
  BatchNormalization with ``training=True``) takes the variance around ``stop_gradient(mean)``. First
  derivatives are unchanged (the gradient through the mean is zero there) but every second derivative loses a
  term. In scope, moments are computed without the ``stop_gradient``: the same values, exact derivatives.
* **GELU, leaky ReLU and softsign.** ``tf.nn.gelu`` casts its Python-float constants through float32 and
  ``tf.nn.leaky_relu`` holds its slope as a float32 attribute, so a float64 model computes a slightly different
  function (1e-9 relative); ``tf.nn.softsign``'s gradient op has no gradient, so
  its second derivative raises. In scope, Keras' ``gelu`` and ``leaky_relu`` use constants of the input's dtype and ``softsign``
  is ``x / (1 + |x|)``: the same function, exact derivatives of every order.
* **Broadcast batch matmul.** oneDNN's ``BatchMatMulV2`` kernel crashes the process (SIGSEGV / abort) for some
  broadcasting shapes that ``tf.vectorized_map`` creates from an attention projection, e.g. ``(8, 1, 6, 8) @
  (8, 8)``. In scope, pfor converts ``BatchMatMulV2`` to a plain ``MatMul`` of the flattened rows when one side
  is a matrix shared by every batch entry, and to a batch matmul of equal, explicit batch shapes otherwise.
* **Logs.** TensorFlow logs pfor's internal fallbacks (``ERROR:tensorflow:Got error while pfor was converting
  op ...``, hundreds of lines) and retracing notes on its Python logger; :func:`captured_tf_logs` keeps them
  off the console and hands them to the caller, which reports what matters once, in one line.

The patches are reference-counted and guarded by a lock, so nested scopes and threads are safe.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ._backend import tf

__all__ = ["derivative_scope", "captured_tf_logs", "short_reason", "TFLogNotes", "traced", "Traced",
           "unaudited_layer", "trust_vectorization",
           "pfor_looped_layers"]

_LOCK = threading.RLock()
_DEPTH = 0
_SAVED: list[tuple[object, str, object]] = []


# -- exact moments ------------------------------------------------------------------------------------------------
def _exact_moments(x, axes, shift=None, keepdims=False, name=None, keep_dims=None):
    """``tf.nn.moments`` without ``stop_gradient`` on the mean (same values, exact higher derivatives)."""
    if keep_dims is not None:
        keepdims = keep_dims
    with tf.name_scope(name or "moments"):
        y = tf.cast(x, tf.float32) if x.dtype == tf.float16 else x
        mean = tf.reduce_mean(y, axes, keepdims=True)
        variance = tf.reduce_mean(tf.math.squared_difference(y, mean), axes, keepdims=True)
        if not keepdims:
            mean, variance = tf.squeeze(mean, axes), tf.squeeze(variance, axes)
        if x.dtype == tf.float16:
            mean, variance = tf.cast(mean, tf.float16), tf.cast(variance, tf.float16)
        return mean, variance


def _keras_compute_moments(x, axes, keepdims):
    return _exact_moments(x, axes, keepdims=keepdims)


def _exact_gelu(x, approximate=True):
    """GELU with its constants in the input's dtype (``tf.nn.gelu`` rounds them through float32 first)."""
    x = tf.convert_to_tensor(x)
    if approximate:
        c = tf.constant(0.044715, x.dtype)
        return 0.5 * x * (1.0 + tf.tanh(tf.constant(0.7978845608028654, x.dtype) * (x + c * x * x * x)))
    return 0.5 * x * tf.math.erfc(-x * tf.constant(0.7071067811865476, x.dtype))


def _leaky_relu(x, negative_slope=0.2):
    """``tf.nn.leaky_relu`` holds the slope as a float32 op attribute; here it has the input's dtype."""
    x = tf.convert_to_tensor(x)
    return tf.where(x >= 0, x, tf.constant(negative_slope, x.dtype) * x)


def _softsign(x):
    """``x / (1 + |x|)``: the same values as ``tf.nn.softsign``, whose gradient op has no gradient of its own."""
    x = tf.convert_to_tensor(x)
    return x / (1.0 + tf.abs(x))


# -- crash-free batch matmul under pfor ----------------------------------------------------------------------------
def _safe_batch_matmul(pfor_input):
    """pfor rule for ``BatchMatMulV2`` that never hands oneDNN a broadcasting batch matmul."""
    from tensorflow.python.ops.parallel_for.pfor import wrap

    pfor_input.expanddim_inputs_for_broadcast()
    x = pfor_input.input(0)[0]
    y = pfor_input.input(1)[0]
    if pfor_input.get_attr("adj_x"):
        x = tf.linalg.adjoint(x)
    if pfor_input.get_attr("adj_y"):
        y = tf.linalg.adjoint(y)
    xs, ys = tf.shape(x), tf.shape(y)
    if y.shape.rank is not None and (y.shape.rank == 2 or all(d == 1 for d in y.shape[:-2])):
        # one matrix shared by every batch entry: rows of x times that matrix
        w = tf.reshape(y, ys[-2:])
        rows = tf.matmul(tf.reshape(x, [-1, xs[-1]]), w)
        out = tf.reshape(rows, tf.concat([xs[:-1], ys[-1:]], 0))
        return wrap(out, True)
    batch = tf.broadcast_dynamic_shape(xs[:-2], ys[:-2])
    xb = tf.broadcast_to(x, tf.concat([batch, xs[-2:]], 0))
    yb = tf.broadcast_to(y, tf.concat([batch, ys[-2:]], 0))
    out = tf.matmul(tf.reshape(xb, tf.concat([[-1], xs[-2:]], 0)), tf.reshape(yb, tf.concat([[-1], ys[-2:]], 0)))
    return wrap(tf.reshape(out, tf.concat([batch, xs[-2:-1], ys[-1:]], 0)), True)


def _patches() -> list[tuple[object, str, object]]:
    from keras.src.backend.tensorflow import nn as keras_tf_nn
    from tensorflow.python.ops.parallel_for import pfor

    out: list[tuple[object, str, object]] = [
        (keras_tf_nn, "_compute_moments", _keras_compute_moments),
        (tf.nn, "moments", _exact_moments),
        (keras_tf_nn, "gelu", _exact_gelu),
        (keras_tf_nn, "softsign", _softsign),
        (keras_tf_nn, "leaky_relu", _leaky_relu),
    ]
    registry = pfor._pfor_converter_registry
    for op in ("BatchMatMulV2", "BatchMatMulV3"):
        if op in registry:
            out.append((registry, op, _safe_batch_matmul))
    return out


def _set(target, name, value) -> object:
    if isinstance(target, dict):
        old = target[name]
        target[name] = value
    else:
        old = getattr(target, name)
        setattr(target, name, value)
    return old


@contextmanager
def derivative_scope() -> Iterator[None]:
    """Trace derivatives with the exactness and crash fixes above in force (re-entrant, thread-safe)."""
    global _DEPTH
    with _LOCK:
        if _DEPTH == 0:
            for target, name, value in _patches():
                _SAVED.append((target, name, _set(target, name, value)))
        _DEPTH += 1
    try:
        yield
    finally:
        with _LOCK:
            _DEPTH -= 1
            if _DEPTH == 0:
                while _SAVED:
                    target, name, old = _SAVED.pop()
                    _set(target, name, old)


# -- TensorFlow's Python logger -----------------------------------------------------------------------------------
class TFLogNotes(logging.Handler):
    """What TensorFlow logged while captured: ops pfor ran in a loop, and every message (for ``--debug``)."""

    def __init__(self, parent: TFLogNotes | None = None):
        super().__init__(logging.DEBUG)
        self.parent = parent
        self.looped: list[str] = []
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.parent is not None:  # nested captures: the enclosing one sees everything too
            self.parent.emit(record)
        self.records.append(record)
        msg = record.getMessage()
        op = None
        if msg.startswith("Using a while_loop for converting "):
            op = msg[len("Using a while_loop for converting "):].split(" ", 1)[0]
        elif "uses a while_loop" in msg:
            op = msg.split(" ", 1)[0]
        elif msg.startswith("Got error while pfor was converting op"):
            m = re.search(r'op:\s*"([A-Za-z0-9_]+)"', msg)
            op = m.group(1) if m else None
        if op and op not in self.looped:
            self.looped.append(op)


def _debugging() -> bool:
    return os.environ.get("TFPARTIALS_DEBUG", "") not in ("", "0")


@contextmanager
def captured_tf_logs() -> Iterator[TFLogNotes]:
    """Keep TensorFlow's Python log records off the console while tracing; hand them to the caller.

    With ``TFPARTIALS_DEBUG=1`` (the CLI's ``--debug``) they are also passed on to TensorFlow's own handlers.
    """
    logger = logging.getLogger("tensorflow")
    with _LOCK:
        parent = next((h for h in logger.handlers if isinstance(h, TFLogNotes)), None)
        notes = TFLogNotes(parent)
        old_level, old_propagate, old_handlers = logger.level, logger.propagate, list(logger.handlers)
        logger.handlers = [notes, *old_handlers] if _debugging() else [notes]
        logger.propagate = _debugging() and old_propagate
        logger.setLevel(logging.DEBUG)
    try:
        yield notes
    finally:
        with _LOCK:
            logger.handlers = old_handlers
            logger.propagate = old_propagate
            logger.setLevel(old_level)


# -- one line out of a long TensorFlow error ----------------------------------------------------------------------
def short_reason(exc: BaseException | None, limit: int = 240) -> str:
    """The informative line of a (possibly very long) TensorFlow/Keras error, as ``Type: message``."""
    if exc is None:
        return "no reason given"
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(exc).splitlines()]
    cut = next((i for i, ln in enumerate(lines) if ln.startswith("Arguments received by")), len(lines))
    lines = [ln for ln in lines[:cut] if ln and not ln.startswith("\u2022")]  # Keras' argument bullets: no cause
    name = type(exc).__name__
    text = f"{name}: {lines[-1]}" if lines else name
    for i in range(len(lines) - 1, -1, -1):
        if re.match(r"^\w*(Error|Exception)\b.*:", lines[i]):
            text = lines[i]
            if text.endswith(".") and i + 1 < len(lines) and not lines[i + 1].startswith("Arguments"):
                text += " " + lines[i + 1]
            break
    else:
        node = next((ln for ln in lines if "No pfor vectorization defined for" in ln), None)
        if node is not None:
            text = f"{name}: {node}"
        elif lines and len(lines) < 4:
            text = f"{name}: {' '.join(lines)}"
    return text[:limit] + ("..." if len(text) > limit else "")


# -- the one way tfpartials compiles a function ----------------------------------------------------------------
class Traced:
    """A ``tf.function`` whose every call and trace runs in :func:`derivative_scope` with logs captured.

    Use :func:`traced` to build one; ``.python_function`` and ``.get_concrete_function`` are passed through.
    """

    def __init__(self, fn, **kwargs):
        # AutoGraph rewrites the Python of every function a trace enters (Keras' own layers included), which
        # costs 25-40% of tracing a real CNN's gradient or Hessian-vector product. Keras 3 layers need none
        # of it (their control flow is ops.cond / while_loop), so a trace first runs without it and only a
        # function that uses a tensor as a Python bool or iterable (a custom layer) is traced again with it.
        self._auto = kwargs.pop("autograph", None)
        self._fn, self._kwargs = fn, kwargs
        self.function = tf.function(fn, autograph=bool(self._auto), **kwargs)

    def _with_autograph(self, exc: Exception) -> bool:
        """Switch to AutoGraph after ``exc`` when it is what tracing without it raises; True if switched."""
        if self._auto is not None or not isinstance(exc, tf.errors.OperatorNotAllowedInGraphError):
            return False
        self._auto = True
        self.function = tf.function(self._fn, autograph=True, **self._kwargs)
        return True

    def __call__(self, *args, **kwargs):
        with derivative_scope(), captured_tf_logs():
            try:
                return self.function(*args, **kwargs)
            except tf.errors.OperatorNotAllowedInGraphError as exc:
                if not self._with_autograph(exc):
                    raise
            return self.function(*args, **kwargs)

    def get_concrete_function(self, *args, **kwargs):
        with derivative_scope(), captured_tf_logs():
            try:
                return self.function.get_concrete_function(*args, **kwargs)
            except tf.errors.OperatorNotAllowedInGraphError as exc:
                if not self._with_autograph(exc):
                    raise
            return self.function.get_concrete_function(*args, **kwargs)

    @property
    def python_function(self):
        return self.function.python_function

    def experimental_get_tracing_count(self) -> int:
        return self.function.experimental_get_tracing_count()


def traced(fn, **kwargs) -> Traced:
    """``tf.function(fn, **kwargs)`` run inside :func:`derivative_scope` (see the module docstring).

    ``autograph`` unset: traced without AutoGraph, and again with it only if the function needs it.
    """
    return Traced(fn, **kwargs)


# -- which models may take a vectorised (pfor) path ------------------------------------------------------------
_TRUSTED: set[type] = set()
_UNTRUSTED_BUILTINS = {"Lambda", "TFSMLayer"}  # built-in classes that run arbitrary user code


def trust_vectorization(*layer_classes: type) -> None:
    """Let ``tf.vectorized_map`` run through these custom layer classes (at your own risk).

    tfpartials vectorises per-example and many-vector computations only through Keras' built-in layers, whose
    ops the soundness audit checks (``docs/soundness.md``): pfor can crash the process on some kernels. Models
    with other layers take the exact one-at-a-time path (and say so once). Call this to vectorise a custom
    layer you have checked, e.g. with :func:`tfpartials.check_gradients` and ``vectorize=False`` as reference.

    Example:
        >>> import warnings, numpy as np, keras, tfpartials as tp
        >>> class Cube(keras.layers.Layer):
        ...     def call(self, x):
        ...         return x ** 3
        >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, kernel_initializer="ones",
        ...                                                                  name="d"), Cube()])
        >>> tp.trust_vectorization(Cube)       # x ** 3 vectorises fine
        >>> x = np.array([[1.0], [2.0]], "float32"); y = np.zeros((2, 1), "float32")
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("error", tp.FallbackWarning)   # no slower path is taken now
        ...     g = tp.per_example_gradients(model, (x, y), loss="mse")
        >>> g["d/bias"][:, 0].tolist()         # d/db (x w + b)^6 at w=1, b=0: 6 x^5
        [6.0, 192.0]
    """
    for cls in layer_classes:
        if not isinstance(cls, type):
            raise TypeError(f"trust_vectorization: expected layer classes, got {type(cls).__name__}")
        _TRUSTED.add(cls)


def _layers(model) -> list:
    if hasattr(model, "_flatten_layers"):
        return list(model._flatten_layers(include_self=True, recursive=True))
    return list(getattr(model, "layers", []))


def unaudited_layer(model) -> str | None:
    """``"name (Class)"`` of the first layer of ``model`` outside the audited built-ins, or None."""
    for layer in _layers(model):
        cls = type(layer)
        if cls in _TRUSTED:
            continue
        builtin = cls.__module__.startswith(("keras.src.", "keras.layers", "keras.models"))
        if not builtin or cls.__name__ in _UNTRUSTED_BUILTINS:
            return f"{layer.name!r} ({cls.__name__})"
    return None


# layers whose parameter derivatives pfor cannot vectorise: it converts their ops to while loops, one per op,
# which costs minutes of tracing on a real CNN (MobileNetV2: 195 s for the first 4 HVPs, against 17 s for an
# exact compiled loop over the vectors, whose later calls are within a few times of the vectorised ones)
_PFOR_LOOPED = ("Conv", "Conv1D", "Conv2D", "Conv3D", "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D",
                "SeparableConv2D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose", "ConvLSTM1D",
                "ConvLSTM2D", "ConvLSTM3D")
# ... except those that tfpartials' own pfor rules (``_pfor_rules``) vectorise: 1-D/2-D, channels-last, ungrouped
_PFOR_RULED = ("Conv1D", "Conv2D", "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D",
               "Conv1DTranspose", "Conv2DTranspose")
PFOR_LOOP_THRESHOLD = 4  # from this many such layers on, the exact loop is tried first for parameter derivatives


def _ruled(layer, names: set[str]) -> bool:
    if not names & set(_PFOR_RULED) or names & {"Conv3D", "Conv3DTranspose"}:
        return False
    if getattr(layer, "data_format", "channels_last") != "channels_last" or getattr(layer, "groups", 1) != 1:
        return False
    from . import _pfor_rules

    return _pfor_rules.install()


def pfor_looped_layers(model, *, ruled: bool = True) -> int:
    """How many layers of ``model`` pfor would run in a while loop when tangents vary their weights.

    With ``ruled=False`` the convolutions that tfpartials' pfor rules vectorise count too: on real CNNs
    (MobileNetV2, a ResNet, 64 examples) vectorising many HVP columns is no faster than the compiled loop once
    traced, and its trace takes about 4x longer, while per-example gradients are 2.5x faster vectorised.
    """
    count = 0
    for layer in _layers(model):
        names = {c.__name__ for c in type(layer).__mro__}
        if names & set(_PFOR_LOOPED) and not (ruled and _ruled(layer, names)):
            count += 1
    return count
