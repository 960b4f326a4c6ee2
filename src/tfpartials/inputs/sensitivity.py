"""Derivative-based global sensitivity measures (DGSM) from exact, batched input gradients.

For a model output ``f`` and inputs ``X`` drawn from a distribution (the sample passed in), the DGSM of
input ``i`` is ``nu_i = E[(df/dx_i)^2]``. With independent inputs it bounds the Sobol total-effect index:
for ``X_i`` uniform on ``[a_i, b_i]``, ``S_T,i <= (b_i - a_i)^2 nu_i / (pi^2 D)``; for ``X_i`` normal with
variance ``sigma_i^2``, ``S_T,i <= sigma_i^2 nu_i / D``, where ``D = Var f(X)`` (Poincare inequalities).
Every quantity is a Monte Carlo mean over the sample; intervals are bootstrap percentile intervals, each
bootstrap replicate resampling the examples once for every quantity (so ``nu_i`` and ``D`` of a bound move
together). The gradients are exact (automatic differentiation, one forward and one backward pass per
example), not finite differences.

References:
    Sobol' & Kucherenko, "Derivative based global sensitivity measures and their link with global
    sensitivity indices", Mathematics and Computers in Simulation 79(10):3009-3017, 2009.
    Kucherenko & Iooss, "Derivative-based global sensitivity measures", in Handbook of Uncertainty
    Quantification (Ghanem, Higdon, Owhadi, eds.), Springer, 2016 (print 2017; arXiv:1412.2619).
    Lamboni, Iooss, Popelin & Gamboa, "Derivative-based global sensitivity measures: general links with
    Sobol' indices and numerical tests", Mathematics and Computers in Simulation 87:45-54, 2013.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .._checks import InputError, check_choice, check_positive_float, check_positive_int, check_seed
from ..io.precision import with_precision
from ._model_fn import check_component, get_function, refuse_training
from .jacobian import input_gradient

__all__ = ["sensitivity", "SensitivityResult"]

Distribution = Literal["uniform", "normal"]

# bootstrap replicates x examples handled per matrix product (memory of the resampling counts)
_BOOTSTRAP_CELLS = 1 << 22


@dataclass(frozen=True)
class SensitivityResult:
    """Global sensitivity of one output component to every input coordinate.

    Per-input arrays have one entry per (flattened) input coordinate, in the order of ``names``; every
    ``*_interval`` is ``(n, 2)`` (lower, upper) at ``confidence``.

    Attributes:
        names: input coordinate names (``feature_names``, or ``x0 ...``, or ``x[i, j]`` for shaped inputs).
        dgsm: ``nu_i = E[(df/dx_i)^2]``.
        share: ``nu_i / sum_j nu_j`` (a ranking; not a variance decomposition).
        mean_abs: ``E|df/dx_i|`` (the derivative analogue of Morris' mu*).
        mean: ``E[df/dx_i]`` (signed: cancellations show here and not in ``mean_abs``).
        variance: ``D = Var f(X)`` (unbiased sample variance of the output on the same sample).
        sobol_bound: upper bounds on the Sobol total indices ``S_T,i`` (None without bounds/variances).
        distribution: ``"uniform"`` or ``"normal"`` for the bounds, None without them.
        poincare: the Poincare constants ``C_i`` of the bound ``S_T,i <= C_i nu_i / D`` (None without them).

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> inp = keras.Input((2,), dtype="float64")                # f(x) = 3 x0 + x1
        >>> model = keras.Model(inp, keras.ops.sum(inp * np.array([3.0, 1.0]), axis=1, keepdims=True))
        >>> x = np.random.default_rng(0).uniform(0, 1, (50, 2))
        >>> s = tp.sensitivity(model, x, bounds=(0, 1), n_bootstrap=20)
        >>> s.names, s.mean.round(6).tolist(), s.mean_abs.round(6).tolist()     # df/dx = (3, 1) everywhere
        (('x0', 'x1'), [3.0, 1.0], [3.0, 1.0])
        >>> s.distribution, s.poincare.round(6).tolist()                          # uniform on [0, 1]: 1 / pi^2
        ('uniform', [0.101321, 0.101321])
    """

    names: tuple[str, ...]
    dgsm: np.ndarray
    dgsm_interval: np.ndarray
    share: np.ndarray
    share_interval: np.ndarray
    mean_abs: np.ndarray
    mean_abs_interval: np.ndarray
    mean: np.ndarray
    mean_interval: np.ndarray
    variance: float
    variance_interval: tuple[float, float]
    sobol_bound: np.ndarray | None
    sobol_bound_interval: np.ndarray | None
    distribution: str | None
    poincare: np.ndarray | None
    output: str
    component: int
    num_examples: int
    n_bootstrap: int
    confidence: float
    seed: int

    def ranking(self) -> list[int]:
        """Input indices by decreasing DGSM."""
        return [int(i) for i in np.argsort(-self.dgsm, kind="stable")]

    def to_dict(self) -> dict:
        """Plain lists and numbers (the ``tfpartials sensitivity`` JSON), inputs in ranking order first."""
        def interval(a):
            return None if a is None else np.asarray(a).tolist()

        out = {
            "output": self.output, "component": self.component, "num_examples": self.num_examples,
            "n_bootstrap": self.n_bootstrap, "confidence": self.confidence, "seed": self.seed,
            "distribution": self.distribution,
            "variance": {"value": self.variance, "interval": list(self.variance_interval)},
            "ranking": [self.names[i] for i in self.ranking()],
            "inputs": [],
        }
        for i, name in enumerate(self.names):
            row = {"name": name,
                   "dgsm": {"value": float(self.dgsm[i]), "interval": interval(self.dgsm_interval[i])},
                   "share": {"value": float(self.share[i]), "interval": interval(self.share_interval[i])},
                   "mean_abs": {"value": float(self.mean_abs[i]), "interval": interval(self.mean_abs_interval[i])},
                   "mean": {"value": float(self.mean[i]), "interval": interval(self.mean_interval[i])}}
            if self.sobol_bound is not None:
                row["sobol_total_bound"] = {"value": float(self.sobol_bound[i]),
                                            "interval": interval(self.sobol_bound_interval[i]),
                                            "poincare_constant": float(self.poincare[i])}
            out["inputs"].append(row)
        return out


def sensitivity(model, x, output: int | str | None = None, component=None, *, input: int | str | None = None,
                bounds=None, distribution: Distribution = "uniform", variances=None,
                feature_names: Sequence[str] | None = None, n_bootstrap: int = 1000, confidence: float = 0.95,
                seed: int = 0, training: bool = False, precision: str | None = None,
                max_memory: str | int | None = None, batch_size: int | None = None,
                quiet: bool = False) -> SensitivityResult:
    """Derivative-based global sensitivity measures (DGSM) of one model output over a sample of inputs.

    ``nu_i = E[(df/dx_i)^2]`` estimated by the sample mean of exact squared derivatives, with bootstrap
    percentile intervals, normalised shares ``nu_i / sum nu``, ``E|df/dx_i|`` and ``E[df/dx_i]``. Given the
    input distribution (``x`` must be a sample of it, independent coordinates), also the upper bounds on the
    Sobol total indices: uniform on ``[a_i, b_i]``: ``S_T,i <= (b_i - a_i)^2 nu_i / (pi^2 D)``; normal with
    variance ``sigma_i^2``: ``S_T,i <= sigma_i^2 nu_i / D``; ``D = Var f`` from the same sample.
    Cost: one forward and one backward pass per example (plus one forward pass for ``D``); the bootstrap
    works on the stored derivatives only.
    References: Sobol' & Kucherenko, Math. Comput. Simul. 79:3009-3017, 2009; Kucherenko & Iooss,
    "Derivative-based global sensitivity measures", Handbook of Uncertainty Quantification, Springer, 2016.

    Args:
        model: a built Keras model (not modified).
        x: a sample of the input distribution, ``(B, *in)`` with ``B >= 2``; a list/dict for a multi-input
            model (then ``input`` selects the input whose coordinates are ranked; the others are held at
            their sampled values).
        output: output name or index (multi-output models).
        component: the output unit (flat index or coordinate tuple); required when the output has several.
        bounds: the support of uniform inputs, ``(lo, hi)`` for every coordinate or one pair per coordinate
            (an ``(n, 2)`` array); enables the Sobol bounds with ``distribution="uniform"``.
        distribution: ``"uniform"`` (with ``bounds``) or ``"normal"`` (with ``variances``).
        variances: the variances ``sigma_i^2`` of normal inputs (one number or one per coordinate).
        feature_names: names of the input coordinates (e.g. a CSV header).
        n_bootstrap: bootstrap replicates for the intervals.
        confidence: level of the percentile intervals.
        seed: seed of the bootstrap resampling.
        precision: ``"float64"`` differentiates a float64 copy of the model.
        max_memory, batch_size: as for :func:`input_gradient` (memory only).

    Returns:
        :class:`SensitivityResult`.

    Raises:
        InputError: fewer than two examples, a multi-unit output without ``component``, bounds or variances
            of the wrong length or sign, a sample outside ``bounds``, a constant output with bounds asked for.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> inp = keras.Input((2,), dtype="float64")                # f(x) = 3 x0 + x1
        >>> model = keras.Model(inp, keras.ops.sum(inp * np.array([3.0, 1.0]), axis=1, keepdims=True))
        >>> x = np.random.default_rng(0).uniform(0, 1, (500, 2))
        >>> s = tp.sensitivity(model, x, bounds=(0, 1), n_bootstrap=200)
        >>> s.dgsm.round(6).tolist(), s.share.round(2).tolist()       # nu = (9, 1)
        ([9.0, 1.0], [0.9, 0.1])
        >>> bool(np.all(s.sobol_bound >= [0.9, 0.1]))                 # S_T = (0.9, 0.1) here
        True
    """
    refuse_training(training, "global sensitivity")
    check_choice("distribution", distribution, ("uniform", "normal"))
    n_bootstrap = check_positive_int("n_bootstrap", n_bootstrap)
    confidence = check_positive_float("confidence", confidence)
    if not confidence < 1:
        raise InputError(f"confidence: expected a number in (0, 1), got {confidence}")
    seed = check_seed(seed)
    if distribution == "uniform" and variances is not None:
        raise InputError("variances: given with distribution='uniform'; uniform inputs take bounds=(lo, hi), "
                         "normal inputs take variances (pass distribution='normal')")
    if distribution == "normal" and bounds is not None:
        raise InputError("bounds: given with distribution='normal'; normal inputs take variances=..., "
                         "uniform inputs take bounds (pass distribution='uniform')")

    model = with_precision(model, precision)  # one copy, shared by the gradient and the output passes
    fn = get_function(model, input, output)
    prep = fn.prepare(x)
    B, n_in = prep.num_examples, prep.n_in
    if B < 2:
        raise InputError(f"x: expected a sample of at least 2 examples (a variance and a mean are estimated), "
                         f"got {B}")
    flat = check_component(component, prep.out_shape, fn.output_name, allow_all=False)
    names = _names(feature_names, prep.in_shape)
    poincare = None
    if bounds is not None:
        lo, hi = _bounds(bounds, n_in)
        _check_inside(prep.x, lo, hi, names)
        poincare = (hi - lo) ** 2 / math.pi ** 2
    elif variances is not None:
        poincare = _per_input("variances", variances, n_in)

    G = input_gradient(model, x, output, input, index=flat, max_memory=max_memory, batch_size=batch_size,
                       quiet=quiet).reshape(B, n_in).astype(np.float64)
    f = fn.outputs(prep, batch_size).reshape(B, -1)[:, flat].astype(np.float64)
    if not (np.all(np.isfinite(G)) and np.all(np.isfinite(f))):
        raise InputError("the model's output or its input gradient is not finite on this sample (NaN/Inf); "
                         "check the inputs and the model")
    point = _statistics(np.full((1, B), 1.0 / B), G, f, B, poincare)
    if poincare is not None and not point["variance"][0] > 0:
        raise InputError("the output is constant on this sample (variance 0): the Sobol total indices, and "
                         "their bounds, are undefined; drop bounds/variances or check the output")
    boot = _bootstrap(G, f, poincare, n_bootstrap, seed)
    alpha = (1 - confidence) / 2

    def band(name):
        return np.quantile(boot[name], [alpha, 1 - alpha], axis=0).T

    variance_band = band("variance")
    return SensitivityResult(
        names=names, dgsm=point["dgsm"][0], dgsm_interval=band("dgsm"),
        share=point["share"][0], share_interval=band("share"),
        mean_abs=point["mean_abs"][0], mean_abs_interval=band("mean_abs"),
        mean=point["mean"][0], mean_interval=band("mean"),
        variance=float(point["variance"][0]), variance_interval=(float(variance_band[0]), float(variance_band[1])),
        sobol_bound=None if poincare is None else point["bound"][0],
        sobol_bound_interval=None if poincare is None else band("bound"),
        distribution=None if poincare is None else distribution, poincare=poincare,
        output=fn.output_name, component=int(flat), num_examples=B, n_bootstrap=n_bootstrap,
        confidence=confidence, seed=seed)


def _statistics(weights: np.ndarray, G: np.ndarray, f: np.ndarray, B: int, poincare) -> dict[str, np.ndarray]:
    """Weighted sample statistics, one row per weight vector (rows of ``weights`` sum to one)."""
    sq = weights @ (G * G)
    total = sq.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, sq / np.where(total > 0, total, 1.0), 0.0)
    fm = weights @ f
    variance = np.maximum(weights @ (f * f) - fm * fm, 0.0) * (B / (B - 1))  # unbiased, B examples per draw
    out = {"dgsm": sq, "share": share, "mean_abs": weights @ np.abs(G), "mean": weights @ G, "variance": variance}
    if poincare is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            out["bound"] = np.where(variance[:, None] > 0, poincare * sq / variance[:, None], np.inf)
    return out


def _bootstrap(G, f, poincare, n_bootstrap: int, seed: int) -> dict[str, np.ndarray]:
    """The statistics on ``n_bootstrap`` resamples of the examples (with replacement), in blocks."""
    B = len(f)
    rng = np.random.default_rng(seed)
    block = max(1, _BOOTSTRAP_CELLS // B)
    parts: dict[str, list] = {}
    for start in range(0, n_bootstrap, block):
        r = min(block, n_bootstrap - start)
        idx = rng.integers(0, B, size=(r, B))
        counts = np.bincount((np.arange(r)[:, None] * B + idx).ravel(), minlength=r * B).reshape(r, B)
        for k, v in _statistics(counts / B, G, f, B, poincare).items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}


def _names(feature_names, in_shape: tuple[int, ...]) -> tuple[str, ...]:
    n = int(math.prod(in_shape))
    if feature_names is not None:
        names = tuple(str(s) for s in feature_names)
        if len(names) != n:
            raise InputError(f"feature_names: expected {n} names (one per input coordinate), got {len(names)}")
        return names
    if len(in_shape) <= 1:
        return tuple(f"x{i}" for i in range(n))
    return tuple(f"x[{', '.join(map(str, idx))}]" for idx in np.ndindex(*in_shape))


def _per_input(what: str, value, n: int) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{what}: expected numbers, got {value!r}") from None
    if a.ndim == 0:
        a = np.full(n, float(a))
    if a.shape != (n,):
        raise InputError(f"{what}: expected one number or {n} (one per input coordinate), got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise InputError(f"{what}: expected finite positive numbers, got {a.tolist()}")
    return a


def _bounds(bounds, n: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        b = np.asarray(bounds, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"bounds: expected (lo, hi) or one (lo, hi) pair per input, got {bounds!r}") from None
    if b.shape == (2,):
        b = np.tile(b, (n, 1))
    if b.shape != (n, 2):
        raise InputError(f"bounds: expected (lo, hi) or {n} (lo, hi) pairs (one per input coordinate), "
                         f"got shape {b.shape}")
    lo, hi = b[:, 0], b[:, 1]
    bad = np.flatnonzero(~(np.isfinite(lo) & np.isfinite(hi) & (lo < hi)))
    if bad.size:
        i = int(bad[0])
        raise InputError(f"bounds: expected finite lo < hi for every input, got ({lo[i]}, {hi[i]}) for input {i}")
    return lo, hi


def _check_inside(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, names: Sequence[str]) -> None:
    xmin, xmax = x.min(axis=0).astype(np.float64), x.max(axis=0).astype(np.float64)
    slack = 4 * np.finfo(x.dtype).eps * np.maximum(np.maximum(np.abs(lo), np.abs(hi)), 1.0)  # rounding to x's dtype
    bad = np.flatnonzero((xmin < lo - slack) | (xmax > hi + slack))
    if bad.size:
        i = int(bad[0])
        raise InputError(f"bounds: the sample of input {names[i]!r} spans [{xmin[i]:.6g}, {xmax[i]:.6g}], outside "
                         f"its bounds [{lo[i]:.6g}, {hi[i]:.6g}]; x must be a sample of the uniform distribution "
                         "on the bounds")
