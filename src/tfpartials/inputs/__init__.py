"""Derivatives with respect to inputs: per-example gradients, Jacobians, Hessians, mixed partials, Laplacian.

All run the model in inference mode (``training=False``), per example, chunked to a memory budget.
"""

from __future__ import annotations

from .hessian import input_hessian
from .jacobian import input_gradient, input_jacobian
from .laplacian import divergence, laplacian
from .partials import partial_derivative

__all__ = ["input_gradient", "input_jacobian", "input_hessian", "partial_derivative", "laplacian", "divergence"]
