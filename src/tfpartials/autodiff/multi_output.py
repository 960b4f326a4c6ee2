"""Each output's share of the gradient of a multi-output objective.

For a weighted objective ``L = sum_k w_k L_k + R`` (one loss per output, Keras' ``loss_weights``, and the
model's regularisation ``R``), the gradient is ``g = sum_k w_k g_k + g_R``. Each term's share of it is the
projection ``<w_k g_k, g> / |g|^2``: the shares sum to one, and a negative share means the term pulls
against the total (conflicting objectives).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._backend import tf
from .._checks import InputError
from ..io.losses import MultiLoss, resolve_loss
from ..io.signature import signature
from .problem import prepare
from .risk import accumulate

__all__ = ["output_gradient_shares", "OutputGradientShares"]


@dataclass(frozen=True)
class OutputGradientShares:
    """Per-term decomposition of the gradient of a multi-output objective.

    Attributes:
        names: the outputs with a loss, then ``"regularization"`` when the model has regularisation losses.
        weights: each term's weight (``loss_weights``; 1 for the regularisation).
        values: each term's unweighted dataset value (the per-output losses ``model.evaluate`` reports).
        norms: ``|w_k g_k|``, the norm of each term's weighted gradient.
        shares: ``<w_k g_k, g> / |g|^2`` (sum to one).
        cosines: ``cos(w_k g_k, g)`` (NaN for a zero term).
        total_value: ``sum_k w_k L_k + R``.
        total_norm: ``|g|``.
        gradients: each term's weighted gradient as a flat vector (parameter order of ``parameter_names``).
        parameter_names: names of the chosen parameters.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> inp = keras.Input((2,))
        >>> heads = [keras.layers.Dense(1, name=n, kernel_initializer="ones")(inp) for n in ("a", "b")]
        >>> model = keras.Model(inp, heads)
        >>> x = np.ones((4, 2), "float32"); y = [np.zeros((4, 1), "float32")] * 2
        >>> s = tp.output_gradient_shares(model, (x, y), loss="mse", loss_weights=[1.0, 3.0])
        >>> s.values.tolist(), s.total_value        # each head predicts 2: mse 4; total 1 x 4 + 3 x 4
        ([4.0, 4.0], 16.0)
        >>> (s.norms ** 2).round(3).tolist()         # |w g|^2 with g = (4, 4, 4) per head
        [48.0, 432.0]
    """

    names: tuple[str, ...]
    weights: np.ndarray
    values: np.ndarray
    norms: np.ndarray
    shares: np.ndarray
    cosines: np.ndarray
    total_value: float
    total_norm: float
    gradients: np.ndarray
    parameter_names: tuple[str, ...]

    def to_dict(self) -> dict:
        """Plain numbers: ``{"total": {...}, "terms": [{"name", "weight", "value", "norm", "share", "cosine"}]}``."""
        terms = [{"name": n, "weight": float(w), "value": float(v), "norm": float(g), "share": float(s),
                  "cosine": float(c)}
                 for n, w, v, g, s, c in zip(self.names, self.weights, self.values, self.norms, self.shares,
                                             self.cosines)]
        return {"total": {"value": self.total_value, "norm": self.total_norm}, "terms": terms}


def output_gradient_shares(model, data, loss: Any = None, wrt=None, *, loss_weights=None,
                           from_logits: bool | None = None, batch_size: int | None = None,
                           precision: str | None = None, include_regularization: bool = True,
                           allow_nan: bool = False, quiet: bool = False) -> OutputGradientShares:
    """Each output's (and the regularisation's) share of the gradient of a multi-output objective.

    ``g = sum_k w_k g_k + g_R``; share ``s_k = <w_k g_k, g> / |g|^2`` (``sum_k s_k = 1``). Cost: one forward
    pass and one backward pass per term over the data (all terms from one forward pass per batch).

    Args:
        model: a built multi-output Keras model (not modified).
        data: ``(x, y)`` with one target per output (a dict by output name or a list), or a path.
        loss: per-output losses (a dict or list), one loss for every output, or None for the compiled loss.
        wrt: variable names / globs; default all trainable variables.
        loss_weights: per-output weights; default the compiled ``loss_weights``, else 1.

    Returns:
        :class:`OutputGradientShares`.

    Raises:
        InputError: a single-output model, or losses/weights that do not match the outputs.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> from tfpartials.autodiff.multi_output import output_gradient_shares
        >>> inp = keras.Input((2,))
        >>> a = keras.layers.Dense(1, name="a", kernel_initializer="ones")(inp)
        >>> b = keras.layers.Dense(1, name="b", kernel_initializer="ones")(inp)
        >>> model = keras.Model(inp, [a, b])
        >>> x = np.ones((4, 2), "float32"); y = [np.zeros((4, 1), "float32")] * 2
        >>> s = output_gradient_shares(model, (x, y), loss="mse", loss_weights=[1.0, 3.0])
        >>> s.names, s.shares.round(6).tolist()          # orthogonal heads: share = |w g|^2 / |g|^2
        (('a', 'b'), [0.1, 0.9])
    """
    names = signature(model).output_names
    if len(names) < 2:
        raise InputError(f"the model has one output ({names[0]!r}); per-output gradient shares need several")
    multi = resolve_loss(loss, from_logits, model, loss_weights=loss_weights)
    if not isinstance(multi, MultiLoss):  # one loss for every output
        multi = resolve_loss(multi, None, model, loss_weights=[1.0] * len(names))
    obj, d = prepare(model, data, multi, wrt, batch_size=batch_size, precision=precision,
                     include_regularization=include_regularization, allow_nan=allow_nan)
    loss_obj: MultiLoss = obj.loss
    active = [k for k, item in enumerate(loss_obj.losses) if item is not None]
    zero = tf.UnconnectedGradients.ZERO

    def build():
        def step(params, x, y, mask, scale, regw):
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(params)
                outputs, losses = obj.forward(params, x, return_losses=True)
                outputs = tf.nest.map_structure(lambda o: tf.cast(o, obj.dtype), outputs)
                per = loss_obj.per_output(y, outputs)
                m = tf.cast(mask, obj.dtype)
                terms = [scale * tf.reduce_sum(m * tf.cast(per[k], obj.dtype)) for k in active]
                terms.append(regw * obj.regularization(losses))
            grads = [obj.space.flatten(tape.gradient(t, params, unconnected_gradients=zero)) for t in terms]
            del tape
            return tf.stack(terms), tf.stack(grads)
        return step

    step = obj.function(("output_gradient_shares", tuple(active)), build)
    values, grads = accumulate(obj, d, step, obj.space.values(), description="per-output gradients", quiet=quiet)
    values, grads = values.numpy().astype(np.float64), grads.numpy().astype(np.float64)
    weights = np.array([loss_obj.weights[k] for k in active] + [1.0])
    term_names = [loss_obj.output_names[k] for k in active] + ["regularization"]
    if not (include_regularization and obj.model.losses):
        values, grads, weights, term_names = values[:-1], grads[:-1], weights[:-1], term_names[:-1]
    weighted = weights[:, None] * grads
    total = weighted.sum(axis=0)
    total_sq = float(total @ total)
    norms = np.linalg.norm(weighted, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = weighted @ total / total_sq if total_sq > 0 else np.full(len(weights), np.nan)
        cosines = weighted @ total / (norms * np.sqrt(total_sq))
    return OutputGradientShares(tuple(term_names), weights, values, norms, shares, cosines,
                                float(weights @ values), float(np.sqrt(total_sq)), weighted,
                                tuple(obj.space.names))
