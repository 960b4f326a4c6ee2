"""tfpartials: every partial derivative of a trained TensorFlow/Keras network.

Parameters: gradients, Hessian-vector products, dense Hessians, GGN/Fisher, curvature spectra.
Inputs: Jacobians, Hessians, mixed partials, Laplacians, attributions. Verification: finite differences.

Names are imported on first use (PEP 562), so the command line answers ``--help`` without loading
TensorFlow; ``import tfpartials`` still fails at once with a clear message when TensorFlow is missing.
"""

from __future__ import annotations

import importlib
import importlib.util

if importlib.util.find_spec("tensorflow") is None:
    raise ImportError(
        "tfpartials needs TensorFlow, which is not installed. Install it with the extra for your machine: "
        "pip install 'tfpartials[cpu]' (CPU) or pip install 'tfpartials[gpu]' (CUDA)."
    )

__version__ = "0.1.0"

# public name -> module that defines it, grouped by concept
_EXPORTS: dict[str, str] = {
    # errors and settings
    "InputError": "._checks",
    "ResourceError": "._checks",
    "set_quiet": "._progress",
    "trust_vectorization": "._tracing",
    # loading
    "load_model": ".io.models",
    "load_data": ".io.data",
    "Data": ".io.data",
    "Loss": ".io.losses",
    "resolve_loss": ".io.losses",
    "MultiLoss": ".io.losses",
    "float64_copy": ".io.precision",
    "sandboxed": ".cli.sandbox",
    # parameters and the objective
    "ParameterSpace": ".params",
    "Objective": ".autodiff.objective",
    # first order w.r.t. parameters
    "gradients": ".autodiff.gradient",
    "value_and_gradients": ".autodiff.gradient",
    "output_gradient_shares": ".autodiff.multi_output",
    "OutputGradientShares": ".autodiff.multi_output",
    # second order w.r.t. parameters
    "hvp": ".autodiff.hvp",
    "FallbackWarning": "._fallback",
    "hessian": ".autodiff.hessian",
    "HessianResult": ".autodiff.hessian",
    # curvature operators (one per-batch product each; the base class does the data pass)
    "LinearOperator": ".linalg.operator",
    "DenseOperator": ".linalg.dense",
    "CurvatureOperator": ".linalg.curvature",
    "HessianOperator": ".linalg.curvature",
    "GGNOperator": ".linalg.curvature",
    "FisherOperator": ".linalg.curvature",
    "KFACOperator": ".linalg.kfac",
    "EKFACOperator": ".linalg.kfac",
    "KFACBlock": ".linalg.kfac",
    # per-example gradients and their statistics
    "per_example_gradients": ".autodiff.per_example",
    "PerExampleGradients": ".autodiff.per_example",
    "gradient_statistics": ".autodiff.statistics",
    "GradientStatistics": ".autodiff.statistics",
    "statistics_from_gradients": ".autodiff.statistics",
    # Keras callbacks
    "GradientMonitor": ".callbacks",
    "CurvatureMonitor": ".callbacks",
    # curvature estimators (functions of any operator)
    "top_eigenvalues": ".estimators",
    "power_iteration": ".estimators",
    "EigenResult": ".estimators",
    "hutchinson_trace": ".estimators",
    "hutchpp_trace": ".estimators",
    "layerwise_trace": ".estimators",
    "LayerwiseTrace": ".estimators",
    "TraceEstimate": ".estimators",
    "hutchinson_diagonal": ".estimators",
    "exact_diagonal": ".estimators",
    "DiagonalEstimate": ".estimators",
    "spectral_density": ".estimators",
    "SpectralDensity": ".estimators",
    "lanczos": ".estimators",
    "LanczosDecomposition": ".estimators",
    "restrict": ".estimators",
    "per_layer": ".estimators",
    "plot_density": ".reports.plots_spectrum",
    # derivatives with respect to inputs
    "input_gradient": ".inputs.jacobian",
    "input_jacobian": ".inputs.jacobian",
    "input_hessian": ".inputs.hessian",
    "partial_derivative": ".inputs.partials",
    "laplacian": ".inputs.laplacian",
    "divergence": ".inputs.laplacian",
    "sensitivity": ".inputs.sensitivity",
    "SensitivityResult": ".inputs.sensitivity",
    # attribution
    "AttributionMethod": ".attribution",
    "Saliency": ".attribution",
    "GradientXInput": ".attribution",
    "IntegratedGradients": ".attribution",
    "SmoothGrad": ".attribution",
    "attribute": ".attribution",
    "make_method": ".attribution",
    "token_attributions": ".attribution",
    "TokenAttributions": ".attribution",
    "plot_attributions": ".reports.plots",
    "plot_image_attributions": ".reports.plots",
    "plot_feature_attributions": ".reports.plots",
    # verification
    "check": ".verification.checks",
    "check_gradients": ".verification.checks",
    "check_hvp": ".verification.checks",
    "check_input_jacobian": ".verification.input_checks",
    "CheckResult": ".verification.results",
    "CheckReport": ".verification.results",
    "default_tolerances": ".verification.results",
    "Diagnostics": ".verification.diagnostics",
    "GradientCut": ".verification.diagnostics",
    "NonFinite": ".verification.diagnostics",
    "TrainingDependence": ".verification.diagnostics",
    "with_precision": ".io.precision",
    # Bayesian: Laplace approximation and calibration
    "Laplace": ".bayes",
    "LaplacePrediction": ".bayes",
    "calibration": ".bayes",
    "CalibrationResult": ".bayes",
    "plot_reliability": ".bayes",
    # report
    "build_report": ".reports.run",
    "load_results": ".reports.records",
    # influence functions and training-data attribution
    "influence": ".influence",
    "self_influence": ".influence",
    "InfluenceResult": ".influence",
    "SelfInfluenceResult": ".influence",
    "leave_one_out_check": ".influence",
    "LeaveOneOutResult": ".influence",
    # bundled examples (no download)
    "digits_cnn": ".examples",
    "diabetes_mlp": ".examples",
}

# subpackages reachable as attributes (tp.callbacks.GradientMonitor, tp.distribute.make_strategy, ...)
_SUBMODULES = {"callbacks", "distribute", "estimators", "attribution", "inputs", "verification", "linalg",
               "autodiff", "io", "reports", "examples", "bayes"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _SUBMODULES:
        importlib.import_module("._backend", __name__)
        mod = importlib.import_module(f".{name}", __name__)
        globals()[name] = mod
        return mod
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tfpartials' has no attribute {name!r}")
    importlib.import_module("._backend", __name__)
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
