"""Attribution methods by name: the registry behind :func:`attribute` and ``tfpartials attribute --method``.

A method is registered under one canonical name (the command line's spelling) with a few aliases; SmoothGrad
is not a method of its own but a wrapper around one (``inner=``, default saliency).
"""

from __future__ import annotations

import numpy as np

from .._checks import InputError
from .base import AttributionMethod, TargetSpec
from .gradient_x_input import GradientXInput
from .integrated_gradients import IntegratedGradients
from .saliency import Saliency
from .smoothgrad import SmoothGrad

__all__ = ["METHODS", "make_method", "attribute"]

_CLASSES: dict[str, type[AttributionMethod]] = {
    "saliency": Saliency,
    "gradient-x-input": GradientXInput,
    "integrated-gradients": IntegratedGradients,
}
_ALIASES = {"ig": "integrated-gradients", "gxi": "gradient-x-input", "gradient-times-input": "gradient-x-input",
            "input-x-gradient": "gradient-x-input"}
_SMOOTHGRAD_OPTIONS = ("num_samples", "noise_std", "seed")

#: method names accepted by :func:`attribute` and the command line
METHODS = (*_CLASSES, "smoothgrad")


def _canonical(method) -> str:
    key = str(method).lower().replace("_", "-")
    return _ALIASES.get(key, key)


def make_method(method: str, model, **options) -> AttributionMethod | SmoothGrad:
    """Build an attribution method by name (``"saliency"``, ``"gradient-x-input"``,
    ``"integrated-gradients"``, ``"smoothgrad"``); SmoothGrad takes ``inner=`` a method name (default saliency)
    and passes options it does not know (``layer=``, ``steps=``, ...) to the inner method.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False,
        ...                                                                 kernel_initializer="ones")])
        >>> x = np.array([[1.0, 2.0, 3.0]], "float32")
        >>> ig = tp.make_method("integrated-gradients", model, steps=4)
        >>> type(ig).__name__, ig.attribute(x).tolist()          # linear: x * w exactly
        ('IntegratedGradients', [[1.0, 2.0, 3.0]])
        >>> sg = tp.make_method("smoothgrad", model, inner="saliency", num_samples=4)
        >>> type(sg).__name__, sg.attribute(x).tolist()          # the gradient is w wherever the noise lands
        ('SmoothGrad', [[1.0, 1.0, 1.0]])
    """
    key = _canonical(method)
    if key not in METHODS:
        raise InputError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    if key == "smoothgrad":
        sg = {k: options.pop(k) for k in _SMOOTHGRAD_OPTIONS if k in options}
        inner = options.pop("inner", "saliency")
        if _canonical(inner) == "smoothgrad":
            raise InputError("smoothgrad: the inner method cannot itself be smoothgrad")
        return SmoothGrad(make_method(inner, model, **options), **sg)
    return _CLASSES[key](model, **options)


def attribute(model, x, method: str = "integrated-gradients", target: TargetSpec = None, **options) -> np.ndarray:
    """Attributions of ``model`` at ``x`` by a method named like the command line's ``--method``.

    ``attribute(model, x, "integrated-gradients", target=3, steps=64)`` equals
    ``IntegratedGradients(model, steps=64).attribute(x, target=3)``.

    Args:
        model: a single-input Keras model.
        x: a batch of inputs ``(B, ...)``.
        method: one of :data:`METHODS`.
        target: see :class:`AttributionMethod`.
        **options: constructor options of the method (``steps``, ``baseline``, ``layer``, ``num_samples``, ...).

    Example:
        >>> import numpy as np, keras
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> w = model.layers[0].kernel.numpy()[:, 0]
        >>> x = np.array([[3.0, -1.0]], "float32")
        >>> bool(np.allclose(attribute(model, x, "gradient-x-input"), x * w))
        True
    """
    return make_method(method, model, **options).attribute(x, target)
