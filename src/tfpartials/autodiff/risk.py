"""Exact accumulation of per-batch quantities over a dataset (sum over fixed-shape, masked batches).

Without a strategy the batches run one after another on the default device. With a ``tf.distribute.Strategy``
consecutive batches go to different replicas (replica r of step s takes batch s*R + r; slots past the end get a
fully masked batch), each weighted exactly (scale 1/N, regularisation count_b/N), and the replicas' results are
SUM-reduced — so the result equals the single-device one whatever the number of replicas or workers.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from .. import _cache
from .._backend import tf
from .._progress import progress
from .._tracing import traced
from ..io.data import Batch, Data

__all__ = ["accumulate", "as_tensors", "prefetch"]


def as_tensors(x, dtype=None):
    """numpy structure -> tensors; floating arrays cast to ``dtype`` when given."""
    def conv(a):
        t = tf.convert_to_tensor(a)
        if dtype is not None and t.dtype.is_floating and t.dtype != dtype:
            t = tf.cast(t, dtype)
        return t
    if x is None:
        return None
    if isinstance(x, list | tuple):
        return [conv(a) for a in x]
    if isinstance(x, dict):
        return {k: conv(v) for k, v in x.items()}
    return conv(x)


def prefetch(batches: Iterable[Batch], depth: int = 2) -> Iterator[Batch]:
    """Prepare the next ``depth`` batches on a background thread while the current one computes."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce():
        try:
            for b in batches:
                while not stop.is_set():
                    try:
                        q.put(b, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # hand errors to the consumer
            q.put(exc)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def _add(total, out):
    return out if total is None else tf.nest.map_structure(lambda a, b: a + b, total, out)


def accumulate(objective, data: Data, step: Callable, params: Sequence, *extra: Any,
               description: str = "pass", quiet: bool = False, strategy=None):
    """Sum ``step(params, x, y, mask, scale, reg_weight, *extra)`` over every batch of ``data``.

    ``step`` returns a tensor or a (nested) list of tensors; the result has the same structure. ``strategy``
    (default: the objective's own, if any) spreads batches over replicas; see the module docstring.
    """
    strategy = strategy if strategy is not None else getattr(objective, "strategy", None)
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        return _accumulate_distributed(objective, data, step, params, extra, description, quiet, strategy)
    total = None
    dtype = objective.dtype
    with progress(description, data.num_batches, quiet=quiet) as bar:
        # one batch: nothing to overlap, and a producer thread per pass costs ~1-2 ms on a small model
        batches = data.batches() if data.num_batches == 1 else prefetch(data.batches())
        for batch in batches:
            scale, regw = objective.weights(data.num_examples, batch.count)
            out = step(list(params), as_tensors(batch.x, dtype), as_tensors(batch.y, dtype),
                       tf.constant(batch.mask, dtype), scale, regw, *extra)
            total = _add(total, out)
            bar.advance(1)
    return total


def _distributed_function(objective, step, strategy):
    """One compiled ``strategy.run`` + SUM reduce per (objective, step, strategy), traced once."""
    return _cache.cached(objective, ("distributed", _cache.key_of(step), _cache.key_of(strategy)),
                         lambda: _build_distributed(step, strategy))


def _build_distributed(step, strategy):
    def run(params, per_replica, *extra):
        def replica_step(batch):
            x, y, mask, scale, regw = batch
            return step(list(params), x, y, mask, scale, regw, *extra)

        out = strategy.run(replica_step, args=(per_replica,))
        return tf.nest.map_structure(lambda v: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None), out)

    return traced(run)


def _accumulate_distributed(objective, data, step, params, extra, description, quiet, strategy):
    replicas = strategy.num_replicas_in_sync
    dtype = objective.dtype
    n = data.num_examples
    steps = -(-data.num_batches // replicas)
    it = iter(data.batches())
    params = list(params)
    total = None
    template: Batch | None = None
    run = _distributed_function(objective, step, strategy)
    with progress(description, steps, quiet=quiet, unit="steps") as bar:
        for _ in range(steps):
            group: list[Batch | None] = []
            for _r in range(replicas):
                b = next(it, None)
                if b is not None and template is None:
                    template = b
                group.append(b)
            slots = []
            for b in group:
                if b is None:  # past the end: a fully masked copy of a real batch contributes exactly zero
                    b = Batch(template.x, template.y, np.zeros_like(template.mask), 0)
                scale, regw = objective.weights(n, b.count)
                slots.append((as_tensors(b.x, dtype), as_tensors(b.y, dtype), tf.constant(b.mask, dtype),
                              scale, regw))

            def value_fn(ctx, _slots=slots):
                return _slots[ctx.replica_id_in_sync_group]

            per_replica = strategy.experimental_distribute_values_from_function(value_fn)
            total = _add(total, run(params, per_replica, *extra))
            bar.advance(1)
    return total
