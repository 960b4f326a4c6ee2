"""One place that turns user arguments (model, data, loss, wrt, options) into an Objective and its Data.

Objectives are cached per model (weakly: the cache dies with the model) and per settings, so the compiled
per-batch functions they hold are traced once and reused across calls: a second ``tp.gradients`` on new data of
the same shape does not retrace. The weights are read afresh on every call, so a cached objective always sees
the model's current weights; a cached float64 copy is re-synchronised from the original before each use.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _cache
from .._cache import key_of
from ..io.data import Data, load_data
from ..io.losses import _compiled_loss_weights
from ..io.precision import with_precision
from .objective import Objective

__all__ = ["prepare", "objective_for", "clear_cache"]


def clear_cache() -> None:
    """Forget every cached objective (and its compiled functions)."""
    _cache.clear()


def _sync_weights(src, dst) -> None:
    for s, d in zip(src.weights, dst.weights):
        val = np.asarray(s.numpy())
        d.assign(val.astype(d.dtype) if np.issubdtype(val.dtype, np.floating) else val)


def objective_for(model, loss: Any = None, wrt=None, *, precision: str | None = None, training: bool = False,
                  include_regularization: bool = True, reduction: str = "mean", unconnected: str = "error",
                  from_logits: bool | None = None, strategy=None, jit_compile: bool = False) -> Objective:
    """The cached :class:`Objective` for ``model`` and these settings (built on first use)."""
    # explicit key: settings by value, loss objects and the strategy by identity (held, so ids stay unique);
    # the model's compiled loss and variables too, so re-compiling or rebuilding the model is seen
    key = ("objective", key_of(loss), key_of(wrt), precision, training, include_regularization, reduction,
           unconnected, from_logits, jit_compile, key_of(strategy),
           key_of(getattr(model, "_tfpartials_loss", None)), key_of(getattr(model, "_tfpartials_loss_weights", None)),
           key_of(getattr(model, "loss", None)), key_of(_compiled_loss_weights(model)),
           tuple(id(v) for v in getattr(model, "trainable_variables", [])))
    obj = _cache.table(model).get(key)
    if obj is None:
        copy = with_precision(model, precision)
        obj = _cache.cached(model, key, lambda: Objective(
            copy, loss, wrt, training=training, include_regularization=include_regularization,
            reduction=reduction, unconnected=unconnected, from_logits=from_logits, strategy=strategy,
            jit_compile=jit_compile))
    elif obj.model is not model:
        _sync_weights(model, obj.model)
    return obj


def prepare(model, data, loss: Any = None, wrt=None, *, batch_size: int | None = None,
            precision: str | None = None, training: bool = False, include_regularization: bool = True,
            reduction: str = "mean", unconnected: str = "error", from_logits: bool | None = None,
            allow_nan: bool = False, target=None, strategy=None,
            jit_compile: bool = False) -> tuple[Objective, Data]:
    """Validate everything, build (or reuse) the objective and load the data."""
    if isinstance(model, Objective):
        obj = model
        if strategy is not None:
            obj.strategy = strategy
    else:
        obj = objective_for(model, loss, wrt, precision=precision, training=training,
                            include_regularization=include_regularization, reduction=reduction,
                            unconnected=unconnected, from_logits=from_logits, strategy=strategy,
                            jit_compile=jit_compile)
    d = load_data(data, batch_size=batch_size, target=target, model=obj.model, loss_name=obj.loss.name,
                  allow_nan=allow_nan, require_targets=True)
    if obj.dtype.name == "float64":
        d = d.cast("float64")
    return obj, d
