"""A copy of a Keras model in another floating dtype (float64 for verification), the original untouched.

The copy is rebuilt from the model's config with every floating dtype policy replaced (integer input dtypes
such as token ids are kept) while the global default dtype policy is set to the target dtype, so layers that
subclassed models create in ``__init__`` follow it too. Every variable is then copied and cast: trainable
weights, non-trainable state (BatchNorm moving statistics) and seed-generator states. Stable parameter names
(:mod:`tfpartials.params`) are the same in the copy, so ``wrt=`` patterns and result keys carry over.

Custom layer classes found in the model are offered to deserialisation, so an unregistered custom layer whose
``get_config()`` describes it is rebuilt; one that cannot be rebuilt (non-serialisable ``__init__``
arguments, a ``get_config()`` that forgets some, weights created with a hard-coded dtype) gives an
:class:`~tfpartials.InputError` naming the layer and the fix.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .._backend import keras, tf
from .._checks import InputError, check_choice

__all__ = ["Precision", "with_precision", "float64_copy", "copy_with_dtype"]

Precision = Literal["float32", "float64"]
_POLICY_CLASSES = ("DTypePolicy", "Policy", "FloatDTypePolicy", "DTypePolicyMap")
_FLOAT_PREFIXES = ("float", "mixed", "bfloat")


def _is_float_dtype(value) -> bool:
    if isinstance(value, str):
        return value.startswith(_FLOAT_PREFIXES)
    if isinstance(value, dict) and value.get("class_name") in _POLICY_CLASSES:
        name = (value.get("config") or {}).get("name", "float32")
        return not isinstance(name, str) or name.startswith(_FLOAT_PREFIXES)
    return False


def _set_dtype(obj, dtype: str):
    """Replace every floating ``dtype`` entry of a (nested) config by ``dtype``; integer dtypes are kept."""
    if isinstance(obj, dict):
        return {k: (dtype if k == "dtype" and _is_float_dtype(v) else _set_dtype(v, dtype)) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_set_dtype(v, dtype) for v in obj)
    return obj


def _custom_objects(model) -> dict:
    """Classes of every layer in ``model`` that Keras would not find by name (custom, unregistered)."""
    found: dict = {}
    for layer in [model, *model._flatten_layers(include_self=False)]:
        cls = type(layer)
        if cls.__module__.startswith("keras."):
            continue
        found[cls.__name__] = cls
        registered = keras.saving.get_registered_name(cls)
        found[registered] = cls
    return found


def _sublayers(layer) -> list:
    subs = getattr(layer, "_layers", None)
    if subs is None:
        subs = getattr(layer, "layers", [])
    return [s for s in subs if isinstance(s, keras.layers.Layer)]


def _align_names(src, dst) -> None:
    """Give the copy's sub-layers the original names (subclassed models name theirs from a global counter)."""
    for s, d in zip(_sublayers(src), _sublayers(dst)):
        if type(s) is type(d) and s.name != d.name:
            d.name = s.name
        _align_names(s, d)


def float64_copy(model) -> keras.Model:
    """A float64 copy of ``model``: same architecture, names and weights, every float variable in float64.

    Central differences and ill-conditioned curvature need the ~1e-16 round-off of float64; the copy gives
    every quantity of the library that precision (``precision="float64"``) without touching the user's model.
    Cost: one model construction and one copy of the weights.

    Raises:
        InputError: the model (or a custom layer in it) cannot be rebuilt from its config.

    Example:
        >>> import keras, tfpartials as tp
        >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="d")])
        >>> tp.float64_copy(m).get_layer("d").kernel.dtype
        'float64'
    """
    return copy_with_dtype(model, "float64")


def copy_with_dtype(model, dtype: str):
    """A copy of ``model`` whose floating variables and computations use ``dtype`` (see module docstring)."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"model: expected a Keras model, got {type(model).__name__}")
    if not model.built:
        raise InputError("expected a built Keras model; call it on data or build() it first")
    what = f"cannot rebuild the model in {dtype}"
    try:
        config = model.get_config()
    except NotImplementedError as exc:
        culprit = _unserializable_layer(model)
        raise InputError(f"{what}: {culprit or type(model).__name__} has no usable get_config() "
                         f"({_first_line(exc)}); implement get_config() or use precision=None") from None
    config = _set_dtype(config, dtype)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype)
    try:
        with keras.saving.custom_object_scope(_custom_objects(model)):
            copy = type(model).from_config(config)
            if not copy.built or len(copy.weights) != len(model.weights):
                _build_like(model, copy)
    except InputError:
        raise
    except Exception as exc:  # custom layers whose config does not describe them
        raise InputError(f"{what} from its config ({type(exc).__name__}: {_first_line(exc)}); give custom "
                         "layers a get_config() that lists every __init__ argument, or use precision=None") from None
    finally:
        keras.config.set_dtype_policy(previous)
    _align_names(model, copy)
    _copy_variables(model, copy, dtype, what)
    _exact_attention_scales(copy, dtype)
    for attr in ("_tfpartials_loss", "_tfpartials_source"):
        if hasattr(model, attr):
            setattr(copy, attr, getattr(model, attr))
    if getattr(copy, "_tfpartials_loss", None) is None and getattr(model, "loss", None) is not None:
        copy._tfpartials_loss = model.loss  # the compiled loss, so loss=None still finds it
    return copy


def _exact_attention_scales(copy, dtype: str) -> None:
    """Attention scales held as Python floats become scalars of ``dtype``.

    Keras' TensorFlow backend applies ``scale`` with ``tf.cast(scale, logits.dtype)``, and ``tf.cast`` of a
    Python float goes through a float32 tensor: in a float64 model, 1/sqrt(key_dim) is rounded to float32
    (relative error up to 3e-8, e.g. for key_dim=2), which caps every derivative of MultiHeadAttention and
    GroupQueryAttention at ~1e-8 instead of float64 round-off. A NumPy scalar of the right dtype is converted
    without that rounding.
    """
    if dtype != "float64":
        return
    for layer in copy._flatten_layers(include_self=False):
        for attr in ("_inverse_sqrt_key_dim", "_inverse_sqrt_head_dim"):
            value = layer.__dict__.get(attr)
            if type(value) is float:
                setattr(layer, attr, np.float64(value))


def _build_like(model, copy) -> None:
    build_config = model.get_build_config() if hasattr(model, "get_build_config") else None
    if build_config:
        copy.build_from_config(build_config)
    else:
        copy.build(model.input_shape)
    if copy.weights and not copy.built:
        copy.built = True  # a subclassed model built by running call() symbolically


def _copy_variables(model, copy, dtype: str, what: str) -> None:
    """Copy every variable (weights, then seed-generator states) into the copy, checking names and shapes."""
    from ..params import variable_names

    src, dst = list(model.variables), list(copy.variables)
    if len(src) != len(dst):
        raise InputError(f"{what}: the copy has {len(dst)} variables, the original {len(src)} (a custom layer "
                         "creates its weights differently when rebuilt); use precision=None")
    weights = {id(w) for w in model.weights}  # seed-generator states have counter-numbered paths: not compared
    src_names, dst_names = variable_names(model), variable_names(copy)
    renamed = False
    for s, d in zip(src, dst):  # unnamed custom weights are numbered from a global counter: reuse the original's
        same_layer = src_names[id(s)].rpartition("/")[0] == dst_names[id(d)].rpartition("/")[0]
        if id(s) in weights and same_layer and s.name != d.name and hasattr(d, "_name"):
            d._name = s.name
            renamed = True
    if renamed:
        dst_names = variable_names(copy)
    for s, d in zip(src, dst):
        name = src_names[id(s)]
        if tuple(s.shape) != tuple(d.shape) or (id(s) in weights and name != dst_names[id(d)]):
            raise InputError(f"{what}: variable {name!r} {tuple(s.shape)} has no counterpart in the copy "
                             f"({dst_names[id(d)]!r} {tuple(d.shape)}); use precision=None")
        val = np.asarray(s.numpy())
        floating = np.issubdtype(val.dtype, np.floating)
        if floating and tf.as_dtype(d.dtype).name != dtype:
            raise InputError(f"{what}: {name!r} is created as {tf.as_dtype(d.dtype).name} whatever the dtype "
                             "policy (a custom layer hard-codes dtype= in add_weight); use self.variable_dtype "
                             "there, or precision=None")
        d.assign(val.astype(tf.as_dtype(d.dtype).as_numpy_dtype) if floating else val)


def _unserializable_layer(model) -> str | None:
    for layer in model._flatten_layers(include_self=False):
        try:
            layer.get_config()
        except NotImplementedError:
            return f"layer {layer.name!r} ({type(layer).__name__})"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _dtypes_in_use(model) -> set[str]:
    """Floating dtypes of the model's variables and of its layers' computations (mixed precision shows here)."""
    found = {tf.as_dtype(v.dtype).name for v in model.weights if tf.as_dtype(v.dtype).is_floating}
    for layer in [model, *model._flatten_layers(include_self=False)]:
        compute = getattr(getattr(layer, "dtype_policy", None), "compute_dtype", None)
        # every computing layer counts, with or without weights (an Activation or Softmax in float32 would
        # otherwise leave a "float64" model computing partly in float32); input layers compute nothing
        if (isinstance(compute, str) and compute.startswith(_FLOAT_PREFIXES)
                and not isinstance(layer, keras.layers.InputLayer)):
            found.add(compute)
    return found


def with_precision(model, precision: Precision | None):
    """``model`` itself for ``None`` or when it already computes in ``precision``, else a copy in ``precision``.

    A mixed-precision model (float32 weights, float16 computation) is copied for ``"float32"`` too. The model
    is never changed.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> tp.with_precision(model, "float32") is model       # already float32: no copy
        True
        >>> copy = tp.with_precision(model, "float64")
        >>> copy.weights[0].dtype, model.weights[0].dtype, np.array_equal(copy.weights[0], model.weights[0])
        ('float64', 'float32', True)
    """
    if precision is None:
        return model
    check_choice("precision", precision, ("float32", "float64"))
    if not isinstance(model, keras.Model):
        raise TypeError(f"model: expected a Keras model, got {type(model).__name__}")
    if _dtypes_in_use(model) <= {precision}:
        return model
    return copy_with_dtype(model, precision)
