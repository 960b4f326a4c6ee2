"""Influence functions and training-data attribution.

``scores[j, i] = (1/N) grad l(test_j)^T (H + damping I)^{-1} grad l(train_i)``: the predicted change in the loss of
test example ``j`` when training example ``i`` is left out and the model refit; positive = ``i`` helped.
:func:`leave_one_out_check` retrains without chosen examples and compares.

Example:
    >>> import numpy as np, keras, tfpartials as tp
    >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False, name="w")])
    >>> _ = model.get_layer("w").kernel.assign([[1.0]])
    >>> x = np.ones((2, 1), "float32"); y = np.array([[0.0], [2.0]], "float32")   # g = 2 (w - y) = (2, -2), H = 2
    >>> tp.influence(model, (x, y), (x, y), loss="mse", damping=0.0, quiet=True).scores.tolist()   # g_j g_i / (N H)
    [[1.0, -1.0], [-1.0, 1.0]]
"""

from .influence import (
    CURVATURES,
    DEFINITION,
    METHODS,
    InfluenceResult,
    SelfInfluenceResult,
    TopInfluence,
    influence,
    self_influence,
)
from .loo import LeaveOneOutResult, leave_one_out_check

__all__ = ["influence", "self_influence", "InfluenceResult", "SelfInfluenceResult", "TopInfluence",
           "leave_one_out_check", "LeaveOneOutResult", "DEFINITION", "METHODS", "CURVATURES"]


class _CallableModule(__import__("types").ModuleType):
    """``tfpartials.influence`` is both this package and the function: importing the package (which binds it as
    the attribute ``tfpartials.influence``) must not break ``tp.influence(model, train, test)``."""

    def __call__(self, *args, **kwargs):
        return influence(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
