"""Dataset-exact loss gradients with respect to chosen parameters."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._backend import tf
from .._types import DataLike, LossLike, ModelLike, WrtLike
from .objective import Objective
from .problem import objective_for, prepare
from .risk import accumulate

__all__ = ["gradients", "value_and_gradient", "batch_gradient_function", "value_and_gradients"]


def batch_gradient_function(obj: Objective):
    """Compiled ``(params, x, y, mask, scale, reg_weight) -> (value, [grad per variable])`` for one batch."""
    def build():
        def step(params, x, y, mask, scale, regw):
            with tf.GradientTape() as tape:
                tape.watch(params)
                value = obj.batch_value(params, x, y, mask, scale, regw)
            return value, obj.checked_gradient(tape, value, params)
        return step
    return obj.function("gradient", build)


def value_and_gradient(obj: Objective, data, *, quiet: bool = False, description: str = "gradient"):
    """(objective value, flat gradient) over the whole dataset, exact; tensors in the objective's dtype."""
    step = batch_gradient_function(obj)
    value, grads = accumulate(obj, data, step, obj.space.values(), description=description, quiet=quiet)
    return value, obj.space.flatten(grads)


def gradients(model: ModelLike, data: DataLike, loss: LossLike = None, wrt: WrtLike = None, *, batch_size: int | None = None,
              precision: str | None = None, training: bool = False, include_regularization: bool = True,
              reduction: str = "mean", unconnected: str = "error", from_logits: bool | None = None,
              allow_nan: bool = False, quiet: bool = False, strategy=None) -> dict[str, np.ndarray]:
    """Gradient of the dataset loss with respect to the chosen variables.

    The objective is ``(1/N) sum_i loss(y_i, model(x_i)) + R`` with N counted exactly (a partial last batch
    does not bias it), R the model's regularisation losses, and the model in inference mode.
    Cost: one forward and one backward pass over the data.

    Args:
        model: a built Keras model (not modified).
        data: ``(x, y)`` arrays, a ``tf.data.Dataset`` of ``(x, y)``, or a path (``.npz``/``.csv``).
        loss: Keras loss name, object or callable ``(y_true, y_pred) -> (B,)``; default the compiled loss.
        wrt: variable names, globs (``"dense_1/*"``) or layer names; default all trainable variables.
        batch_size: examples per batch (memory only; the result does not depend on it).
        precision: ``"float64"`` computes on a float64 copy of the model.
        unconnected: ``"error"`` (default) or ``"zero"`` for variables the loss does not depend on.
        strategy: a ``tf.distribute.Strategy`` to spread the pass over devices or workers (same numbers).

    Returns:
        ``{name: array}`` keyed by ``<layer>/<variable>``, in model order.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, name="lin")])
        >>> x = np.ones((5, 3), "float32"); y = np.zeros((5, 1), "float32")
        >>> g = tp.gradients(model, (x, y), loss="mse")
        >>> sorted(g)
        ['lin/bias', 'lin/kernel']
    """
    obj, d = prepare(model, data, loss, wrt, batch_size=batch_size, precision=precision, training=training,
                     include_regularization=include_regularization, reduction=reduction,
                     unconnected=unconnected, from_logits=from_logits, allow_nan=allow_nan,
                     strategy=strategy)
    _, flat = value_and_gradient(obj, d, quiet=quiet)
    return obj.space.to_dict(flat.numpy())


def value_and_gradients(model, x, y, loss: Any = None, wrt=None, *, training: bool = False,
                        include_regularization: bool = True, sample_weight=None):
    """Loss value and gradients for one batch, for custom training loops (works inside ``tf.function``).

    Returns ``(loss, grads)`` where ``grads`` is a list aligned with the chosen variables (all trainable
    variables by default, in ``model.trainable_variables`` order), ready for ``optimizer.apply_gradients``.
    The loss is the mean per-example loss (weighted by ``sample_weight``) plus regularisation.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, kernel_initializer="zeros")])
        >>> x = np.array([[1.0, 0.0], [0.0, 2.0]], "float32"); y = np.ones((2, 1), "float32")
        >>> loss, (g_kernel, g_bias) = tp.value_and_gradients(model, x, y, loss="mse")
        >>> float(loss), g_kernel.numpy().ravel().tolist(), g_bias.numpy().tolist()   # -(2/N) X^T y, -(2/N) sum y
        (1.0, [-1.0, -2.0], [-2.0])
    """
    obj = objective_for(model, loss, wrt, training=training, include_regularization=include_regularization)
    params = obj.space.values()
    x = tf.nest.map_structure(tf.convert_to_tensor, x)
    with tf.GradientTape() as tape:
        tape.watch(params)
        outputs, losses = obj.forward(params, x, return_losses=True)
        per = tf.cast(obj._loss_of(outputs, y), obj.dtype)
        if sample_weight is None:
            value = tf.reduce_mean(per)
        else:
            w = tf.cast(sample_weight, obj.dtype)
            value = tf.reduce_sum(w * per) / tf.reduce_sum(w)
        value = value + obj.regularization(losses)
    grads = obj.checked_gradient(tape, value, params)
    return value, grads
