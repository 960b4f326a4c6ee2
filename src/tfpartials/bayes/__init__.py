"""Bayesian deep learning on tfpartials' curvature: the Laplace approximation and calibration metrics."""

from .calibration import CalibrationResult, calibration, plot_reliability, reliability_figure
from .laplace import Laplace, LaplacePrediction
from .summary import uncertainty_summary

__all__ = ["Laplace", "LaplacePrediction", "calibration", "CalibrationResult", "plot_reliability",
           "reliability_figure", "uncertainty_summary"]
