"""The TensorFlow side of the audit: each quantity computed by tfpartials' public functions, flattened.

:func:`compute` runs one cell and returns an :class:`Outcome`: the array (parameter quantities flattened in
``model.trainable_variables`` order, input quantities as ``(B, k, n_in[, n_in])``), the FallbackWarning texts,
the one-line refusal when tfpartials raised :class:`~tfpartials.InputError`, and whatever the call printed on
stderr (Python and C++ logging both: file descriptor 2 is redirected around the call).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import traceback
import warnings
from dataclasses import dataclass, field

import numpy as np

import tfpartials as tp

PARAM_QUANTITIES = ("gradient", "hvp_forward", "hvp_reverse", "hvp_loop", "hessian", "ggn", "per_example")
INPUT_QUANTITIES = ("input_jacobian", "input_hessian", "laplacian")
QUANTITIES = PARAM_QUANTITIES + INPUT_QUANTITIES
REFERENCE_KEY = {"gradient": "grad", "hvp_forward": "hvp", "hvp_reverse": "hvp", "hvp_loop": "hvp",
                 "hessian": "hessian", "ggn": "ggn", "per_example": "per_example",
                 "input_jacobian": "input_jacobian", "input_hessian": "input_hessian", "laplacian": "laplacian"}


@dataclass
class Outcome:
    value: np.ndarray | None = None
    fallbacks: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    refused: str | None = None
    error: str | None = None
    stderr: str = ""


@contextlib.contextmanager
def captured_stderr():
    """Everything written to stderr inside the block (sys.stderr and file descriptor 2), as ``box[0]``."""
    box = [""]
    text = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        try:
            fd_saved = os.dup(2)
        except OSError:  # pragma: no cover - no fd 2
            fd_saved = None
        if fd_saved is not None:
            os.dup2(tmp.fileno(), 2)
        try:
            with contextlib.redirect_stderr(text):
                yield box
        finally:
            if fd_saved is not None:
                os.dup2(fd_saved, 2)
                os.close(fd_saved)
            tmp.seek(0)
            box[0] = tmp.read().decode("utf-8", "replace") + text.getvalue()


def _flat(d: dict, names: list[str], lead: int = 0) -> np.ndarray:
    parts = [np.asarray(d[n], dtype="float64") for n in names]
    if lead:
        return np.concatenate([p.reshape(p.shape[0], -1) for p in parts], axis=1)
    return np.concatenate([p.ravel() for p in parts])


def _call(quantity: str, model, x, y, v, *, loss, from_logits, training, precision):
    names = tp.ParameterSpace(model).names
    dtype = "float64" if precision == "float64" else "float32"
    common = dict(loss=loss, from_logits=from_logits, precision=precision, quiet=True)
    data = (x, y)
    if quantity == "gradient":
        return _flat(tp.gradients(model, data, training=training, **common), names)
    if quantity.startswith("hvp_"):
        method = quantity.split("_", 1)[1]
        hv = tp.hvp(model, data, v.astype(dtype), method=method, training=training, **common)
        return _flat(hv, names)
    if quantity == "hessian":
        return np.asarray(tp.hessian(model, data, training=training, **common).matrix, dtype="float64")
    if quantity == "ggn":
        op = tp.GGNOperator(model, data, training=training, **common)
        return np.asarray(op @ v.astype(dtype), dtype="float64")
    if quantity == "per_example":
        if training:
            raise NotApplicable("per-example gradients are defined in inference mode only")
        return _flat(tp.per_example_gradients(model, data, **common), names, lead=1)
    b = x.shape[0]
    kw = dict(precision=precision, quiet=True)
    if quantity == "input_jacobian":
        return np.asarray(tp.input_jacobian(model, x, **kw), dtype="float64").reshape(b, -1, int(np.prod(x.shape[1:])))
    if quantity == "input_hessian":
        n_in = int(np.prod(x.shape[1:]))
        return np.asarray(tp.input_hessian(model, x, index="all", **kw), dtype="float64").reshape(b, -1, n_in, n_in)
    if quantity == "laplacian":
        return np.asarray(tp.laplacian(model, x, component="all", **kw), dtype="float64").reshape(b, -1)
    raise ValueError(f"unknown quantity {quantity!r}")


class NotApplicable(Exception):
    """The cell has no meaning for this model (e.g. per-example gradients with batch statistics)."""


def compute(quantity: str, model, x, y, v, *, loss="mse", from_logits=None, training=False,
            precision=None) -> Outcome:
    out = Outcome()
    with captured_stderr() as err, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out.value = _call(quantity, model, x, y, v, loss=loss, from_logits=from_logits, training=training,
                              precision=precision)
        except tp.InputError as exc:
            out.refused = str(exc)
        except NotApplicable:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is a finding of the audit
            out.error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}"
    out.stderr = err[0]
    for w in caught:
        text = str(w.message)
        if isinstance(w.message, tp.FallbackWarning):
            out.fallbacks.append(text)
        elif "training=True" not in text:
            out.warnings.append(f"{w.category.__name__}: {text}")
    return out
