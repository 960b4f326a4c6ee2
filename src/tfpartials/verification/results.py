"""Check results and the blockwise comparison of autodiff against finite differences.

A block (one variable, or one output component of an input Jacobian) passes when

    max_i |autodiff_i - fd_i|  <=  atol + rtol * max_i |fd_i|

(a normwise test, so a directional derivative that is near zero by cancellation is not held to a relative
tolerance it cannot meet). ``max_rel_error`` is ``max_i |autodiff_i - fd_i| / max(max_i |fd_i|, atol)``, and the
worst block the one with the largest ``error / (atol + rtol * scale)``. Default tolerances by the autodiff
dtype are in :func:`default_tolerances` (see :mod:`tfpartials.verification.checks`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .._backend import tf
from .._checks import check_positive_float, check_positive_int, check_seed
from .diagnostics import Diagnostics, GradientCut

__all__ = ["CheckResult", "CheckReport", "default_tolerances", "FULL_AUTO_LIMIT", "CHECKS", "ALL_COORDINATES",
           "Comparison", "make_result", "skipped_result", "resolve_tolerances", "validate_options"]

FULL_AUTO_LIMIT = 128  # full (every-coordinate) mode by default up to this many coordinates
CHECKS = ("gradients", "hvp", "jacobian")
_TOLERANCES = {"float64": (1e-6, 1e-9), "float32": (1e-3, 1e-5), "half": (5e-2, 1e-3)}
ALL_COORDINATES = "all coordinates"


def default_tolerances(dtype) -> tuple[float, float]:
    """``(rtol, atol)`` for autodiff in ``dtype`` against float64 finite differences (module docstring).

    Example:
        >>> import tfpartials as tp
        >>> tp.default_tolerances("float32"), tp.default_tolerances("float64")
        ((0.001, 1e-05), (1e-06, 1e-09))
    """
    name = tf.as_dtype(dtype).name
    if name == "float64":
        return _TOLERANCES["float64"]
    if name == "float32":
        return _TOLERANCES["float32"]
    return _TOLERANCES["half"]


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one derivative check.

    Attributes:
        name: ``"gradients"``, ``"hvp"`` or ``"jacobian"``.
        passed: every block within tolerance, no ``None`` gradient and no NaN/Inf (True when skipped).
        max_abs_error: largest ``|autodiff - finite difference|``.
        max_rel_error: largest blockwise relative error (module docstring).
        worst_variable: the variable (or output component) with the largest error relative to its tolerance.
        directions: the seeded unit directions used, ``{block: (k, size) array}``, or ``"all coordinates"``.
        num_evaluations: float64 function (or gradient) evaluations spent on finite differences.
        details: per-block errors, tolerances, step, dtypes and any ``None`` gradients or NaN/Inf found.
        skipped: why the check did not run (e.g. an integer input), else None.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="lin")])
        >>> x = np.ones((4, 2), "float32"); y = np.zeros((4, 1), "float32")
        >>> r = tp.check_gradients(model, (x, y), loss="mse")       # 3 parameters: every coordinate checked
        >>> r.name, r.passed, r.directions, r.max_rel_error < 1e-3
        ('gradients', True, 'all coordinates', True)
        >>> r.summary().split(" (")[0]
        'gradients: passed'
    """

    name: str
    passed: bool
    max_abs_error: float
    max_rel_error: float
    worst_variable: str | None
    directions: Any
    num_evaluations: int
    details: dict = field(default_factory=dict)
    skipped: str | None = None

    def summary(self) -> str:
        """One line for people."""
        if self.skipped:
            return f"{self.name}: skipped ({self.skipped})"
        verdict = "passed" if self.passed else "FAILED"
        return (f"{self.name}: {verdict} (max abs error {self.max_abs_error:.3g}, max rel error "
                f"{self.max_rel_error:.3g}, worst {self.worst_variable})")


@dataclass(frozen=True)
class CheckReport:
    """All checks run by :func:`check`, and what the diagnostics found.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="lin")])
        >>> x = np.ones((4, 2), "float32"); y = np.zeros((4, 1), "float32")
        >>> report = tp.check(model, (x, y), loss="mse", what="gradients")
        >>> report.passed, [r.name for r in report.results], report["gradients"].passed, report.diagnostics.empty
        (True, ['gradients'], True, True)
    """

    results: tuple[CheckResult, ...]
    diagnostics: Diagnostics = field(default_factory=Diagnostics)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def __getitem__(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"no check named {name!r}; ran {', '.join(r.name for r in self.results)}")

    def to_dict(self) -> dict:
        """Plain data for JSON (directions are summarised by their shapes)."""
        return {"passed": self.passed,
                "results": [_result_dict(r) for r in self.results],
                "diagnostics": asdict(self.diagnostics)}


def _result_dict(r: CheckResult) -> dict:
    out = asdict(r)
    if isinstance(r.directions, dict):
        out["directions"] = {k: list(np.shape(v)) for k, v in r.directions.items()}
    return out


# --------------------------------------------------------------------------------------------- comparison
class Comparison:
    """Blockwise errors of autodiff against finite differences (see the module docstring)."""

    def __init__(self, rtol: float, atol: float):
        self.rtol, self.atol = rtol, atol
        self.blocks: dict[str, tuple[list, list]] = {}

    def add(self, block: str, autodiff, reference) -> None:
        a, r = self.blocks.setdefault(block, ([], []))
        a.append(np.ravel(np.asarray(autodiff, np.float64)))
        r.append(np.ravel(np.asarray(reference, np.float64)))

    def rows(self) -> dict[str, dict]:
        out = {}
        for name, (a, r) in self.blocks.items():
            a, r = np.concatenate(a), np.concatenate(r)
            err = np.abs(a - r)
            finite = bool(np.all(np.isfinite(err)))
            max_abs = float(np.max(err)) if finite and err.size else (0.0 if finite else math.inf)
            scale = float(np.max(np.abs(r))) if r.size and np.all(np.isfinite(r)) else 0.0
            bound = self.atol + self.rtol * scale
            out[name] = {"max_abs_error": max_abs, "scale": scale,
                         "max_rel_error": max_abs / max(scale, self.atol),
                         "ratio": max_abs / bound, "passed": finite and max_abs <= bound, "checked": int(a.size)}
        return out


def resolve_tolerances(dtype, rtol, atol) -> tuple[float, float]:
    d_rtol, d_atol = default_tolerances(dtype)
    rtol = d_rtol if rtol is None else check_positive_float("rtol", rtol)
    atol = d_atol if atol is None else check_positive_float("atol", atol, allow_zero=True)
    return rtol, atol


def make_result(name: str, comp: Comparison, directions, evaluations: int, details: dict, *,
            cuts: Sequence[GradientCut] = (), failure: str | None = None) -> CheckResult:
    rows = comp.rows()
    max_abs = max((r["max_abs_error"] for r in rows.values()), default=0.0)
    max_rel = max((r["max_rel_error"] for r in rows.values()), default=0.0)
    worst = max(rows, key=lambda k: rows[k]["ratio"]) if rows else None
    passed = all(r["passed"] for r in rows.values()) and not cuts and failure is None
    if cuts:
        worst = cuts[0].variable
    details = {**details, "rtol": comp.rtol, "atol": comp.atol, "blocks": rows}
    if cuts:
        details["gradient_cuts"] = [asdict(c) for c in cuts]
    if failure:
        details["failure"] = failure
    return CheckResult(name, passed, max_abs, max_rel, worst, directions, evaluations, details)


def skipped_result(name: str, reason: str) -> CheckResult:
    return CheckResult(name, True, 0.0, 0.0, None, None, 0, {"skipped": reason}, skipped=reason)


def validate_options(directions, full, seed) -> tuple[int, bool | None, int]:
    k = check_positive_int("directions", directions)
    if full is not None and not isinstance(full, bool):
        raise TypeError(f"full: expected True, False or None, got {full!r}")
    return k, full, check_seed(seed)


