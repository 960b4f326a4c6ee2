"""Attribution: which input elements a network's output depends on, with one verb, ``attribute``.

``Saliency`` (input gradient), ``GradientXInput``, ``IntegratedGradients`` (with a completeness delta) and
``SmoothGrad`` (wraps any other method). Every method takes ``layer=`` to attribute at a layer's output
(per-token scores at an embedding). Plots live in :mod:`tfpartials.reports.plots`.
"""

from .base import AttributionMethod, Target
from .gradient_x_input import GradientXInput
from .integrated_gradients import IntegratedGradients, path_nodes
from .registry import METHODS, attribute, make_method
from .saliency import Saliency
from .smoothgrad import SmoothGrad
from .tokens import TokenAttributions, token_attributions

__all__ = ["AttributionMethod", "Target", "attribute", "make_method", "METHODS", "Saliency", "GradientXInput",
           "IntegratedGradients", "SmoothGrad", "path_nodes", "TokenAttributions", "token_attributions"]
