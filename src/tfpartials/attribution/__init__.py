"""Attribution: which input elements a network's output depends on, with one verb, ``attribute``.

``Saliency`` (input gradient), ``GradientXInput``, ``IntegratedGradients`` (with a completeness delta) and
``SmoothGrad`` (wraps any other method). Plots live in :mod:`tfpartials.reports.plots`.
"""

from .base import METHODS, AttributionMethod, Target, attribute, make_method
from .gradient_x_input import GradientXInput
from .integrated_gradients import IntegratedGradients, path_nodes
from .saliency import Saliency
from .smoothgrad import SmoothGrad

__all__ = ["AttributionMethod", "Target", "attribute", "make_method", "METHODS", "Saliency", "GradientXInput",
           "IntegratedGradients", "SmoothGrad", "path_nodes"]
