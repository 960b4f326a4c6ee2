"""The Laplace approximation: a Gaussian over the weights at the trained optimum, with model evidence.

With ``theta*`` the trained weights (the MAP), the curvature ``H`` of the negative log-likelihood summed over the
``N`` training examples (generalised Gauss-Newton by default, or the Hessian) and an isotropic, per-layer or
per-parameter Gaussian prior ``N(0, P0^{-1})``, the posterior is ``N(theta*, (H + P0)^{-1})`` and the log marginal
likelihood is ``log p(D | theta*) - 1/2 (theta*^T P0 theta* + log det(H + P0) - log det P0)``. Predictions use
the linearised model ``f(x; theta) ~ f(x; theta*) + J(x) (theta - theta*)`` (the GLM predictive): a Gaussian over
the outputs with covariance ``J Sigma J^T``, turned into class probabilities by the probit approximation or Monte
Carlo. Curvature structures: ``full`` (dense), ``diag``, ``lowrank`` (top eigenpairs by Lanczos) and ``kfac``
(per-layer Kronecker factors).

References: MacKay, "A practical Bayesian framework for backpropagation networks", Neural Comput. 4 (1992);
Ritter, Botev & Barber, "A scalable Laplace approximation for neural networks", ICLR 2018; Immer, Korzepa &
Bauer, "Improving predictions of Bayesian neural nets via local linearization", AISTATS 2021; Daxberger et al.,
"Laplace Redux - effortless Bayesian deep learning", NeurIPS 2021.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .._checks import (
    InputError,
    check_choice,
    check_positive_float,
    check_positive_int,
    check_seed,
    parse_size,
)
from .._memory import DEFAULT_DENSE_LIMIT, require_fits
from ..autodiff.problem import prepare
from ..estimators.blocks import layer_names
from ..params import ParameterSpace
from . import _glm
from ._posterior import DensePosterior, DiagPosterior, KronFactor, KronPosterior, LowRankPosterior

__all__ = ["Laplace", "LaplacePrediction", "Likelihood", "Structure", "Link"]

Likelihood = Literal["classification", "regression"]
Structure = Literal["full", "diag", "lowrank", "kfac"]
Link = Literal["glm", "probit", "mc"]

_CLASSIFICATION = ("sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy")
_ALTERNATIVE = ("use subset='last_layer' (--subset last-layer), structure='kfac', 'diag' or 'lowrank', or raise "
                "max_memory (--max-memory)")


@dataclass(frozen=True)
class LaplacePrediction:
    """The linearised (GLM) predictive for a batch of inputs.

    Attributes:
        mean: classification: ``(B, C)`` predictive class probabilities; regression: ``(B, C)`` predictive mean.
        variance: regression: ``(B, C)`` predictive variance ``diag(J Sigma J^T) + sigma^2``; classification:
            ``(B, C)`` the variance of each output (logit) under the linearised posterior.
        f_mean: ``(B, C)`` the network's outputs at the MAP.
        f_covariance: ``(B, C, C)`` ``J Sigma J^T``, the epistemic covariance of the outputs.
        link: the link approximation used.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> x = np.array([[1.0], [2.0], [3.0]]); y = np.array([[1.0], [2.0], [2.0]])
        >>> model = keras.Sequential([keras.Input((1,), dtype="float64"),
        ...                           keras.layers.Dense(1, use_bias=False, dtype="float64")])
        >>> model.set_weights([np.array([[11.0 / 15.0]])])   # MAP: (x^T x + 1) w = x^T y
        >>> la = tp.Laplace(model, (x, y), likelihood="regression", structure="full", prior_precision=1.0)
        >>> p = la.predictive(np.array([[1.0]]))
        >>> p.link, p.f_mean.shape, p.f_covariance.shape
        ('glm', (1, 1), (1, 1, 1))
        >>> bool(np.isclose(p.f_mean[0, 0], 11 / 15)), bool(np.isclose(p.f_covariance[0, 0, 0], 1 / 15))  # x^2 / 15
        (True, True)
    """

    mean: np.ndarray
    variance: np.ndarray
    f_mean: np.ndarray
    f_covariance: np.ndarray
    link: str

    @property
    def probs(self) -> np.ndarray:
        """Alias of :attr:`mean` (class probabilities for classification)."""
        return self.mean


def _resolve_subset(model, subset) -> Any:
    """``"all"`` -> None; ``"last_layer"`` -> the last layer that has trainable variables; else globs."""
    if subset is None or subset == "all":
        return None
    if isinstance(subset, str) and subset.replace("-", "_") == "last_layer":
        space = ParameterSpace(model)
        return [layer_names(space)[-1]]
    if isinstance(subset, str):
        return [subset]
    if isinstance(subset, Sequence) and subset and all(isinstance(s, str) for s in subset):
        return list(subset)
    raise InputError(f"subset: expected 'all', 'last_layer' or variable names / globs, got {subset!r}")


class Laplace:
    """Laplace approximation of a trained Keras model's weight posterior (fitted on construction).

    Maths: posterior ``N(theta*, Sigma)`` with ``Sigma^{-1} = H / (sigma^2 T) + P0``, ``H`` the GGN (or Hessian)
    of ``sum_i -log p(y_i | f(x_i; theta))`` at ``sigma = T = 1``; classification uses the categorical
    (or Bernoulli) likelihood of logits, regression a Gaussian of standard deviation ``sigma_noise``.

    Cost of fitting: ``full`` ``P`` curvature products (one dense ``P x P`` matrix, refused above the dense
    limit), ``diag`` one pass of per-example output Jacobians (``C`` reverse passes per example), ``lowrank``
    the Lanczos products for ``k`` eigenpairs, ``kfac`` one pass for the Kronecker factors. Predictions cost
    ``C`` reverse passes per example.

    Args:
        model: a trained Keras model (not modified) whose weights are the MAP; classification models output logits.
        data: the training data (``(x, y)``, a ``tf.data.Dataset``, a path or a :class:`~tfpartials.Data`).
        likelihood: ``"classification"`` (cross-entropy from logits) or ``"regression"`` (``mse``).
        subset: ``"all"``, ``"last_layer"`` or variable names / globs (as ``wrt=``).
        structure: ``"full"``, ``"diag"``, ``"lowrank"`` or ``"kfac"``.
        prior_precision: a scalar, ``{layer or variable name: value}``, one value per layer, or one per parameter.
        sigma_noise: observation noise standard deviation (regression).
        temperature: the likelihood is raised to ``1/temperature``.
        loss: the loss (default: ``"mse"`` for regression, the model's compiled loss for classification).
        curvature: ``"ggn"`` (default, positive semi-definite) or ``"hessian"``.
        rank: eigenpairs kept by ``structure="lowrank"`` (default 20).
        batch_size, precision, from_logits: as in :func:`tfpartials.gradients`.
        max_memory: memory limit for the dense structure (default the dense-Hessian limit, 2 GiB).

    Reference: Daxberger et al., "Laplace Redux - effortless Bayesian deep learning", NeurIPS 2021.

    Example:
        >>> import numpy as np, keras
        >>> x = np.array([[1.0], [2.0], [3.0]]); y = np.array([[1.0], [2.0], [2.0]])
        >>> model = keras.Sequential([keras.Input((1,), dtype="float64"),
        ...                           keras.layers.Dense(1, use_bias=False, dtype="float64")])
        >>> model.set_weights([np.array([[11.0 / 15.0]])])   # MAP: (x^T x + 1) w = x^T y
        >>> la = Laplace(model, (x, y), likelihood="regression", structure="full", prior_precision=1.0)
        >>> float(la.predictive(np.array([[1.0]])).variance[0, 0]) == 1.0 / 15.0 + 1.0   # x^2/(x^T x + 1) + sigma^2
        True
    """

    def __init__(self, model, data, likelihood: Likelihood = "classification", subset: Any = "all",
                 structure: Structure = "full", prior_precision: Any = 1.0, sigma_noise: float = 1.0,
                 temperature: float = 1.0, *, loss: Any = None, curvature: Literal["ggn", "hessian"] = "ggn",
                 rank: int = 20, batch_size: int | None = None, precision: str | None = None,
                 from_logits: bool | None = None, max_memory: str | int | None = None, seed: int = 0,
                 quiet: bool = True):
        check_choice("likelihood", likelihood, ("classification", "regression"))
        check_choice("structure", structure, ("full", "diag", "lowrank", "kfac"))
        check_choice("curvature", curvature, ("ggn", "hessian"))
        self.likelihood = likelihood
        self.structure = structure
        self.curvature = curvature
        self.temperature = check_positive_float("temperature", temperature)
        self.sigma_noise = check_positive_float("sigma_noise", sigma_noise)
        self.rank = check_positive_int("rank", rank)
        self.seed = check_seed(seed)
        self.quiet = bool(quiet)
        self._max_memory = max_memory
        if loss is None and likelihood == "regression":
            loss = "mse"
        wrt = _resolve_subset(model, subset)
        self.subset = subset
        obj, d = prepare(model, data, loss, wrt, batch_size=batch_size, precision=precision,
                         include_regularization=False, from_logits=from_logits)
        self._check_loss(obj)
        self.objective = obj
        self.data = d
        self.space = obj.space
        self.num_examples = d.num_examples
        self.num_outputs = _glm.output_dim(obj, d)
        self.n_params = obj.space.size
        C = self.num_outputs
        # sum_i -log p(y_i | f_i) = c_loss * sum_i loss_i at unit noise and temperature
        self._c_loss = {"mse": C / 2.0, "binary_crossentropy": float(C)}.get(obj.loss.name, 1.0)
        self.theta = np.concatenate([np.asarray(v, np.float64).reshape(-1) for v in obj.space.values()])
        self._layers = layer_names(obj.space)
        self._layer_of = np.empty(self.n_params, np.int64)
        for name, sl_start, sl_stop in zip(obj.space.names, obj.space.offsets[:-1], obj.space.offsets[1:]):
            layer = name.rsplit("/", 1)[0] if "/" in name else name
            self._layer_of[sl_start:sl_stop] = self._layers.index(layer)
        self._prior = self._prior_vector(prior_precision)
        self._prior_kind = self._kind_of(prior_precision, self._prior)
        self._posterior = self._fit()

    # -- setup ------------------------------------------------------------------------------------------------
    def _check_loss(self, obj) -> None:
        name = obj.loss.name
        if self.likelihood == "regression" and name != "mse":
            raise InputError(f"likelihood='regression' needs loss 'mse' (a Gaussian likelihood), got {name!r}")
        if self.likelihood == "classification":
            if name not in _CLASSIFICATION:
                raise InputError(f"likelihood='classification' needs a cross-entropy loss ({', '.join(_CLASSIFICATION)}),"
                                 f" got {name!r}")
            if not obj.loss.from_logits:
                raise InputError("likelihood='classification' needs a model that outputs logits and a loss with "
                                 "from_logits=True (--from-logits); remove the final softmax/sigmoid")

    def _kind_of(self, value, vector: np.ndarray) -> str:
        """``"scalar"`` for a number, ``"layer"`` when constant on every layer, else ``"parameter"``."""
        if not isinstance(value, Mapping) and np.ndim(value) == 0:
            return "scalar"
        firsts = np.array([vector[self._layer_of == i][0] for i in range(len(self._layers))])
        return "layer" if np.array_equal(firsts[self._layer_of], vector) else "parameter"

    def _prior_vector(self, value) -> np.ndarray:
        """Per-parameter prior precision ``(P,)`` from a scalar, a dict, per-layer or per-parameter values."""
        P = self.n_params
        if isinstance(value, Mapping):
            names = self.space.names
            out = np.full(P, np.nan)
            for key, v in sorted(value.items(), key=lambda kv: kv[0] in names):  # variables override layers
                v = check_positive_float(f"prior_precision[{key!r}]", v)
                if key in names:
                    out[self.space.slice_of(key)] = v
                elif key in self._layers:
                    out[self._layer_of == self._layers.index(key)] = v
                else:
                    raise InputError(f"prior_precision: unknown layer or variable {key!r}; layers: "
                                     f"{', '.join(self._layers)}")
            if np.any(np.isnan(out)):
                missing = sorted({self._layers[i] for i in self._layer_of[np.isnan(out)]})
                raise InputError(f"prior_precision: no value for layer(s) {', '.join(missing)}")
            return out
        if isinstance(value, bool):
            raise TypeError(f"prior_precision: expected a positive number or array, got {value!r}")
        try:
            a = np.asarray(value, np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"prior_precision: expected a positive number, a dict or an array, got "
                            f"{type(value).__name__}") from None
        if a.ndim == 0:
            a = np.full(P, float(a))
        elif a.ndim == 1 and a.size == P:
            a = a.copy()
        elif a.ndim == 1 and a.size == len(self._layers):
            a = a[self._layer_of]
        else:
            raise InputError(f"prior_precision: expected a scalar, {len(self._layers)} per-layer values or {P} "
                             f"per-parameter values, got shape {a.shape}")
        if not np.all(np.isfinite(a)) or np.any(a <= 0):
            raise InputError("prior_precision: expected finite values > 0")
        return a

    def _scale_for(self, sigma: float) -> float:
        """``s = 1 / (sigma^2 T)`` (regression) or ``1 / T`` (classification)."""
        if self.likelihood == "regression":
            return 1.0 / (sigma * sigma * self.temperature)
        return 1.0 / self.temperature

    def _fit(self):
        obj, d, P = self.objective, self.data, self.n_params
        nll = self._c_loss * self.num_examples  # the mean-loss operators times this = summed-NLL curvature
        if self.structure in ("full", "diag") and self.curvature == "ggn":
            full = self.structure == "full"
            if full:
                self._require_dense()
            chunk = _glm.jacobian_chunk(obj, self.num_outputs, d.batch_size)
            dd = d if chunk >= d.batch_size else d.with_batch_size(chunk)
            H, self._loss_total = _glm.summed_ggn(obj, dd, self.num_outputs, full=full, quiet=self.quiet)
            return DensePosterior(self._c_loss * H, psd=True) if full else DiagPosterior(self._c_loss * H)
        if self.structure == "full":
            self._require_dense()
            self._loss_total = _glm.loss_sum(obj, d, quiet=self.quiet)
            return DensePosterior(nll * np.asarray(self._operator().to_dense(), np.float64))
        if self.structure == "diag":
            from ..estimators.diagonal import exact_diagonal

            self._loss_total = _glm.loss_sum(obj, d, quiet=self.quiet)
            return DiagPosterior(nll * exact_diagonal(self._operator(), quiet=self.quiet).values)
        if self.structure == "lowrank":
            from ..estimators.eigenvalues import top_eigenvalues

            self._loss_total = _glm.loss_sum(obj, d, quiet=self.quiet)
            k = min(self.rank, P - 1)
            if k < 1:
                raise InputError(f"structure='lowrank' needs at least 2 parameters, got {P}; use 'full'")
            eig = top_eigenvalues(self._operator(), k=k, seed=self.seed, quiet=self.quiet)
            return LowRankPosterior(nll * np.asarray(eig.eigenvalues, np.float64),
                                    np.asarray(eig.eigenvectors, np.float64))
        return self._fit_kfac()

    def _require_dense(self) -> None:
        P = self.n_params
        budget = DEFAULT_DENSE_LIMIT if self._max_memory is None else parse_size(self._max_memory)
        require_fits(3 * P * P * 8, budget, f"structure='full': the dense posterior of {P:,} parameters",
                     _ALTERNATIVE)

    def _operator(self):
        from ..linalg.curvature import GGNOperator, HessianOperator

        cls = GGNOperator if self.curvature == "ggn" else HessianOperator
        return cls(self.objective, self.data, quiet=self.quiet)

    def _fit_kfac(self):
        from ..linalg.kfac import KFACOperator

        if self.curvature != "ggn":
            raise InputError("structure='kfac' approximates the Gauss-Newton matrix; use curvature='ggn'")
        self._loss_total = _glm.loss_sum(self.objective, self.data, quiet=self.quiet)
        op = KFACOperator(self.objective, self.data, fisher="type-2", quiet=self.quiet)
        factors = []
        for blk in op.blocks:
            if blk.kind == "kronecker":
                a, QA = blk.A_eig
                b, QB = blk.B_eig
                factors.append(KronFactor(np.asarray(blk.indices), "kronecker",
                                          a=np.asarray(a, np.float64), QA=np.asarray(QA, np.float64),
                                          b=np.asarray(b, np.float64), QB=np.asarray(QB, np.float64)))
            else:
                factors.append(KronFactor(np.asarray(blk.indices), "diagonal",
                                          diag=np.asarray(blk.diag, np.float64)))
        return KronPosterior(factors, self.n_params, self._c_loss * self.num_examples)

    # -- evidence ---------------------------------------------------------------------------------------------
    @property
    def prior_precision(self) -> float | np.ndarray:
        """The prior precision: a float when isotropic and given as a scalar, else per layer or per parameter."""
        if self._prior_kind == "scalar":
            return float(self._prior[0])
        if self._prior_kind == "layer":
            return np.array([self._prior[self._layer_of == i][0] for i in range(len(self._layers))])
        return self._prior.copy()

    @prior_precision.setter
    def prior_precision(self, value) -> None:
        self._prior = self._prior_vector(value)
        self._prior_kind = self._kind_of(value, self._prior)

    @property
    def layers(self) -> list[str]:
        """Layer names (the groups of a per-layer prior precision), in parameter order."""
        return list(self._layers)

    def log_likelihood(self, sigma_noise: float | None = None) -> float:
        """``log p(D | theta*)`` at the trained weights (tempered by ``1/temperature``)."""
        sigma = self.sigma_noise if sigma_noise is None else check_positive_float("sigma_noise", sigma_noise)
        value = -self._scale_for(sigma) * self._c_loss * self._loss_total
        if self.likelihood == "regression":
            value -= self.num_examples * self.num_outputs * math.log(sigma * math.sqrt(2.0 * math.pi))
        return float(value)

    def log_marginal_likelihood(self, prior_precision: Any = None, sigma_noise: float | None = None) -> float:
        """Laplace log evidence ``log p(D|theta*) - 1/2 (theta*^T P0 theta* + log det P - log det P0)``.

        ``P = H / (sigma^2 T) + P0`` is the posterior precision. Neither argument changes the stored values.
        Cost: O(P) for diag/lowrank/kfac and for the full structure at a scalar prior (eigenvalues kept), one
        Cholesky factorisation otherwise.
        """
        p = self._prior if prior_precision is None else self._prior_vector(prior_precision)
        sigma = self.sigma_noise if sigma_noise is None else check_positive_float("sigma_noise", sigma_noise)
        s = self._scale_for(sigma)
        scatter = float(np.sum(p * self.theta**2))
        logdet = self._posterior.logdet(s, p)
        return self.log_likelihood(sigma) - 0.5 * (scatter + logdet - float(np.sum(np.log(p))))

    def optimize_prior_precision(self, method: Literal["marglik", "gridsearch"] = "marglik", *, val_data=None,
                                 grid=None, link: Link | None = None, optimize_sigma: bool = False,
                                 bounds: tuple[float, float] = (1e-6, 1e6), n_samples: int = 100):
        """Set the prior precision (and optionally ``sigma_noise``) by maximising the evidence or on validation data.

        ``"marglik"`` maximises :meth:`log_marginal_likelihood` with the weights held at the MAP: a scalar
        prior by a log-spaced grid over ``bounds`` refined with bounded Brent, a per-layer prior by L-BFGS-B
        in log space from the best scalar; with ``optimize_sigma`` (regression) ``sigma_noise`` jointly.
        ``"gridsearch"`` picks the scalar in ``grid`` (default 21 values over ``bounds``) with the lowest
        negative log-likelihood of the predictive on ``val_data`` (``(x, y)``), with the same ``link`` as
        :meth:`predictive` (default probit for classification, so the prior is chosen for the predictive it is
        then used with).

        Returns:
            the chosen prior precision (float, or an array per layer).
        """
        from scipy import optimize

        check_choice("method", method, ("marglik", "gridsearch"))
        lo, hi = (check_positive_float("bounds", b) for b in bounds)
        if not lo < hi:
            raise InputError(f"bounds: expected (low, high) with low < high, got {bounds!r}")
        if optimize_sigma and self.likelihood != "regression":
            raise InputError("optimize_sigma: sigma_noise is a parameter of the regression likelihood only")
        if method == "gridsearch":
            return self._gridsearch(val_data, grid, lo, hi, link, n_samples)
        if self._prior_kind == "parameter":
            raise InputError("optimize_prior_precision('marglik') optimises a scalar or per-layer prior precision; "
                             "set a scalar first (la.prior_precision = 1.0)")
        per_layer = self._prior_kind == "layer"
        if per_layer and self.structure == "lowrank":
            raise InputError("structure='lowrank' needs a scalar prior precision; set one first "
                             "(la.prior_precision = 1.0)")

        def neg(log_delta, log_sigma=None):
            sigma = self.sigma_noise if log_sigma is None else math.exp(log_sigma)
            delta = np.exp(log_delta)
            p = delta[self._layer_of] if np.ndim(delta) else float(delta)
            try:
                return -self.log_marginal_likelihood(p, sigma)
            except InputError:
                return np.inf

        grid_x = np.linspace(math.log(lo), math.log(hi), 121)
        values = [neg(g) for g in grid_x]
        i = int(np.argmin(values))
        a, b = grid_x[max(i - 1, 0)], grid_x[min(i + 1, grid_x.size - 1)]
        res = optimize.minimize_scalar(neg, bounds=(a, b), method="bounded", options={"xatol": 1e-10})
        best = float(res.x) if res.fun <= values[i] else float(grid_x[i])
        log_sigma = math.log(self.sigma_noise)
        if optimize_sigma:
            out = optimize.minimize(lambda v: neg(v[0], v[1]), np.array([best, log_sigma]), method="Nelder-Mead",
                                    options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 4000})
            best, log_sigma = float(out.x[0]), float(out.x[1])
        if per_layer:
            L = len(self._layers)
            x0 = np.full(L + optimize_sigma, best)
            if optimize_sigma:
                x0[-1] = log_sigma
            bnds = [(math.log(lo), math.log(hi))] * L + ([(None, None)] if optimize_sigma else [])

            def fun(v):
                return neg(v[:L], v[L] if optimize_sigma else None)

            out = optimize.minimize(fun, x0, method="L-BFGS-B", bounds=bnds, options={"ftol": 1e-14, "gtol": 1e-9})
            value: Any = np.exp(out.x[:L])
            if optimize_sigma:
                log_sigma = float(out.x[L])
        else:
            value = float(math.exp(best))
        self.prior_precision = value
        self.sigma_noise = float(math.exp(log_sigma))
        return self.prior_precision

    def _gridsearch(self, val_data, grid, lo, hi, link, n_samples):
        from ..io.data import load_data

        if val_data is None:
            raise InputError("optimize_prior_precision('gridsearch') needs val_data=(x, y)")
        grid = np.logspace(math.log10(lo), math.log10(hi), 21) if grid is None else np.asarray(grid, np.float64)
        if grid.ndim != 1 or grid.size == 0 or np.any(~np.isfinite(grid)) or np.any(grid <= 0):
            raise InputError("grid: expected a non-empty 1-D array of positive prior precisions")
        link = self._link(link)   # the same default as predictive(): probit (classification), glm (regression)
        n_samples = check_positive_int("n_samples", n_samples)
        vd = load_data(val_data, model=self.objective.model, loss_name=self.objective.loss.name)
        x, y = vd.arrays()
        blocks = list(_glm.outputs_and_jacobians(self.objective, x, self.num_outputs, batch_size=vd.batch_size))
        scores = []
        for delta in grid:
            p = np.full(self.n_params, float(delta))
            nll = 0.0
            try:
                for start, stop, f, J in blocks:
                    pred = self._predict_block(f, J, p, link, n_samples, np.random.default_rng(self.seed))
                    nll += self._nll(pred, np.asarray(y)[start:stop])
            except InputError:  # an indefinite posterior (Hessian curvature, tiny prior): not a candidate
                nll = math.inf
            scores.append(nll)
        if not np.any(np.isfinite(scores)):
            raise InputError("no prior precision in the grid gives a positive definite posterior; use larger values")
        best = float(grid[int(np.argmin(scores))])
        self.prior_precision = best
        return best

    def _nll(self, pred: LaplacePrediction, y) -> float:
        if self.likelihood == "regression":
            yy = np.asarray(y, np.float64).reshape(pred.mean.shape)
            return float(np.sum(0.5 * np.log(2 * np.pi * pred.variance)
                                + 0.5 * (yy - pred.mean) ** 2 / pred.variance))
        p = np.clip(pred.mean, 1e-12, 1.0)
        if self.objective.loss.name == "binary_crossentropy":
            yy = np.asarray(y, np.float64).reshape(p.shape)
            return float(-np.sum(yy * np.log(p) + (1 - yy) * np.log(np.clip(1 - pred.mean, 1e-12, 1.0))))
        yy = np.asarray(y)
        labels = yy.argmax(axis=-1) if self.objective.loss.name == "categorical_crossentropy" else yy.reshape(-1)
        return float(-np.sum(np.log(p[np.arange(p.shape[0]), labels.astype(np.int64)])))

    # -- predictions ------------------------------------------------------------------------------------------
    def _predict_block(self, f, J, p, link, n_samples, rng) -> LaplacePrediction:
        s = self._scale_for(self.sigma_noise)
        fcov = self._posterior.functional_covariance(J, s, p)
        fvar = np.maximum(np.einsum("bcc->bc", fcov), 0.0)
        if self.likelihood == "regression":
            return LaplacePrediction(f, fvar + self.sigma_noise**2, f, fcov, "glm")
        binary = self.objective.loss.name == "binary_crossentropy"
        if link in ("probit", "glm"):
            z = f / np.sqrt(1.0 + np.pi / 8.0 * fvar)
            probs = _sigmoid(z) if binary else _softmax(z)
        else:
            vals, vecs = np.linalg.eigh(fcov)
            root = vecs * np.sqrt(np.maximum(vals, 0.0))[:, None, :]       # fcov = root root^T
            eps = rng.standard_normal((n_samples, *f.shape))
            draws = f[None] + np.einsum("bcd,sbd->sbc", root, eps)
            probs = (_sigmoid(draws) if binary else _softmax(draws)).mean(axis=0)
        return LaplacePrediction(probs, fvar, f, fcov, link)

    def _link(self, link) -> str:
        """The link approximation: ``None`` -> ``"probit"`` (classification) or ``"glm"`` (regression)."""
        default = "glm" if self.likelihood == "regression" else "probit"
        link = default if link is None else check_choice("link", link, ("glm", "probit", "mc"))
        if self.likelihood == "regression" and link != "glm":
            raise InputError(f"link={link!r}: regression uses the Gaussian GLM predictive, link='glm'")
        return link

    def predictive(self, x, link: Link | None = None, n_samples: int = 100, *, seed: int | None = None,
                   batch_size: int | None = None) -> LaplacePrediction:
        """The linearised (GLM) predictive at inputs ``x``.

        Maths: ``f(x) ~ N(f(x; theta*), J Sigma J^T)``; regression returns its mean and variance plus
        ``sigma_noise^2``; classification maps it to probabilities with the probit approximation
        ``softmax(f / sqrt(1 + pi/8 diag(J Sigma J^T)))`` (``link="probit"``, the default; ``"glm"`` is the same)
        or by averaging the softmax over ``n_samples`` draws (``link="mc"``, seeded). Cost: ``C`` reverse passes
        per example for the Jacobians.
        """
        link = self._link(link)
        n_samples = check_positive_int("n_samples", n_samples)
        rng = np.random.default_rng(self.seed if seed is None else check_seed(seed))
        bs = batch_size or self.data.batch_size
        parts = [self._predict_block(f, J, self._prior, link, n_samples, rng)
                 for _, _, f, J in _glm.outputs_and_jacobians(self.objective, x, self.num_outputs, batch_size=bs,
                                                              max_memory=self._max_memory)]
        return LaplacePrediction(*(np.concatenate([getattr(q, k) for q in parts])
                                   for k in ("mean", "variance", "f_mean", "f_covariance")), link)

    def predict_map(self, x, *, batch_size: int | None = None) -> np.ndarray:
        """The MAP network's predictions: class probabilities (classification) or outputs (regression)."""
        fs = [f for _, _, f, _ in _glm.outputs_and_jacobians(self.objective, x, self.num_outputs,
                                                              batch_size=batch_size or self.data.batch_size)]
        f = np.concatenate(fs)
        if self.likelihood == "regression":
            return f
        return _sigmoid(f) if self.objective.loss.name == "binary_crossentropy" else _softmax(f)

    def sample(self, n: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
        """``n`` weight samples from the posterior as ``{name: (n, *shape)}`` (seeded)."""
        n = check_positive_int("n", n)
        rng = np.random.default_rng(check_seed(seed))
        z = rng.standard_normal((self.n_params, n))
        draws = self.theta[:, None] + self._posterior.sample(z, self._scale_for(self.sigma_noise), self._prior)
        return {name: draws[a:b].T.reshape(n, *shape) for name, shape, a, b in
                zip(self.space.names, self.space.shapes, self.space.offsets[:-1], self.space.offsets[1:])}

    @property
    def posterior_variance(self) -> dict[str, np.ndarray]:
        """Marginal posterior variances ``diag(Sigma)`` as ``{name: array}``."""
        v = self._posterior.variance(self._scale_for(self.sigma_noise), self._prior)
        return {name: v[a:b].reshape(shape) for name, shape, a, b in
                zip(self.space.names, self.space.shapes, self.space.offsets[:-1], self.space.offsets[1:])}

    @property
    def mean(self) -> dict[str, np.ndarray]:
        """The posterior mean (the trained weights) as ``{name: array}``."""
        return {name: self.theta[a:b].reshape(shape) for name, shape, a, b in
                zip(self.space.names, self.space.shapes, self.space.offsets[:-1], self.space.offsets[1:])}

    def __repr__(self) -> str:
        return (f"Laplace(likelihood={self.likelihood!r}, structure={self.structure!r}, n_params={self.n_params}, "
                f"examples={self.num_examples}, prior_precision={self.prior_precision!r})")


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))
