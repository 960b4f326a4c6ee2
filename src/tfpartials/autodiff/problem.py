"""One place that turns user arguments (model, data, loss, wrt, options) into an Objective and its Data."""

from __future__ import annotations

from typing import Any

from ..io.data import Data, load_data
from ..io.precision import with_precision
from .objective import Objective

__all__ = ["prepare"]


def prepare(model, data, loss: Any = None, wrt=None, *, batch_size: int | None = None,
            precision: str | None = None, training: bool = False, include_regularization: bool = True,
            reduction: str = "mean", unconnected: str = "error", from_logits: bool | None = None,
            allow_nan: bool = False, target=None, strategy=None) -> tuple[Objective, Data]:
    """Validate everything, build the objective (a float64 copy of the model if asked) and load the data."""
    if isinstance(model, Objective):
        obj = model
        if strategy is not None:
            obj.strategy = strategy
    else:
        model = with_precision(model, precision)
        obj = Objective(model, loss, wrt, training=training, include_regularization=include_regularization,
                        reduction=reduction, unconnected=unconnected, from_logits=from_logits,
                        strategy=strategy)
    d = load_data(data, batch_size=batch_size, target=target, model=obj.model, loss_name=obj.loss.name,
                  allow_nan=allow_nan, require_targets=True)
    if obj.dtype.name == "float64":
        d = d.cast("float64")
    return obj, d
