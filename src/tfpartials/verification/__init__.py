"""Trust, but verify: derivatives against float64 finite differences, and what breaks derivatives."""

from .checks import check, check_gradients, check_hvp, check_input_jacobian
from .diagnostics import Diagnostics, GradientCut, NonFinite, TrainingDependence
from .results import CheckReport, CheckResult, default_tolerances

__all__ = ["check", "check_gradients", "check_hvp", "check_input_jacobian", "CheckResult", "CheckReport",
           "Diagnostics", "GradientCut", "NonFinite", "TrainingDependence", "default_tolerances"]
