"""Per-example gradients: one gradient of ``loss_i + R`` per example, vectorised over the examples.

For every example i the gradient is ``g_i = grad_theta [loss(y_i, f(x_i; theta)) + R(theta)]``, so that
``(1/N) sum_i g_i`` is the dataset gradient of :func:`~tfpartials.autodiff.gradient.gradients`. The examples
of a chunk are mapped through one compiled function with ``tf.vectorized_map`` (the ``pfor`` converter turns
the per-example backward pass into batched ops); when TensorFlow has no vectorisation rule for an op of the
model (``UpSampling2D(interpolation="bilinear")``'s ``ResizeBilinear`` is one), the chunk is computed one
example at a time in a compiled loop instead, and a single warning names the op.

Chunks are sized by the memory planner: each example costs about ``n * itemsize * 4`` bytes of working
memory (its gradient, the vectorised intermediates and the host copy), ``n`` the number of parameters.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from .. import _cache, _pfor_rules
from .._backend import tf
from .._checks import InputError, ResourceError
from .._fallback import Fallback, FallbackMemo, Implementation
from .._memory import plan_chunks, require_fits, resolve_budget
from .._progress import progress
from .._tracing import PFOR_LOOP_THRESHOLD, pfor_looped_layers
from .._types import DataLike, LossLike, ModelLike, WrtLike
from ..io.data import Data
from .objective import Objective
from .problem import objective_for, prepare
from .risk import as_tensors

__all__ = ["per_example_gradients", "PerExampleGradients", "PerExampleEngine", "iter_chunks", "plan_per_example", "stream_per_example"]

_BYTES_FACTOR = 4  # working bytes per example = parameters * itemsize * this factor


class PerExampleEngine:
    """Per-example gradients of one fixed-size chunk, vectorised when possible, looped otherwise.

    Call it with ``(params, x, y)`` where the leading axis of ``x`` and ``y`` is the chunk; it returns a list of
    ``(chunk, *shape)`` tensors aligned with ``objective.space.names``. The implementation (vectorised over the
    examples, or a compiled loop) is chosen by the one fallback engine (:mod:`tfpartials._fallback`) on the
    first call and kept; a fallback warns once, naming the op.

    Args:
        objective: the :class:`~tfpartials.autodiff.objective.Objective` (loss, parameters, model).
        vectorize: ``False`` skips the vectorised attempt (a compiled loop over the examples).
    """

    def __init__(self, objective: Objective, *, vectorize: bool = True):
        self.objective = objective
        specs = [tf.TensorSpec(s, objective.dtype) for s in objective.space.shapes]

        def vectorised():
            def step(params, x, y):
                _pfor_rules.install()  # per-example filter gradients of convolutions: im2col, not a loop
                return tf.vectorized_map(self._one(params), (x, y), fallback_to_while_loop=False)
            return step

        def loop():
            def step(params, x, y):
                return tf.map_fn(self._one(params), (x, y), fn_output_signature=specs)
            return step

        impls = [Implementation(_LOOP, loop)]
        if vectorize:  # first, unless pfor would loop over a real CNN's convolutions anyway (slower to trace and run)
            position = 1 if pfor_looped_layers(objective.model) >= PFOR_LOOP_THRESHOLD else 0
            impls.insert(position, Implementation(_VECTORISED, vectorised, vectorized=True))
        keys = {_LOOP: "per_example_loop", _VECTORISED: "per_example_vectorized"}
        memo = _cache.cached(objective, ("fallback-memo", "per_example"), FallbackMemo)
        self._engine = Fallback("per-example gradients", impls, model=objective.model, memo=memo,
                                compile=lambda impl: objective.function(keys[impl.name], impl.build))

        def reading(build):  # the same step with the weights read inside the graph (no eager reads per call)
            def make():
                step = build()
                return lambda x, y: step(objective.space.values(), x, y)
            return make

        current = [Implementation(i.name, reading(i.build), vectorized=i.vectorized) for i in impls]
        self._current = Fallback("per-example gradients", current, model=objective.model, memo=memo,
                                 compile=lambda impl: objective.function(keys[impl.name] + "_current", impl.build))

    @classmethod
    def of(cls, objective: Objective, *, vectorize: bool = True) -> PerExampleEngine:
        """The engine of ``objective`` (built once and kept with it: a small model's call is ~2 ms, and
        building the engine's implementations each time was a few percent of it)."""
        return _cache.cached(objective, ("per-example-engine", bool(vectorize)),
                             lambda: cls(objective, vectorize=vectorize))

    @property
    def mode(self) -> str:
        """``"vectorized"`` or ``"loop"``: the implementation in use."""
        return "loop" if self._engine.current.name == _LOOP else "vectorized"

    @property
    def fallback_op(self) -> str | None:
        """The op that prevented vectorisation (when a vectorised attempt failed), else None."""
        if self.mode != "loop":
            return None
        for message in sorted(self._engine.memo.warned):
            m = re.search(r"no vectorisation rule for op (.+?)\); using", message)
            if m:
                return m.group(1)
        return None

    def _one(self, params):
        obj = self.objective

        def one(example):
            xi, yi = example
            xb = tf.nest.map_structure(lambda t: t[None], xi)
            yb = tf.nest.map_structure(lambda t: t[None], yi)
            with tf.GradientTape() as tape:
                tape.watch(params)
                outputs, losses = obj.forward(params, xb, return_losses=True)
                value = tf.cast(obj._loss_of(outputs, yb), obj.dtype)[0] + obj.regularization(losses)
            grads = tape.gradient(value, params, unconnected_gradients=tf.UnconnectedGradients.NONE)
            grads = [_dense(g) if g is not None else None for g in grads]
            return obj.fix_none(grads, params)

        return one

    def __call__(self, params, x, y) -> list:
        """Per-example gradients at ``params`` (a list of tensors), or at the model's current weights when
        ``params`` is None (read inside the compiled function: no eager reads per call)."""
        if params is None:
            return list(self._current(x, y))
        return list(self._engine(list(params), x, y))


_LOOP = "a compiled loop over the examples"
_VECTORISED = "vectorised over the examples"


def _dense(g):
    if isinstance(g, tf.IndexedSlices):  # Embedding rows: scatter into the full table shape
        shape = tf.get_static_value(g.dense_shape)
        if shape is None:
            shape = g.dense_shape
        return tf.math.unsorted_segment_sum(g.values, g.indices, shape[0])
    return g


def _take(a, idx):
    if isinstance(a, list):
        return [np.asarray(e)[idx] for e in a]
    if isinstance(a, dict):
        return {k: np.asarray(v)[idx] for k, v in a.items()}
    return np.asarray(a)[idx]


def iter_chunks(data: Data, chunk: int) -> Iterator[tuple[Any, Any, int]]:
    """``(x, y, k)`` pieces of exactly ``chunk`` rows (the last padded by repeating rows), k of them real."""
    for batch in data.batches():
        if batch.count == chunk == len(batch.mask):  # the whole batch is one chunk: no copy
            yield batch.x, batch.y, chunk
            continue
        for start in range(0, batch.count, chunk):
            stop = min(start + chunk, batch.count)
            idx = np.arange(start, start + chunk)
            idx = np.where(idx < stop, idx, start + (idx - start) % (stop - start))
            yield _take(batch.x, idx), _take(batch.y, idx), stop - start


def plan_per_example(obj: Objective, data: Data, *, max_memory=None, keep_all: bool = False) -> int:
    """Examples per vectorised chunk under the memory budget (``keep_all``: the N x n result counts too)."""
    budget = resolve_budget(max_memory)
    itemsize = obj.dtype.size
    fixed = 0
    if keep_all:
        fixed = data.num_examples * obj.space.size * itemsize
        require_fits(fixed, budget, f"per-example gradients ({data.num_examples} x {obj.space.size} values)",
                     "pass stream=True to receive them chunk by chunk, or use gradient_statistics() for norms "
                     "and moments without storing them")
    per = obj.space.size * itemsize * _BYTES_FACTOR
    plan = plan_chunks(data.batch_size, per, budget=budget, fixed=fixed, what="per-example gradients")
    return min(plan.chunk, data.batch_size)


def stream_per_example(obj: Objective, data: Data, chunk: int, *, engine: PerExampleEngine | None = None,
                       quiet: bool = False, description: str = "per-example gradients"):
    """Yield ``(grads, k)``: a list of ``(chunk, *shape)`` tensors (first ``k`` rows real) per chunk."""
    engine = engine or PerExampleEngine.of(obj)
    params = None if obj.strategy is None else obj.space.values()  # None: the current weights, read in-graph
    with progress(description, data.num_examples, quiet=quiet, unit="examples") as bar:
        for x, y, k in iter_chunks(data, chunk):
            grads = engine(params, as_tensors(x, obj.dtype), as_tensors(y, obj.dtype))
            yield grads, k
            bar.advance(k)


def per_example_gradients(model: ModelLike, data: DataLike, loss: LossLike = None, wrt: WrtLike = None, *, batch_size: int | None = None,
                          precision: str | None = None, max_memory: str | int | None = None,
                          include_regularization: bool = True, stream: bool = False, quiet: bool = False,
                          vectorize: bool = True, unconnected: str = "error", from_logits: bool | None = None,
                          allow_nan: bool = False):
    """One loss gradient per example, vectorised over the examples.

    Maths: ``g_i = grad_theta [loss(y_i, f(x_i; theta)) + R(theta)]`` for i = 1..N, so ``mean_i g_i`` is the
    dataset gradient ``grad_theta [(1/N) sum_i loss_i + R]`` returned by :func:`tfpartials.gradients`.

    Cost: N gradients, computed as one vectorised backward pass per chunk (``tf.vectorized_map``); memory
    about ``4 * n * itemsize`` bytes per example of a chunk, plus ``N * n * itemsize`` for the result unless
    ``stream=True``. When an op has no vectorisation rule the chunk runs as a compiled loop (one warning).

    Reference: Goodfellow, "Efficient per-example gradient computations" (arXiv:1510.01799, 2015);
    Agarwal et al., "Auto-vectorizing TensorFlow graphs" (pfor, arXiv:1903.04243, 2019).

    Args:
        model: a built Keras model (not modified).
        data: ``(x, y)`` arrays, a ``tf.data.Dataset`` of ``(x, y)``, or a path (``.npz``/``.csv``).
        loss: Keras loss name, object or callable; default the model's compiled loss.
        wrt: variable names, globs or layer names; default all trainable variables.
        batch_size: examples read at once (a chunk never exceeds it).
        precision: ``"float64"`` computes on a float64 copy of the model.
        max_memory: working-memory budget (``"1GiB"``, bytes); default half the available memory.
        include_regularization: add the model's regularisation losses R to every example's loss.
        stream: return an iterator of per-chunk ``{name: (k, *shape)}`` dicts (in data order) instead.
        vectorize: ``False`` forces the compiled per-example loop.

    Returns:
        ``{name: array (N, *shape)}`` in model order, or with ``stream=True`` an iterator of such dicts.

    Raises:
        ResourceError: the N x n result (or one example's working memory) exceeds the budget.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="lin", use_bias=False)])
        >>> _ = model.get_layer("lin").kernel.assign(np.zeros((2, 1), "float32"))
        >>> x = np.array([[1.0, 2.0], [3.0, 4.0]], "float32"); y = np.ones((2, 1), "float32")
        >>> tp.per_example_gradients(model, (x, y), loss="mse")["lin/kernel"][:, :, 0]   # 2 (w.x - y) x
        array([[-2., -4.],
               [-6., -8.]], dtype=float32)
    """
    obj, d = prepare(model, data, loss, wrt, batch_size=batch_size, precision=precision,
                     include_regularization=include_regularization, unconnected=unconnected,
                     from_logits=from_logits, allow_nan=allow_nan)
    engine = PerExampleEngine.of(obj, vectorize=vectorize)
    if stream:
        chunk = plan_per_example(obj, d, max_memory=max_memory)
        return _stream_dicts(obj, d, chunk, engine, quiet)
    chunk = plan_per_example(obj, d, max_memory=max_memory, keep_all=True)
    n = d.num_examples
    out = {name: np.empty((n, *shape), obj.dtype.as_numpy_dtype)
           for name, shape in zip(obj.space.names, obj.space.shapes)}
    start = 0
    for grads, k in stream_per_example(obj, d, chunk, engine=engine, quiet=quiet):
        for name, g in zip(obj.space.names, grads):
            out[name][start:start + k] = np.asarray(g)[:k]  # a view: .numpy() would copy once more
        start += k
    if start != n:  # pragma: no cover - a dataset that changed length while being read
        raise InputError(f"the data yielded {start} examples, expected {n}")
    return out


class PerExampleGradients:
    """Per-example gradients as a function of one batch, returning tensors: built once, called every step.

    ``pe = PerExampleGradients(model, loss)`` then ``pe(x, y)`` gives ``{name: tf.Tensor (B, *shape)}``, the
    gradient of ``loss(y_i, f(x_i)) + R`` for each of the B examples, at the model's weights *at the time of the
    call* (read inside the compiled function, so a training loop that updates the weights needs no rebuild).
    This is the form a custom training loop wants (per-example clipping, DP-SGD, gradient-noise statistics):
    the results stay TensorFlow tensors, with no copy to the host, and ``pe`` can be called inside a
    ``tf.function``. :func:`per_example_gradients` is the same computation for a whole dataset, split into
    chunks under the memory budget and returned as numpy arrays.

    Each eager call validates ``(x, y)`` like every other entry point (shapes against the model, labels against
    the loss, no NaN/Inf), and refuses a batch whose gradients and working memory (about ``4 * n * itemsize``
    bytes per example, n the parameters) exceed the budget. Inside a ``tf.function`` the inputs are not checked
    by tfpartials: a shape that does not fit the model fails with TensorFlow's error when the function is
    traced, and values are not scanned for NaN.

    Args:
        model: a built Keras model (not modified).
        loss, wrt, include_regularization, from_logits, unconnected, vectorize, max_memory, allow_nan: as for
            :func:`per_example_gradients`.
        precision: ``"float64"`` computes on a float64 copy of the model, re-synchronised at each (eager) call.

    Attributes:
        names: the parameter names, in model order (the keys of every result).

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="lin", use_bias=False)])
        >>> _ = model.get_layer("lin").kernel.assign(np.zeros((2, 1), "float32"))
        >>> pe = tp.PerExampleGradients(model, loss="mse")
        >>> x = np.array([[1.0, 2.0], [3.0, 4.0]], "float32"); y = np.ones((2, 1), "float32")
        >>> g = pe(x, y)["lin/kernel"]          # a tf.Tensor (2, 2, 1): 2 (w.x - y) x per example
        >>> g[:, :, 0].numpy()
        array([[-2., -4.],
               [-6., -8.]], dtype=float32)
        >>> _ = model.get_layer("lin").kernel.assign(np.ones((2, 1), "float32"))
        >>> pe(x, y)["lin/kernel"][:, :, 0].numpy()   # the weights of the moment: 2 (w.x - y) x
        array([[ 4.,  8.],
               [36., 48.]], dtype=float32)
    """

    def __init__(self, model: ModelLike, loss: LossLike = None, wrt: WrtLike = None, *,
                 precision: str | None = None, max_memory: str | int | None = None,
                 include_regularization: bool = True, vectorize: bool = True, unconnected: str = "error",
                 from_logits: bool | None = None, allow_nan: bool = False):
        self._model = model
        self._settings = dict(precision=precision, include_regularization=include_regularization,
                              unconnected=unconnected, from_logits=from_logits)
        self._loss, self._wrt = loss, wrt
        self._vectorize = bool(vectorize)
        self._max_memory = max_memory
        if max_memory is not None:
            resolve_budget(max_memory)  # a malformed budget fails here, not at the first step
        self._allow_nan = allow_nan
        obj = self._objective()  # a bad loss, wrt or model fails here
        self._on_copy = obj.model is not model  # precision: a copy of the model, synchronised at eager calls
        self.names: list[str] = list(obj.space.names)

    def _objective(self) -> Objective:
        return objective_for(self._model, self._loss, self._wrt, **self._settings)

    @tf.autograph.experimental.do_not_convert  # plain Python, run as is when a tf.function is traced
    def __call__(self, x, y) -> dict[str, Any]:
        """``{name: tf.Tensor (B, *shape)}``: the gradient of each of the B examples of ``(x, y)``."""
        if isinstance(x, tf.data.Dataset) or isinstance(y, tf.data.Dataset):
            raise InputError("PerExampleGradients takes one batch (x, y) of arrays or tensors; for a dataset "
                             "use per_example_gradients(model, data, ...)")
        if any(tf.is_symbolic_tensor(t) for t in tf.nest.flatten((x, y))):
            return self._in_graph(x, y)
        count = _leading_size(x)
        obj, d = prepare(self._model, (x, y), self._loss, self._wrt, batch_size=count,
                         allow_nan=self._allow_nan, **self._settings)
        room = plan_per_example(obj, d, max_memory=self._max_memory)  # examples that fit at once
        if room < d.num_examples:
            raise ResourceError(f"per-example gradients of a batch of {d.num_examples} ({obj.space.size} "
                                f"parameters each) do not fit the memory budget ({room} would); call it on "
                                "smaller batches, or raise max_memory")
        batch = next(iter(d.batches()))
        grads = PerExampleEngine.of(obj, vectorize=self._vectorize)(
            None, as_tensors(batch.x, obj.dtype), as_tensors(batch.y, obj.dtype))
        return dict(zip(obj.space.names, grads))

    def _in_graph(self, x, y) -> dict[str, Any]:
        if self._on_copy:
            raise InputError("PerExampleGradients(precision=...) needs eager calls (its copy of the model is "
                             "re-synchronised from the model's weights at each call); call it outside "
                             "tf.function, or without precision")
        obj = self._objective()
        grads = PerExampleEngine.of(obj, vectorize=self._vectorize)(None, as_tensors(x, obj.dtype),
                                                                       as_tensors(y, obj.dtype))
        return dict(zip(obj.space.names, grads))


def _leading_size(x) -> int:
    """Examples in a batch (the leading dimension of its first input)."""
    leaves = tf.nest.flatten(x)
    if not leaves:
        raise InputError("x: no inputs")
    shape = np.shape(leaves[0])
    if not shape or shape[0] == 0:
        raise InputError(f"x: expected a batch (B, ...) with B >= 1, got shape {tuple(shape)}")
    return int(shape[0])


def _stream_dicts(obj, d, chunk, engine, quiet):
    for grads, k in stream_per_example(obj, d, chunk, engine=engine, quiet=quiet):
        yield {name: g.numpy()[:k] for name, g in zip(obj.space.names, grads)}

