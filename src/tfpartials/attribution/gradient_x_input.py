"""Gradient × input: the input gradient weighted element-wise by the input.

    A_i = x_i · ∂f(x)/∂x_i

For a linear model ``f(x) = w·x + b`` this is exact: ``Σ_i A_i = f(x) − f(0)``; it equals integrated
gradients with a zero baseline there. Reference: Shrikumar, Greenside, Shcherbina & Kundaje, "Not Just a Black
Box: Learning Important Features Through Propagating Activation Differences", arXiv:1605.01713 (2016).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import AttributionMethod, Target

__all__ = ["GradientXInput"]


class GradientXInput(AttributionMethod):
    """``A = x ⊙ ∂f/∂x``.

    Cost: one forward and one backward pass per example (batched, chunked to the memory budget).

    Args:
        model: a single-input Keras model with floating inputs (not modified; run with ``training=False``).
        layer: attribute at this layer's output ``h`` (``h ⊙ ∂f/∂h`` summed over the feature axis).
        max_memory: working-memory budget for chunking (default half the available memory).

    Example:
        >>> import numpy as np, keras
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        >>> w = model.layers[0].kernel.numpy()[:, 0]
        >>> x = np.array([[1.0, 2.0, 3.0]], "float32")
        >>> bool(np.allclose(GradientXInput(model).attribute(x), x * w))
        True
    """

    name = "gradient-x-input"

    def __init__(self, model, *, layer: str | None = None, max_memory: str | int | None = None):
        super().__init__(model, layer=layer, max_memory=max_memory)

    def _attribute(self, z: np.ndarray, target: Target, state: Any) -> np.ndarray:
        grads, _ = self.gradients(z, target)
        return z * grads
