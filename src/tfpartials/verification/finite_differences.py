"""Central finite differences in float64: the independent reference every derivative check compares against.

The difference quotient along a unit direction ``d`` is

    D_h f(theta; d) = (f(theta + h d) - f(theta - h d)) / (2 h)  =  <grad f, d> + O(h^2) + O(eps |f| / h)

so the step that balances truncation against round-off is ``h ~ eps^(1/3)`` scaled to the size of the
coordinates: we use ``h = eps^(1/3) * max(1, |theta|_inf)`` with ``eps`` the machine epsilon of the dtype the
differences are evaluated in (float64: ``eps^(1/3) = 6.06e-6``; float32, never used by the checks: ``4.9e-3``).
Its error is about ``h^2 |f'''| / 6 + eps |f| / h``, i.e. ~1e-10 relative in float64 for smooth models -- far below
float32 round-off, which is why the differences are always taken on a float64 copy of the model.
Reference: Nocedal & Wright, "Numerical Optimization", 2nd ed., 2006, section 8.1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._backend import tf
from .._checks import InputError, check_positive_float
from .._memory import activation_bytes, plan_chunks
from ..autodiff.objective import Objective
from ..autodiff.risk import accumulate
from ..io.data import Data
from ..io.precision import float64_copy

__all__ = ["relative_step", "step_size", "unit_directions", "variable_directions", "FiniteDifferenceObjective",
           "central_difference", "input_difference", "Rows"]

_MAX_DIRECTIONS = 32  # directions differenced per compiled call (2 parameter vectors each)
_PARALLEL = 4  # rows evaluated concurrently inside a call


def relative_step(dtype: Any = "float64", eps: float | None = None) -> float:
    """``eps^(1/3)`` for ``dtype`` (or the user's ``eps`` as is): the step relative to ``max(1, |theta|)``."""
    if eps is not None:
        return check_positive_float("eps", eps)
    return float(np.finfo(tf.as_dtype(dtype).as_numpy_dtype).eps) ** (1.0 / 3.0)


def step_size(scale: float, dtype: Any = "float64", eps: float | None = None) -> float:
    """The central-difference step ``h = eps^(1/3) * max(1, scale)`` (see the module docstring)."""
    return relative_step(dtype, eps) * max(1.0, float(scale))


def unit_directions(size: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` random unit vectors of length ``size`` (Gaussian, normalised), float64 ``(k, size)``."""
    d = rng.standard_normal((k, size))
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def variable_directions(names: Sequence[str], sizes: Sequence[int], k: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded unit directions per variable: ``{name: (k, size)}``; the same seed gives the same directions."""
    rng = np.random.default_rng(seed)
    return {name: unit_directions(size, k, rng) for name, size in zip(names, sizes)}


def central_difference(f, theta: np.ndarray, direction: np.ndarray, h: float):
    """``(f(theta + h d) - f(theta - h d)) / (2 h)`` for a function of a flat float64 vector."""
    return (f(theta + h * direction) - f(theta - h * direction)) / (2.0 * h)


class Rows:
    """``count`` direction rows of length ``n`` made on demand: ``rows[a:b]`` is an ``(b - a, n)`` array.

    ``fill(j)`` returns ``(where, values)`` for row ``j`` (the row is zero elsewhere), so full mode and
    per-variable directions never hold all their rows at once.
    """

    def __init__(self, count: int, n: int, fill):
        self.count, self.n, self.fill = int(count), int(n), fill

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, s: slice) -> np.ndarray:
        idx = range(self.count)[s]
        out = np.zeros((len(idx), self.n))
        for r, j in enumerate(idx):
            where, values = self.fill(j)
            out[r, where] = values
        return out


class FiniteDifferenceObjective:
    """The dataset objective of ``objective`` re-evaluated on a float64 copy of its model, exactly over ``data``.

    Same loss, same parameters (by name), same reduction and regularisation; the user's model is untouched.
    ``value(theta)`` costs one forward pass over the data, ``gradient(theta)`` one forward and one backward.
    """

    def __init__(self, objective: Objective, data: Data):
        model = objective.model
        if objective.dtype != tf.float64:
            model = float64_copy(model)
        if model is objective.model:
            self.objective = objective
        else:
            self.objective = Objective(model, objective.loss, list(objective.space.names),
                                       training=objective.training,
                                       include_regularization=objective.include_regularization,
                                       reduction=objective.reduction, unconnected="zero")
        self.space = self.objective.space
        self.data = data.cast("float64")
        self.theta = self.space.flatten(self.space.values()).numpy().astype(np.float64)
        self.num_evaluations = 0
        self._activations = activation_bytes(self.objective.model, 8) * self.data.batch_size

    def _compiled(self, gradient: bool):
        obj, space = self.objective, self.space

        def build():
            def step(params, x, y, mask, scale, regw, stack):
                def one(theta):
                    if not gradient:
                        return obj.batch_value(space.unflatten(theta), x, y, mask, scale, regw)
                    with tf.GradientTape() as tape:
                        tape.watch(theta)
                        value = obj.batch_value(space.unflatten(theta), x, y, mask, scale, regw)
                    return tape.gradient(value, theta, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                # a graph loop over the rows: each row already runs a whole batch, so vectorising across rows
                # (tf.vectorized_map) saves little time and costs more to trace (far more for recurrent layers)
                return tf.map_fn(one, stack, fn_output_signature=tf.float64, parallel_iterations=_PARALLEL)
            return step

        return obj.function("fd_gradients" if gradient else "fd_values", build)

    def evaluate(self, thetas: np.ndarray, gradient: bool = False) -> np.ndarray:
        """The float64 dataset objective (``(m,)``) or its gradient (``(m, n)``) at each row of ``thetas``.

        All rows go through one compiled call per batch (a ``tf.map_fn`` loop over the rows): Python overhead is
        paid once per call, not once per evaluation. Cost: ``m`` forward (and backward)
        passes over the data.
        """
        step = self._compiled(gradient)
        thetas = np.atleast_2d(np.asarray(thetas, np.float64))
        self.num_evaluations += len(thetas)
        return accumulate(self.objective, self.data, step, [], tf.constant(thetas), quiet=True).numpy()

    def values(self, thetas: np.ndarray) -> np.ndarray:
        """The float64 dataset objective at each row of ``thetas`` ``(m, n)``: ``(m,)``, exact over the data."""
        return self.evaluate(thetas)

    def value(self, theta: np.ndarray) -> float:
        """The float64 dataset objective at the flat parameters ``theta``."""
        return float(self.evaluate(theta[None])[0])

    def gradient(self, theta: np.ndarray) -> np.ndarray:
        """The float64 dataset gradient at ``theta`` (flat), by reverse mode on the float64 copy."""
        return self.evaluate(theta[None], gradient=True)[0]

    def chunk_size(self, count: int, gradient: bool = False) -> int:
        """Directions differenced per call: at most 32, fewer when their ``2 * chunk`` parameter vectors (and
        results) would not fit the memory budget next to the activations of the rows in flight."""
        per_direction = 2 * (6 if gradient else 3) * 8 * max(self.space.size, 1)
        in_flight = _PARALLEL * (3 if gradient else 1) * self._activations
        return plan_chunks(max(count, 1), per_direction, fixed=in_flight, what="finite differences",
                           max_chunk=_MAX_DIRECTIONS).chunk

    def directional(self, directions, steps, gradient: bool = False) -> np.ndarray:
        """Central differences of the value (or the gradient) along each row of ``directions``.

        ``directions`` is a ``(k, n)`` array or any object with ``len()`` and row slicing (rows are then made
        chunk by chunk); ``steps`` is one step ``h`` or one per direction. Every call but the last has the same
        shape, and the last is padded to it, so the compiled function is traced once. Returns ``(k,)`` (or
        ``(k, n)`` for gradients).
        """
        k = len(directions)
        h = np.broadcast_to(np.asarray(steps, np.float64), (k,))
        c = self.chunk_size(k, gradient)
        out, padding = [], 0
        for a in range(0, k, c):
            rows = np.atleast_2d(np.asarray(directions[a:a + c], np.float64))
            hb = h[a:a + c, None]
            m = len(rows)
            if m < c and k > c:  # pad to the common shape
                rows = np.concatenate([rows, np.zeros((c - m, rows.shape[1]))])
                hb = np.concatenate([hb, np.ones((c - m, 1))])
                padding += 2 * (c - m)
            f = self.evaluate(np.concatenate([self.theta + hb * rows, self.theta - hb * rows]), gradient)
            half = len(rows)
            diff = (f[:half] - f[half:]) / (2.0 * hb if gradient else 2.0 * hb[:, 0])
            out.append(diff[:m])
        self.num_evaluations -= padding  # padded rows are not evaluations of interest
        return np.concatenate(out) if out else np.zeros((0,) if not gradient else (0, self.space.size))

    def embed(self, name: str, block: np.ndarray) -> np.ndarray:
        """A flat vector that is ``block`` on variable ``name`` and zero elsewhere."""
        out = np.zeros(self.space.size)
        out[self.space.slice_of(name)] = block
        return out


def _structure(model, arrays: list):
    inputs = getattr(model, "input", None)
    if isinstance(inputs, dict):
        return dict(zip(inputs.keys(), arrays))
    return arrays[0] if len(arrays) == 1 else arrays


def input_difference(model64, x_arrays: list, input_index: int, output_index: int, directions: np.ndarray,
                     h: float, max_rows: int = 4096) -> np.ndarray:
    """``(y(x + h d) - y(x - h d)) / (2 h)`` for the chosen input and output of a float64 model, per example.

    ``directions`` is ``(k, *shape of one example of the chosen input)``; each is applied to every example and
    the other inputs are held fixed. All perturbed copies go through the model together (at most ``max_rows``
    rows per call). Returns ``(k, B, n_out)`` float64.
    """
    arrays = [np.asarray(a) for a in x_arrays]
    if not np.issubdtype(arrays[input_index].dtype, np.floating):
        raise InputError("finite differences need a floating input")
    base = arrays[input_index].astype(np.float64)
    B, k = len(base), len(directions)
    per_call = max(1, max_rows // max(2 * B, 1))
    out = []
    for a in range(0, k, per_call):
        d = np.asarray(directions[a:a + per_call], np.float64)
        shifted = np.concatenate([base[None] + h * d[:, None], base[None] - h * d[:, None]])  # (2m, B, ...)
        rows = [np.concatenate([arr] * (2 * len(d))) if j != input_index else shifted.reshape(-1, *base.shape[1:])
                for j, arr in enumerate(arrays)]
        y = model64(_structure(model64, rows), training=False)
        if isinstance(y, dict):
            y = list(y.values())[output_index]
        elif isinstance(y, list | tuple):
            y = y[output_index]
        y = np.asarray(y, np.float64).reshape(2, len(d), B, -1)
        out.append((y[0] - y[1]) / (2.0 * h))
    return np.concatenate(out)
