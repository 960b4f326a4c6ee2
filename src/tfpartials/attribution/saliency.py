"""Saliency: the gradient of the explained output with respect to the input.

    A_i = ∂f(x)/∂x_i        (or |∂f(x)/∂x_i| with ``absolute=True``)

Reference: Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks: Visualising Image
Classification Models and Saliency Maps", ICLR workshop 2014 (arXiv:1312.6034).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import AttributionMethod, Target

__all__ = ["Saliency"]


class Saliency(AttributionMethod):
    """Input gradient of the target: ``A = ∂f/∂x`` (signed by default, ``|∂f/∂x|`` with ``absolute=True``).

    Cost: one forward and one backward pass per example (batched, chunked to the memory budget).

    Args:
        model: a single-input Keras model with floating inputs (not modified; run with ``training=False``).
        absolute: return the magnitude of the gradient (the original paper's map) instead of its sign.
        layer: attribute at this layer's output (``∂f/∂h`` summed over the feature axis) instead of the input.
        max_memory: working-memory budget for chunking (default half the available memory).

    Example:
        >>> import numpy as np, keras
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        >>> w = model.layers[0].kernel.numpy()[:, 0]
        >>> a = Saliency(model).attribute(np.ones((2, 3), "float32"))
        >>> bool(np.allclose(a, w))   # a linear model's saliency is its weight vector
        True
    """

    name = "saliency"

    def __init__(self, model, absolute: bool = False, *, layer: str | None = None,
                 max_memory: str | int | None = None):
        super().__init__(model, layer=layer, max_memory=max_memory)
        if not isinstance(absolute, bool | np.bool_):
            raise TypeError(f"absolute: expected True or False, got {absolute!r}")
        self.absolute = bool(absolute)

    def _attribute(self, z: np.ndarray, target: Target, state: Any) -> np.ndarray:
        grads, _ = self.gradients(z, target)
        return np.abs(grads) if self.absolute else grads
