"""The one fallback engine: implementations of the same numbers, best first; the first that compiles is kept.

Vectorised derivatives are fast but TensorFlow cannot build every one for every model: pfor has no rule for
some ops (``DepthwiseConv2dNative`` with a varying filter, ``ResizeBilinear``), forward mode does not run
through a Keras LSTM's loop. Every vectorised computation of tfpartials (HVP and GGN/Fisher kernels, dense
Hessian blocks, per-example gradients, input Jacobians and Hessians, Laplacians) is therefore a
:class:`Fallback` over :class:`Implementation` s of the same numbers — typically vectorised first, an exact
loop last. The engine

* skips vectorised implementations for models with layers outside the audited built-ins
  (:func:`tfpartials._tracing.unaudited_layer`: pfor can crash the process on some kernels);
* traces the first remaining implementation; when tracing raises (no rule, no forward mode) it moves on to
  the next and warns once, naming the op; user errors (:class:`~tfpartials.InputError`) propagate;
* keeps what it learnt in a :class:`FallbackMemo` that engines of one family share (a mode found unavailable
  for one HVP kernel is not tried again by the next; forward mode failing once rules out every forward-mode
  implementation), and warns once per family;
* notes the ops pfor had to run in a while loop (from TensorFlow's captured logs) and says so once.

All of it runs inside :func:`tfpartials._tracing.traced` functions, so TensorFlow's own error dumps never
reach the console.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

from ._backend import tf
from ._checks import InputError
from ._tracing import captured_tf_logs, short_reason, unaudited_layer

__all__ = ["Implementation", "Fallback", "FallbackMemo", "FallbackWarning", "Unsupported", "TRACE_ERRORS",
           "failed_op"]

TRACE_ERRORS = (ValueError, TypeError, NotImplementedError, LookupError, AttributeError,
                tf.errors.InvalidArgumentError, tf.errors.UnimplementedError)
_NO_RULE = re.compile(r"No pfor vectorization defined for (\w+)(?:\s+name: \"([^\"]+)\")?")


class FallbackWarning(UserWarning):
    """A faster differentiation mode could not be built for this model; a slower exact one is used.

    The numbers are the same; only the speed differs. Each distinct message is given once per process.

    Example:
        >>> import warnings, numpy as np, keras, tfpartials as tp
        >>> class Cubed(keras.layers.Layer):        # a custom layer: not audited for vectorisation
        ...     def call(self, x):
        ...         return x ** 3
        >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, kernel_initializer="ones",
        ...                                                                  name="d"), Cubed()])
        >>> x = np.array([[1.0], [2.0]], "float32"); y = np.zeros((2, 1), "float32")
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     g = tp.per_example_gradients(model, (x, y), loss="mse")
        >>> [w.category.__name__ for w in caught]
        ['FallbackWarning']
        >>> g["d/bias"][:, 0].tolist()              # still exact: d/db (x w + b)^6 at w=1, b=0 is 6 x^5
        [6.0, 192.0]
    """


class Unsupported(InputError):
    """TensorFlow cannot compile this derivative for the model's ops (e.g. forward mode through an LSTM)."""


class Implementation(NamedTuple):
    """One way to compute a quantity.

    Attributes:
        name: what the user reads in a warning, e.g. ``"forward-over-reverse (vectorised)"``.
        build: returns the Python function to compile.
        vectorized: uses ``tf.vectorized_map`` (pfor); skipped for models with unaudited layers.
        forward: uses forward-mode differentiation (TensorFlow cannot run it through some ops).
    """

    name: str
    build: Callable[[], Callable]
    vectorized: bool = False
    forward: bool = False


class FallbackMemo:
    """What the engines of one family learnt: implementations that cannot be built, and warnings given."""

    def __init__(self):
        self.failed: set[str] = set()
        self.warned: set[str] = set()
        self.forward_error: Exception | None = None
        # (implementation, variant, compiled function) run once already: later calls skip the log capture
        # (engines built per call, like the public per-example gradients, share it through the memo)
        self.ready: set[tuple] = set()


def failed_op(exc: BaseException | None) -> str | None:
    """The op a pfor conversion error names (``"Op (node name)"``), or None."""
    m = _NO_RULE.search(str(exc or ""))
    if not m:
        return None
    op, node = m.group(1), m.group(2)
    return f"{op} (node {re.sub(r'^loop_body/', '', node)})" if node else op


def _reason(exc: BaseException) -> str:
    op = failed_op(exc)
    return f"TensorFlow has no vectorisation rule for op {op}" if op else short_reason(exc)


def _user_stacklevel() -> int:
    """stacklevel for warnings.warn that points at the first frame outside this package."""
    import os
    import sys

    root = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(root):
        frame, level = frame.f_back, level + 1
    return level


class Fallback:
    """A computation with several exact implementations, best first (see the module docstring).

    Args:
        what: the quantity, for messages (``"Hessian-vector products"``).
        implementations: best first.
        model: the Keras model computed on (for the audited-layer rule).
        compile: ``(implementation) -> callable``: compiles one implementation (cached by the caller).
        memo: shared with other engines of the same family; a new one by default.
        announce: warn (:class:`FallbackWarning`) when a slower implementation takes over.
        exhausted: when the last implementation fails: ``"raise"`` re-raises its error, ``"unsupported"``
            raises :class:`Unsupported` naming the quantity and the reason.
        variant_of: ``(args) -> key`` of argument variants traced separately (e.g. one vector, traced without
            pfor, vs many); an implementation is re-checked for each variant on its first call.
        errors: the exception types that mean "this implementation cannot be built" (default
            :data:`TRACE_ERRORS`).
    """

    def __init__(self, what: str, implementations: Sequence[Implementation], *, model, compile: Callable,
                 memo: FallbackMemo | None = None, announce: bool = True, exhausted: str = "raise",
                 variant_of: Callable[[tuple], Hashable] | None = None,
                 errors: tuple[type[BaseException], ...] = TRACE_ERRORS):
        self.what = what
        self.errors = errors
        self.variant_of = variant_of
        self.memo = memo or FallbackMemo()
        self.announce = announce
        self.exhausted = exhausted
        self._compile = compile
        self._compiled: dict[str, Callable] = {}
        impls = list(implementations)
        custom = unaudited_layer(model) if any(i.vectorized for i in impls) else None
        if custom is not None and any(not i.vectorized for i in impls):
            impls = [i for i in impls if not i.vectorized]
            self._warn(f"{what}: layer {custom} is not a built-in Keras layer checked for vectorisation; using "
                       f"{impls[0].name} (exact; tfpartials.trust_vectorization(cls) to vectorise it)")
        self.implementations = impls

    # -- state ------------------------------------------------------------------------------------------------
    def _available(self) -> list[Implementation]:
        out = [i for i in self.implementations if i.name not in self.memo.failed
               and not (i.forward and self.memo.forward_error is not None)]
        return out or self.implementations[-1:]

    @property
    def current(self) -> Implementation:
        """The implementation in use (or to be tried next)."""
        return self._available()[0]

    @property
    def method(self) -> str:
        return self.current.name

    def function(self, impl: Implementation | None = None) -> Callable:
        impl = impl or self.current
        fn = self._compiled.get(impl.name)
        if fn is None:
            fn = self._compiled[impl.name] = self._compile(impl)
        return fn

    def _warn(self, message: str) -> None:
        if self.announce and message not in self.memo.warned:
            self.memo.warned.add(message)
            warnings.warn(message, FallbackWarning, stacklevel=_user_stacklevel())

    # -- running ----------------------------------------------------------------------------------------------
    def __call__(self, *args):
        """Run the best implementation that compiles for ``args``."""
        variant = self.variant_of(args) if self.variant_of is not None else None
        return self._run(lambda fn: fn(*args), variant)

    def prepare(self, *args, variant: Hashable = None) -> None:
        """Trace (without running) the best implementation that compiles for ``args`` (tensors or specs)."""
        self._run(lambda fn: fn.get_concrete_function(*args), variant)

    def _run(self, go: Callable[[Any], Any], variant: Hashable):
        while True:
            available = self._available()
            impl = available[0]
            fn = self.function(impl)
            ready = (impl.name, variant, fn)
            if ready in self.memo.ready:
                return go(fn)
            try:
                with captured_tf_logs() as notes:
                    out = go(fn)
            except InputError:
                raise
            except self.errors as exc:
                if impl.forward and not impl.vectorized and self.memo.forward_error is None:
                    self.memo.forward_error = exc  # forward mode itself failed (not a missing pfor rule)
                if len(available) == 1:
                    if self.exhausted == "unsupported":
                        how = f" by {impl.name}" if len(self.implementations) == 1 else ""
                        raise Unsupported(f"TensorFlow cannot compile {self.what}{how} for this model "
                                          f"({_reason(exc)})") from exc
                    raise
                self.memo.failed.add(impl.name)
                self._warn(f"{self.what}: {impl.name} is not available for this model ({_reason(exc)}); "
                           f"using {self.current.name} instead (exact, slower)")
                continue
            self.memo.ready.add(ready)
            if notes.looped:
                self._warn(f"{self.what}: {impl.name} runs {', '.join(notes.looped)} one at a time (no vectorised "
                           "rule for it in TensorFlow); exact, slower")
            return out
