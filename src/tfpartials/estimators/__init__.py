"""Curvature without the matrix: estimators that are plain functions of any linear operator.

Eigenvalues (thick-restart Lanczos), trace (Hutchinson, Hutch++, and per layer from shared probes), diagonal (Hutchinson, exact) and spectral
density (stochastic Lanczos quadrature) of a Hessian, GGN, Fisher or dense matrix, each returning a small frozen
result with its error measure and the number of matvecs used; ``restrict`` and ``per_layer`` give the same per
layer (diagonal blocks).
"""

from __future__ import annotations

from .blocks import RestrictedOperator, layer_names, per_layer, restrict
from .density import SpectralDensity, spectral_density
from .diagonal import DiagonalEstimate, exact_diagonal, hutchinson_diagonal
from .eigenvalues import EigenResult, power_iteration, top_eigenvalues
from .lanczos import LanczosDecomposition, lanczos
from .layerwise import BlockTrace, LayerwiseTrace, layerwise_trace
from .summary import CurvatureSummary, summarize_curvature
from .trace import TraceEstimate, hutchinson_trace, hutchpp_trace

__all__ = [
    "top_eigenvalues", "power_iteration", "EigenResult",
    "hutchinson_trace", "hutchpp_trace", "TraceEstimate",
    "hutchinson_diagonal", "exact_diagonal", "DiagonalEstimate",
    "spectral_density", "SpectralDensity",
    "layerwise_trace", "LayerwiseTrace", "BlockTrace",
    "lanczos", "LanczosDecomposition",
    "restrict", "per_layer", "layer_names", "RestrictedOperator",
    "summarize_curvature", "CurvatureSummary",
]
