"""A float64 copy of a Keras model: rebuilt from its config with a float64 dtype policy, weights cast.

The user's model is never touched. Layers that cannot be rebuilt from their config (custom classes that are
not registered) raise a clear error.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .._backend import keras, tf
from .._checks import InputError, check_choice

__all__ = ["Precision", "with_precision", "float64_copy"]

Precision = Literal["float32", "float64"]


def _set_dtype(obj, dtype: str):
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k == "dtype" and (isinstance(v, str) or isinstance(v, dict) and v.get("class_name") in (
                    "DTypePolicy", "Policy", "FloatDTypePolicy")):
                if isinstance(v, str) and not v.startswith(("float", "mixed", "bfloat")):
                    out[k] = v  # keep integer input dtypes
                else:
                    out[k] = dtype
            else:
                out[k] = _set_dtype(v, dtype)
        return out
    if isinstance(obj, list):
        return [_set_dtype(v, dtype) for v in obj]
    return obj


def float64_copy(model) -> keras.Model:
    """Return a float64 copy of ``model`` (same architecture and weights, every float variable in float64)."""
    return _copy_with_dtype(model, "float64")


def _copy_with_dtype(model, dtype: str):
    try:
        config = model.get_config()
    except NotImplementedError:
        raise InputError(f"cannot rebuild {type(model).__name__} in {dtype}: it has no get_config(); "
                         "implement get_config() for subclassed models or use precision='float32'") from None
    config = _set_dtype(config, dtype)
    try:
        with keras.utils.custom_object_scope({}):
            copy = type(model).from_config(config)
    except Exception as exc:  # custom layers without registration or config support
        raise InputError(f"cannot rebuild the model in {dtype} from its config ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); register custom layers with "
                         "keras.saving.register_keras_serializable or use precision='float32'") from None
    src, dst = model.weights, copy.weights
    if not copy.built or len(src) != len(dst):
        try:
            copy.build(model.input_shape)
            dst = copy.weights
        except Exception:
            pass
    if len(src) != len(dst):
        raise InputError(f"cannot rebuild the model in {dtype}: the copy has {len(dst)} weights, the original "
                         f"{len(src)}")
    for s, d in zip(src, dst):
        val = np.asarray(s.numpy())
        if tuple(val.shape) != tuple(d.shape):
            raise InputError(f"cannot rebuild the model in {dtype}: weight shapes differ ({s.path})")
        d.assign(val.astype(d.dtype) if np.issubdtype(val.dtype, np.floating) else val)
    for attr in ("_tfpartials_loss", "_tfpartials_source"):
        if hasattr(model, attr):
            setattr(copy, attr, getattr(model, attr))
    return copy


def with_precision(model, precision: Precision | None):
    """``model`` itself for ``None`` or its own dtype, else a copy in ``precision``."""
    if precision is None:
        return model
    check_choice("precision", precision, ("float32", "float64"))
    current = model.trainable_variables[0].dtype if model.trainable_variables else "float32"
    if tf.as_dtype(current).name == precision:
        return model
    return _copy_with_dtype(model, precision)
