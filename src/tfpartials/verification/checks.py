"""Derivative checks: autodiff (in the model's precision) against float64 central differences.

Each check compares a quantity the library computes by automatic differentiation with central differences
(:mod:`.finite_differences`) taken on a float64 copy of the model, block by block (one block per variable, or
per output component for input Jacobians). A block passes when

    max_i |autodiff_i - fd_i|  <=  atol + rtol * max_i |fd_i|

(a normwise test, so a directional derivative that is near zero by cancellation is not held to a relative
tolerance it cannot meet). ``max_rel_error`` is ``max_i |autodiff_i - fd_i| / max(max_i |fd_i|, atol)`` over the
blocks, and ``worst_variable`` the block with the largest ``error / (atol + rtol * scale)``.

Default tolerances, by the dtype of the autodiff side (the reference is always float64, its error ~1e-10):

    float64   rtol 1e-6   atol 1e-9     (float64 vs float64: only the difference quotient's error remains)
    float32   rtol 1e-3   atol 1e-5     (float32 round-off accumulated over the data and the layers)
    16-bit    rtol 5e-2   atol 1e-3

A gradient off by a factor of two or by its sign gives a relative error of 1 or 2, far above any of them.

The HVP check differences float64 *autodiff gradients* (the gradient check has verified them), so it checks
that ``H v`` is the derivative of the gradient the library computes; the input-Jacobian check differences the
float64 model outputs directly. Steps: ``h = eps^(1/3) * max(1, |theta|_inf)`` (per coordinate in full mode),
see :mod:`.finite_differences`.

Directions: fast mode (the default for more than 128 parameters, like torch's fast gradcheck) draws
``directions`` seeded Gaussian unit vectors per variable and compares ``<grad f, d>`` with
``(f(theta + h d) - f(theta - h d)) / 2h``; full mode (``full=True``, or automatically for small models) uses
every coordinate. Reference: the "fast gradcheck" of PyTorch (``torch.autograd.gradcheck(fast_mode=True)``).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .._backend import keras, tf
from .._checks import InputError, check_choice, check_positive_int
from .._types import DataLike, LossLike, ModelLike, WrtLike
from ..autodiff.objective import Objective
from ..autodiff.problem import prepare
from ..autodiff.risk import accumulate
from ..io.data import Data
from .diagnostics import (
    Diagnostics,
    GradientCut,
    NonFinite,
    gradient_cuts,
    nonfinite_gradient,
    training_dependent_layers,
)
from .finite_differences import (
    FiniteDifferenceObjective,
    Rows,
    relative_step,
    unit_directions,
    variable_directions,
)
from .input_checks import check_input_jacobian, jacobian_check
from .results import (
    ALL_COORDINATES,
    CHECKS,
    FULL_AUTO_LIMIT,
    CheckReport,
    CheckResult,
    Comparison,
    default_tolerances,
    make_result,
    resolve_tolerances,
    validate_options,
)

__all__ = ["CheckResult", "CheckReport", "check_gradients", "check_hvp", "check_input_jacobian", "check",
           "default_tolerances", "FULL_AUTO_LIMIT", "CHECKS"]

_CHUNK = 64  # directions differenced per call


# --------------------------------------------------------------------------------------------- gradients
_NONE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # objective -> names with a None gradient


@dataclass
class _Context:
    """What the parameter-space checks share: the objective, its data, the float64 reference and the cuts."""

    obj: Objective
    data: Data
    unconnected: str
    _fd: FiniteDifferenceObjective | None = None
    _cuts: tuple[GradientCut, ...] | None = None
    _gradient: tuple[float, np.ndarray] | None = None

    @property
    def fd(self) -> FiniteDifferenceObjective:
        if self._fd is None:
            self._fd = FiniteDifferenceObjective(self.obj, self.data)
        return self._fd

    def gradient(self) -> tuple[float, np.ndarray]:
        """(value, flat float64 gradient) by autodiff in the objective's dtype; None gradients count as zero and
        are noted, at trace time, in ``_NONE[objective]``."""
        if self._gradient is None:
            obj = self.obj
            none = _NONE.setdefault(obj, set())

            def build():
                def step(params, x, y, mask, scale, regw):
                    with tf.GradientTape() as tape:
                        tape.watch(params)
                        value = obj.batch_value(params, x, y, mask, scale, regw)
                    grads = tape.gradient(value, params)
                    none.update(n for n, g in zip(obj.space.names, grads) if g is None)
                    return value, [tf.zeros_like(p) if g is None else tf.convert_to_tensor(g)
                                   for g, p in zip(grads, params)]
                return step

            step = obj.function("check_gradient", build)
            value, grads = accumulate(obj, self.data, step, obj.space.values(), quiet=True)
            self._gradient = (float(value), obj.space.flatten(grads).numpy().astype(np.float64))
        return self._gradient

    @property
    def cuts(self) -> tuple[GradientCut, ...]:
        """Variables with a None gradient and the op that cut each (the graph is analysed only if there are)."""
        if self._cuts is None:
            self.gradient()
            self._cuts = gradient_cuts(self.obj, self.data) if _NONE.get(self.obj) else ()
        return self._cuts

    @property
    def failing_cuts(self) -> tuple[GradientCut, ...]:
        """The cuts that fail a check (none with ``unconnected="zero"``)."""
        return self.cuts if self.unconnected == "error" else ()


def _context(model, data, loss, wrt, *, batch_size, precision, include_regularization, reduction,
             from_logits, unconnected) -> _Context:
    check_choice("unconnected", unconnected, ("error", "zero"))
    obj, d = prepare(model, data, loss, wrt, batch_size=batch_size, precision=precision,
                     include_regularization=include_regularization, reduction=reduction, unconnected="zero",
                     from_logits=from_logits)
    return _Context(obj, d, unconnected)


def _gradient_check(ctx: _Context, k: int, full: bool | None, seed: int, rtol, atol, eps) -> CheckResult:
    obj, space = ctx.obj, ctx.obj.space
    rtol, atol = resolve_tolerances(obj.dtype, rtol, atol)
    value, g = ctx.gradient()
    cuts = ctx.failing_cuts
    cut_names = {c.variable for c in cuts}
    failure, found = None, None
    if not np.all(np.isfinite(g)):
        found = nonfinite_gradient(obj, ctx.data)
        failure = found.message if found else "the gradient holds NaN/Inf values"
    fd = ctx.fd
    theta, start = fd.theta, fd.num_evaluations
    h_rel = relative_step("float64", eps)
    full = space.size <= FULL_AUTO_LIMIT if full is None else full
    comp = Comparison(rtol, atol)
    names = [name for name in space.names if name not in cut_names]
    if full:
        directions: Any = ALL_COORDINATES
        coords = np.concatenate([np.arange(space.slice_of(n).start, space.slice_of(n).stop) for n in names]
                                ) if names else np.zeros(0, int)
        rows = Rows(len(coords), space.size, lambda j: (coords[j], 1.0))
        ref = fd.directional(rows, h_rel * np.maximum(1.0, np.abs(theta[coords])))
        for name in names:
            sl = space.slice_of(name)
            comp.add(name, g[sl], ref[(coords >= sl.start) & (coords < sl.stop)])
    else:
        directions = variable_directions(space.names, space.sizes, k, seed)
        pairs = [(name, j) for name in names for j in range(k)]
        rows = Rows(len(pairs), space.size, lambda r: (space.slice_of(pairs[r][0]), directions[pairs[r][0]][pairs[r][1]]))
        steps = [h_rel * max(1.0, float(np.max(np.abs(theta[space.slice_of(name)])))) for name, _ in pairs]
        ref = fd.directional(rows, steps)
        for i, name in enumerate(names):
            sl = space.slice_of(name)
            comp.add(name, directions[name] @ g[sl], ref[i * k:(i + 1) * k])
    details = {"mode": "coordinates" if full else "directions", "autodiff_dtype": obj.dtype.name,
               "reference_dtype": "float64", "relative_step": h_rel, "loss_value": float(value),
               "num_parameters": space.size}
    if found is not None:
        details["non_finite"] = asdict(found)
    return make_result("gradients", comp, directions, fd.num_evaluations - start, details, cuts=cuts, failure=failure)


def check_gradients(model: ModelLike, data: DataLike, loss: LossLike = None, wrt: WrtLike = None, *, directions: int = 4, full: bool | None = None,
                    seed: int = 0, rtol: float | None = None, atol: float | None = None, eps: float | None = None,
                    batch_size: int | None = None, precision: str | None = None,
                    include_regularization: bool = True, reduction: str = "mean", from_logits: bool | None = None,
                    unconnected: str = "error") -> CheckResult:
    """Check the dataset loss gradient against float64 central differences.

    ``<grad f(theta), d>`` (autodiff, in the model's dtype or ``precision``) against
    ``(f(theta + h d) - f(theta - h d)) / 2h`` on a float64 copy of the model, for ``directions`` seeded unit
    directions per variable, or every coordinate (``full``). Cost: one gradient pass plus
    ``2 * directions * num_variables`` (or ``2 * num_parameters``) float64 forward passes over the data.
    Reference: PyTorch ``gradcheck`` (fast mode); Nocedal & Wright 2006, section 8.1.

    Args:
        model, data, loss, wrt: as for :func:`tfpartials.gradients`.
        directions: random unit directions per variable in fast mode.
        full: every coordinate (True), fast mode (False), or automatic (None: full up to 128 parameters).
        seed: seed of the directions; the same seed gives the same directions.
        rtol, atol: tolerances (defaults by dtype, see :mod:`tfpartials.verification.checks`).
        eps: relative step (default ``eps_float64^(1/3)`` = 6.06e-6, times ``max(1, |theta|)``).
        precision: ``"float64"`` runs the autodiff side on the float64 copy as well.
        unconnected: ``"error"`` (default) fails the check for a variable whose gradient is ``None`` and names
            the op that cut it; ``"zero"`` compares it as zero instead.

    Returns:
        A :class:`CheckResult`; ``passed`` is False when any block is off, a gradient is None or NaN/Inf.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, name="lin")])
        >>> x = np.ones((8, 3), "float32"); y = np.zeros((8, 1), "float32")
        >>> tp.check_gradients(m, (x, y), loss="mse").passed
        True
    """
    k, full, seed = validate_options(directions, full, seed)
    ctx = _context(model, data, loss, wrt, batch_size=batch_size, precision=precision,
                   include_regularization=include_regularization, reduction=reduction, from_logits=from_logits,
                   unconnected=unconnected)
    return _gradient_check(ctx, k, full, seed, rtol, atol, eps)


# ----------------------------------------------------------------------------------------------------- HVP
def _hvp_products(obj, data, V, method: str) -> np.ndarray:
    """``H V`` (n, k) over the dataset in float64 numpy, via :func:`tfpartials.autodiff.hvp.hvp_matmat`."""
    from ..autodiff.hvp import hvp_matmat

    return np.asarray(hvp_matmat(obj, data, V, method=method, quiet=True), np.float64)


def _hvp_method(model) -> str:
    """Recurrent layers have no vectorisable forward-mode rule: go straight to the loop the automatic choice
    falls back to (same numbers, without tracing the modes that fail)."""
    recurrent = any(isinstance(layer, keras.layers.RNN) for layer in model._flatten_layers(include_self=False))
    return "loop" if recurrent else "auto"


def _hvp_check(ctx: _Context, k: int, full: bool | None, seed: int, rtol, atol, eps) -> CheckResult:
    hvp = _hvp_products
    obj, space = ctx.obj, ctx.obj.space
    rtol, atol = resolve_tolerances(obj.dtype, rtol, atol)
    cuts = ctx.failing_cuts
    fd = ctx.fd
    theta, start = fd.theta, fd.num_evaluations
    h_rel = relative_step("float64", eps)
    full = space.size <= FULL_AUTO_LIMIT if full is None else full
    if full:
        directions: Any = ALL_COORDINATES
        vectors: Any = Rows(space.size, space.size, lambda j: (j, 1.0))
        steps = h_rel * np.maximum(1.0, np.abs(theta))
    else:
        vectors = unit_directions(space.size, k, np.random.default_rng(seed))
        directions = {"all": vectors}
        steps = h_rel * max(1.0, float(np.max(np.abs(theta))))
    comp = Comparison(rtol, atol)
    failure = None
    steps = np.broadcast_to(np.asarray(steps, np.float64), (len(vectors),))
    width = min(len(vectors), _CHUNK)
    method = _hvp_method(obj.model)
    for a in range(0, len(vectors), width):
        block, h = np.asarray(vectors[a:a + width]), steps[a:a + width]
        m = len(block)
        if m < width:  # every call has the same shape, so each compiled function is traced once
            block = np.concatenate([block, np.zeros((width - m, space.size))])
            h = np.concatenate([h, np.ones(width - m)])
        refs = fd.directional(block, h, gradient=True)[:m]
        fd.num_evaluations -= 2 * (width - m)
        products = hvp(obj, ctx.data, block.T.astype(obj.dtype.as_numpy_dtype), method).T[:m]  # (m, n)
        if not np.all(np.isfinite(products)) and failure is None:
            failure = "the Hessian-vector product holds NaN/Inf values"
        for hv, ref in zip(products, refs):
            for name in space.names:
                sl = space.slice_of(name)
                comp.add(name, hv[sl], ref[sl])
    details = {"mode": "coordinates" if full else "directions", "autodiff_dtype": obj.dtype.name,
               "reference_dtype": "float64", "relative_step": h_rel, "num_parameters": space.size,
               "method": "central differences of float64 gradients along each direction"}
    return make_result("hvp", comp, directions, fd.num_evaluations - start, details, cuts=cuts, failure=failure)


def check_hvp(model: ModelLike, data: DataLike, loss: LossLike = None, wrt: WrtLike = None, *, directions: int = 4, full: bool | None = None,
              seed: int = 0, rtol: float | None = None, atol: float | None = None, eps: float | None = None,
              batch_size: int | None = None, precision: str | None = None, include_regularization: bool = True,
              reduction: str = "mean", from_logits: bool | None = None, unconnected: str = "error") -> CheckResult:
    """Check Hessian-vector products against central differences of float64 gradients.

    ``H d`` (:func:`tfpartials.hvp`, forward-over-reverse in the model's dtype) against
    ``(grad f(theta + h d) - grad f(theta - h d)) / 2h`` on a float64 copy, compared variable by variable, for
    ``directions`` seeded unit directions over all parameters or every coordinate (``full``: the whole
    Hessian). Cost: per direction one HVP and two float64 gradient passes over the data.

    Args: as for :func:`check_gradients`.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="tanh")])
        >>> x = np.ones((8, 3), "float32"); y = np.zeros((8, 1), "float32")
        >>> tp.check_hvp(m, (x, y), loss="mse").passed
        True
    """
    k, full, seed = validate_options(directions, full, seed)
    ctx = _context(model, data, loss, wrt, batch_size=batch_size, precision=precision,
                   include_regularization=include_regularization, reduction=reduction, from_logits=from_logits,
                   unconnected=unconnected)
    return _hvp_check(ctx, k, full, seed, rtol, atol, eps)


# --------------------------------------------------------------------------------------------------- all
def _parse_what(what) -> tuple[str, ...]:
    if isinstance(what, str):
        what = [w.strip() for w in what.split(",") if w.strip()]
    what = tuple(what)
    if not what:
        raise InputError(f"what: expected one or more of {', '.join(CHECKS)}, got nothing")
    for w in what:
        check_choice("what", w, CHECKS)
    return tuple(dict.fromkeys(what))


def check(model: ModelLike, data: DataLike, loss: LossLike = None, what: str | Sequence[str] = CHECKS, wrt=None, *, directions: int = 4,
          full: bool | None = None, seed: int = 0, rtol: float | None = None, atol: float | None = None,
          eps: float | None = None, batch_size: int | None = None, precision: str | None = None,
          include_regularization: bool = True, reduction: str = "mean", from_logits: bool | None = None,
          unconnected: str = "error", jacobian_examples: int = 16, diagnose: bool = True) -> CheckReport:
    """Run the chosen derivative checks and the diagnostics of what breaks derivatives.

    ``what`` picks among ``"gradients"`` (:func:`check_gradients`), ``"hvp"`` (:func:`check_hvp`) and
    ``"jacobian"`` (:func:`check_input_jacobian` on the first ``jacobian_examples`` inputs). The diagnostics
    (``None`` gradients and the op that cut them, the first op producing NaN/Inf, layers whose output depends
    on ``training``) go in ``CheckReport.diagnostics``. One float64 copy of the model serves every check.

    Returns:
        A :class:`CheckReport`; ``report.passed`` is True when every check passed.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="tanh")])
        >>> x = np.ones((8, 3), "float32"); y = np.zeros((8, 1), "float32")
        >>> tp.check(m, (x, y), loss="mse", what="gradients").passed
        True
    """
    chosen = _parse_what(what)
    k, full, seed = validate_options(directions, full, seed)
    jacobian_examples = check_positive_int("jacobian_examples", jacobian_examples)
    ctx = _context(model, data, loss, wrt, batch_size=batch_size, precision=precision,
                   include_regularization=include_regularization, reduction=reduction, from_logits=from_logits,
                   unconnected=unconnected)
    results = []
    for name in chosen:
        if name == "gradients":
            results.append(_gradient_check(ctx, k, full, seed, rtol, atol, eps))
        elif name == "hvp":
            results.append(_hvp_check(ctx, k, full, seed, rtol, atol, eps))
        else:
            x, _ = ctx.data.first(jacobian_examples)
            results.append(jacobian_check(model, ctx.obj.model, ctx.fd.objective.model, x, None, None, k, full,
                                           seed, rtol, atol, eps))
    diagnostics = Diagnostics()
    if diagnose:
        cuts = ctx.cuts
        grad = next((r for r in results if r.name == "gradients"), None)
        if grad is not None:
            found = grad.details.get("non_finite")
            non_finite = (NonFinite(**found),) if found else ()
        elif any("failure" in r.details for r in results):
            found = nonfinite_gradient(ctx.obj, ctx.data)
            non_finite = (found,) if found else ()
        else:
            non_finite = ()
        x, _ = ctx.data.first(min(jacobian_examples, 32))
        dependent = training_dependent_layers(ctx.obj.model, _as_inputs(x, ctx.obj.dtype))
        diagnostics = Diagnostics(cuts, non_finite, dependent)
    return CheckReport(tuple(results), diagnostics)


def _as_inputs(x, dtype):
    from ..autodiff.risk import as_tensors

    return as_tensors(x, dtype)
