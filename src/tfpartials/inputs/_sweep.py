"""Compiled derivative steps and the chunked sweep over examples x directions, sized by the memory planner.

A :class:`Step` is one per-chunk computation with several implementations of the same numbers (vectorised
over directions with ``tf.vectorized_map``, on stacked copies of the examples, or by another mode of
differentiation), the first that compiles for the model being used. :func:`sweep` feeds it fixed-shape
chunks of examples and directions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from .._backend import tf
from .._fallback import Fallback, Implementation, Unsupported
from .._memory import plan_chunks, require_fits, resolve_budget
from .._progress import progress
from .._tracing import traced
from ._model_fn import InputFunction, Prepared, _spec

__all__ = ["Step", "Candidate", "Unsupported", "sweep", "row_bytes", "budget_and_fixed", "tile_rows",
           "split_rows", "map_directions", "examples_first", "one_hot_rows"]


class Candidate(NamedTuple):
    """One implementation of a :class:`Step`: its name, a builder of the Python function, and whether it
    differentiates in forward mode (which TensorFlow cannot do through some ops, e.g. an LSTM's loop)."""

    name: str
    build: Callable[[], Callable]
    forward: bool


class Step:
    """A compiled per-chunk computation ``(x, others, per_example, directions) -> (examples, directions, ...)``.

    Several implementations of the same numbers, tried in order when first traced: typically
    ``tf.vectorized_map`` over the directions (the model's forward and backward passes run once per example;
    only the derivative is batched), then the model on stacked copies of the examples, one per direction
    (exact because examples do not interact in inference mode; needs no per-op vectorisation rule), then
    other modes of differentiation. Never a silent Python-level loop. ``generic`` steps are traced once for
    every chunk size; the others once per chunk shape, because nested forward-mode accumulators need static
    shapes (a ``Shape`` op of a tensor they differentiate, e.g. in ``Flatten`` with an unknown batch size,
    fails inside TensorFlow).

    Raises:
        Unsupported: no implementation compiles for this model.
    """

    def __init__(self, owner: InputFunction, candidates: Sequence[Candidate], generic: bool, what: str):
        self.owner = owner
        self.generic = generic
        self.what = what
        impls = [Implementation(c.name, c.build, vectorized="vectorized_map" in c.name, forward=c.forward)
                 for c in candidates]
        self._engine = Fallback(what, impls, model=owner.model, announce=False, exhausted="unsupported",
                                errors=(Exception,),
                                compile=lambda impl: traced(impl.build(), reduce_retracing=generic))

    @property
    def method(self) -> str | None:
        """The implementation in use."""
        return self._engine.current.name

    def _sync(self, run):
        memo = self._engine.memo
        if memo.forward_error is None:
            memo.forward_error = self.owner.forward_unavailable  # forward mode already failed for this model
        try:
            return run()
        finally:
            if memo.forward_error is not None and self.owner.forward_unavailable is None:
                self.owner.forward_unavailable = memo.forward_error

    def prepare(self, *args) -> None:
        """Trace for ``args`` (tensors or specs) with the first implementation that compiles."""
        self._sync(lambda: self._engine.prepare(*args))

    def __call__(self, *args):
        return self._sync(lambda: self._engine(*args))


def row_bytes(fn: InputFunction, prep: Prepared, passes: float) -> int:
    """Working bytes of one row: ``passes`` times the activations plus the row's inputs and outputs."""
    item = fn.dtype.size
    others = sum(int(o[:1].nbytes) for o in prep.others)
    return int(passes * fn.activation_bytes() + 3 * (prep.n_in + prep.n_out) * item + others)


def budget_and_fixed(max_memory, result_bytes: int, what: str, alternative: str) -> tuple[int, int]:
    """The working budget for ``max_memory``; refuses when the result alone does not fit."""
    budget = resolve_budget(max_memory)
    require_fits(result_bytes, budget, what, alternative)
    return budget, result_bytes


# ------------------------------------------------------------------------------------------------------- sweep
def _pad(a: np.ndarray, size: int) -> np.ndarray:
    if len(a) == size:
        return a
    idx = np.arange(size) % len(a)
    return a[idx]


def sweep(step: Step, prep: Prepared, directions: Sequence[np.ndarray], bytes_per_row: int, *,
          budget: int, fixed: int = 0, per_example: Sequence[np.ndarray] = (), what: str = "input derivative",
          description: str = "input derivatives", quiet: bool = False, batch_size: int | None = None,
          ) -> Iterator[tuple[int, int, int, int, Any]]:
    """Run ``step(x, others, per_example, directions)`` over chunks of examples x directions.

    ``directions`` are arrays of equal length D (one entry per direction; pass ``[np.zeros(1)]`` for none).
    Each call gets a fixed-shape chunk (the last one padded by repetition, so a compiled ``step`` traces once)
    and returns arrays with leading axes (examples, directions); yields ``(b0, b1, d0, d1, result)`` with
    the padding removed.
    """
    B = prep.num_examples
    D = len(directions[0])
    plan = plan_chunks(B * D, bytes_per_row, budget=budget, fixed=fixed, what=what)
    rows = plan.chunk
    cap = B if batch_size is None else min(B, int(batch_size))
    if rows >= D:  # all directions of fewer examples: the model's own passes run once per example
        bc, dc = max(1, min(cap, rows // D)), D
    else:
        bc, dc = 1, rows
    b_ranges = [(s, min(s + bc, B)) for s in range(0, B, bc)]
    d_ranges = [(s, min(s + dc, D)) for s in range(0, D, dc)]
    if step.generic:  # one trace with an unknown chunk size serves every chunk
        step.prepare(_spec(prep.x), [_spec(o) for o in prep.others], [_spec(p) for p in per_example],
                     [_spec(d) for d in directions])
    with progress(description, len(b_ranges) * len(d_ranges), quiet=quiet, unit="chunks") as bar:
        for b0, b1 in b_ranges:
            xb = tf.constant(_pad(prep.x[b0:b1], bc))
            ob = [tf.constant(_pad(o[b0:b1], bc)) for o in prep.others]
            pb = [tf.constant(_pad(p[b0:b1], bc)) for p in per_example]
            for d0, d1 in d_ranges:
                db = [tf.constant(_pad(d[d0:d1], dc)) for d in directions]
                out = step(xb, ob, pb, db).numpy()[: b1 - b0, : d1 - d0]
                yield b0, b1, d0, d1, out
                bar.advance(1)


def tile_rows(x, others: Sequence, dc) -> tuple[Any, list]:
    """Stack ``dc`` copies of a chunk of examples: row ``j * bc + b`` is example ``b`` (direction ``j``)."""
    xr = tf.tile(x, [dc, 1])
    orows = [tf.tile(o, tf.concat([[dc], tf.ones([tf.rank(o) - 1], tf.int32)], 0)) for o in others]
    return xr, orows


def map_directions(fn: Callable, dirs: Sequence):
    """``fn`` over the entries of the direction tensors, vectorised (no while-loop fallback: raises instead);
    the result has the examples first, ``(examples, directions, ...)``."""
    return examples_first(tf.vectorized_map(fn, tuple(dirs), fallback_to_while_loop=False))


def one_hot_rows(index, rows, depth: int, dtype):
    """``(rows, depth)`` with a one at ``index`` in every row (``index`` a scalar tensor)."""
    return tf.one_hot(tf.fill(tf.reshape(rows, [1]), index), depth, dtype=dtype)


def split_rows(t, dc, bc):
    """Rows stacked by :func:`tile_rows`, ``(dc * bc, ...)``, as ``(bc, dc, ...)`` (examples first)."""
    return examples_first(tf.reshape(t, tf.concat([[dc, bc], tf.shape(t)[1:]], 0)))


def examples_first(t):
    """``(directions, examples, ...) -> (examples, directions, ...)``."""
    rank = t.shape.rank
    return tf.transpose(t, [1, 0, *range(2, rank)])
