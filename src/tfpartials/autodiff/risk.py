"""Exact accumulation of per-batch quantities over a dataset (sum over fixed-shape, masked batches)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .._backend import tf
from .._progress import progress
from ..io.data import Data

__all__ = ["accumulate", "as_tensors"]


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


def accumulate(objective, data: Data, step: Callable, params: Sequence, *extra: Any,
               description: str = "pass", quiet: bool = False):
    """Sum ``step(params, x, y, mask, scale, reg_weight, *extra)`` over every batch of ``data``.

    ``step`` returns a tensor or a (nested) list of tensors; the result has the same structure.
    """
    total = None
    dtype = objective.dtype
    with progress(description, data.num_batches, quiet=quiet) as bar:
        for batch in data.batches():
            scale, regw = objective.weights(data.num_examples, batch.count)
            out = step(list(params), as_tensors(batch.x, dtype), as_tensors(batch.y, dtype),
                       tf.constant(batch.mask, dtype), scale, regw, *extra)
            total = out if total is None else tf.nest.map_structure(lambda a, b: a + b, total, out)
            bar.advance(1)
    return total
