"""Type aliases for the arguments every public function takes, so that ``py.typed`` tells the truth.

Annotations only: with ``from __future__ import annotations`` nothing here is evaluated at run time, so the
aliases cost no import of TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:  # pragma: no cover
    import keras
    import numpy.typing as npt
    import tensorflow as tf

    from .autodiff.objective import Objective
    from .io.data import Data
    from .io.losses import Loss

__all__ = ["ModelLike", "DataLike", "InputsLike", "LossLike", "WrtLike", "VectorLike"]

ModelLike: TypeAlias = "keras.Model | Objective"
"""A built Keras model (never modified), or an :class:`~tfpartials.Objective` built from one."""

InputsLike: TypeAlias = "npt.ArrayLike | Sequence[npt.ArrayLike] | Mapping[str, npt.ArrayLike]"
"""Model inputs: one array ``(B, *in)``, or a list / dict of arrays for a multi-input model."""

DataLike: TypeAlias = ("tuple[InputsLike, Any] | tf.data.Dataset | str | os.PathLike[str] | Data")
"""``(x, y)`` arrays, a ``tf.data.Dataset`` of ``(x, y)``, a path (``.npz``, ``.npy``, ``.csv``) or a Data."""

LossLike: TypeAlias = "str | Loss | keras.losses.Loss | Any | None"
"""A Keras loss name, object or callable; None for the loss the model was compiled with."""

WrtLike: TypeAlias = "str | Sequence[str] | None"
"""Variable names, globs or layer names; None for every trainable variable."""

VectorLike: TypeAlias = "npt.ArrayLike | Mapping[str, npt.ArrayLike]"
"""A flat vector in parameter order, or a ``{name: array}`` dict."""

_ = (os, Mapping, Sequence, Any)  # referenced inside the string aliases
