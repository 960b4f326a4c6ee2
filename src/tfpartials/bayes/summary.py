"""MAP vs Laplace on held-out data in one call: the numbers behind ``tfpartials laplace`` and a report section."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._checks import InputError, check_choice
from .calibration import CalibrationResult, calibration
from .laplace import Laplace

__all__ = ["uncertainty_summary", "regression_metrics", "likelihood_for"]

_CE = ("sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy")


def likelihood_for(loss_name: str) -> str:
    """``"classification"`` for the cross-entropies, ``"regression"`` for mse; else InputError."""
    if loss_name in _CE:
        return "classification"
    if loss_name == "mse":
        return "regression"
    raise InputError(f"cannot tell the likelihood from loss {loss_name!r}; use a cross-entropy or mse loss or pass "
                     "likelihood=")


def regression_metrics(mean, variance, y) -> dict:
    """Gaussian NLL ``mean_i sum_c [log(2 pi v)/2 + (y - m)^2 / (2 v)]`` and RMSE of a predictive."""
    mean = np.asarray(mean, np.float64)
    var = np.asarray(variance, np.float64)
    y = np.asarray(y, np.float64).reshape(mean.shape)
    nll = float(np.mean(np.sum(0.5 * np.log(2 * np.pi * var) + 0.5 * (y - mean) ** 2 / var, axis=1)))
    return {"nll": nll, "rmse": float(np.sqrt(np.mean((y - mean) ** 2)))}


def _labels(y, loss_name: str) -> np.ndarray:
    y = np.asarray(y)
    if loss_name == "categorical_crossentropy":
        return y.argmax(axis=-1)
    if loss_name == "binary_crossentropy":
        return y.reshape(-1).astype(np.int64)
    return y.reshape(-1)


def uncertainty_summary(model, data, eval_data, *, likelihood: str | None = None, subset: Any = "last_layer",
                        structure: str = "kfac", optimize: str = "marglik", val_data=None,
                        prior_precision: Any = 1.0, sigma_noise: float = 1.0, link: str = "probit",
                        n_samples: int = 100, bins: int = 15, loss: Any = None, seed: int = 0, target=None,
                        **laplace_kwargs) -> tuple[dict, Laplace, dict[str, CalibrationResult]]:
    """Fit a Laplace approximation on ``data`` and compare it with the MAP network on ``eval_data``.

    Returns ``(result, la, calibrations)``: ``result`` is JSON-ready (likelihood, structure, prior precision,
    log marginal likelihood, and ``"map"`` / ``"laplace"`` metrics: NLL, ECE, MCE, Brier, accuracy and the
    reliability-diagram data for classification, NLL and RMSE for regression); ``calibrations`` holds the two
    :class:`CalibrationResult` (classification) for :func:`~tfpartials.bayes.plot_reliability`.
    ``target`` names the CSV target column(s) of ``eval_data`` / ``val_data``. Cost: one Laplace fit, the prior optimisation, and ``C`` reverse passes per held-out example.
    """
    from ..io.data import load_data

    check_choice("optimize", optimize, ("marglik", "gridsearch", "none"))
    if likelihood is None:
        from ..io.losses import resolve_loss

        loss = resolve_loss(loss, laplace_kwargs.get("from_logits"), model)
        likelihood = likelihood_for(loss.name)
    la = Laplace(model, data, likelihood=likelihood, subset=subset, structure=structure,
                 prior_precision=prior_precision, sigma_noise=sigma_noise, loss=loss, seed=seed, **laplace_kwargs)
    loss_name = la.objective.loss.name
    test = load_data(eval_data, model=model, loss_name=loss_name, target=target)
    x_test, y_test = test.arrays()
    if optimize == "marglik":
        la.optimize_prior_precision("marglik", optimize_sigma=likelihood == "regression")
    elif optimize == "gridsearch":
        if val_data is None:
            raise InputError("optimize='gridsearch' needs validation data (val_data=, --val VAL)")
        val = load_data(val_data, model=model, loss_name=loss_name, target=target)
        la.optimize_prior_precision("gridsearch", val_data=val.arrays(), link=link, n_samples=n_samples)
    prior = la.prior_precision
    result: dict = {"likelihood": likelihood, "structure": structure, "subset": subset, "loss": loss_name,
                    "parameters": la.space.names, "num_parameters": la.n_params, "num_train": la.num_examples,
                    "num_eval": test.num_examples, "optimize": optimize,
                    "prior_precision": prior if isinstance(prior, float) else np.asarray(prior).tolist(),
                    "log_marginal_likelihood": la.log_marginal_likelihood(), "log_likelihood": la.log_likelihood()}
    cals: dict[str, CalibrationResult] = {}
    if likelihood == "regression":
        result["sigma_noise"] = la.sigma_noise
        pred = la.predictive(x_test)
        result["map"] = regression_metrics(pred.f_mean, np.full_like(pred.f_mean, la.sigma_noise**2), y_test)
        result["laplace"] = regression_metrics(pred.mean, pred.variance, y_test)
    else:
        labels = _labels(y_test, loss_name)
        cals["MAP"] = calibration(la.predict_map(x_test), labels, bins=bins)
        probs = la.predictive(x_test, link=link, n_samples=n_samples, seed=seed).probs
        cals["Laplace"] = calibration(probs, labels, bins=bins)
        result["link"] = link
        result["map"], result["laplace"] = cals["MAP"].as_dict(), cals["Laplace"].as_dict()
    return result, la, cals
