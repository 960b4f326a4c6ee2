"""Loss resolution: Keras loss names, Keras loss objects or callables -> a per-example loss.

The per-example loss maps ``(y_true, y_pred)`` to a vector of shape ``(B,)``: Keras' own loss functions
reduce the last axis; any further non-batch axes are averaged, which matches Keras' "sum over batch size"
reduction up to the 1/N we apply ourselves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._backend import keras, tf
from .._checks import InputError

__all__ = ["Loss", "resolve_loss", "LOSS_NAMES"]

# canonical kind -> (Keras class name, aliases)
_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mse": ("MeanSquaredError", ("mse", "mean_squared_error", "meansquarederror")),
    "mae": ("MeanAbsoluteError", ("mae", "mean_absolute_error", "meanabsoluteerror")),
    "huber": ("Huber", ("huber", "huber_loss")),
    "binary_crossentropy": ("BinaryCrossentropy", ("binary_crossentropy", "bce", "binarycrossentropy")),
    "categorical_crossentropy": ("CategoricalCrossentropy",
                                 ("categorical_crossentropy", "cce", "categoricalcrossentropy")),
    "sparse_categorical_crossentropy": ("SparseCategoricalCrossentropy",
                                        ("sparse_categorical_crossentropy", "scce",
                                         "sparsecategoricalcrossentropy")),
    "msle": ("MeanSquaredLogarithmicError", ("msle", "mean_squared_logarithmic_error")),
    "log_cosh": ("LogCosh", ("log_cosh", "logcosh")),
    "poisson": ("Poisson", ("poisson",)),
    "kl_divergence": ("KLDivergence", ("kl_divergence", "kld", "kldivergence")),
}
_FROM_LOGITS = {"binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy"}
_SAFE_CONFIG_KEYS = {"from_logits", "delta", "label_smoothing", "axis", "ignore_class"}

LOSS_NAMES = tuple(alias for _, aliases in _KINDS.values() for alias in aliases[:2])


def _kind_of(name: str) -> str | None:
    key = name.strip().lower().replace("-", "_")
    for kind, (cls, aliases) in _KINDS.items():
        if key in aliases or key == cls.lower():
            return kind
    return None


@dataclass(frozen=True)
class Loss:
    """A resolved per-example loss.

    Attributes:
        name: canonical name (``"mse"``, ``"sparse_categorical_crossentropy"``, ...) or ``"custom"``.
        fn: ``(y_true, y_pred) -> (B,)`` per-example loss.
        from_logits: whether the model outputs logits (cross-entropies only).
        config: the keyword arguments the Keras loss was built with.
    """

    name: str
    fn: Callable[[Any, Any], Any] = field(repr=False)
    from_logits: bool = False
    config: Mapping[str, Any] = field(default_factory=dict)

    def per_example(self, y_true, y_pred):
        """Per-example loss, shape (B,)."""
        out = self.fn(y_true, y_pred)
        out = tf.convert_to_tensor(out)
        if out.shape.rank is not None and out.shape.rank > 1:
            out = tf.reduce_mean(out, axis=list(range(1, out.shape.rank)))
        if out.shape.rank == 0:
            raise InputError(f"loss {self.name!r}: expected a per-example loss of shape (batch,), got a scalar; "
                             "return one value per example (no reduction)")
        return out

    @property
    def is_classification(self) -> bool:
        return self.name in _FROM_LOGITS


def _build(kind: str, config: Mapping[str, Any]) -> Loss:
    cls_name = _KINDS[kind][0]
    cls = getattr(keras.losses, cls_name)
    cfg = {k: v for k, v in config.items() if k in _SAFE_CONFIG_KEYS}
    if "from_logits" in cfg and kind not in _FROM_LOGITS:
        cfg.pop("from_logits")
    obj = cls(reduction=None, **cfg)

    def fn(y_true, y_pred, _obj=obj):
        y_pred = tf.convert_to_tensor(y_pred)
        if y_pred.dtype == tf.float64:  # Loss.__call__ would cast both to its float32 dtype policy
            return _obj.call(tf.cast(y_true, tf.float64), y_pred)
        return _obj(y_true, y_pred)

    return Loss(kind, fn, bool(cfg.get("from_logits", False)), cfg)


def resolve_loss(loss: Any, from_logits: bool | None = None, model=None) -> Loss:
    """Turn ``loss`` into a :class:`Loss`.

    Args:
        loss: a Keras loss name (``"mse"``, ``"sparse_categorical_crossentropy"``, ...), a Keras loss object,
            a safe serialised loss config dict, a :class:`Loss`, a callable ``(y_true, y_pred) -> (B,)``, or
            ``None`` to use the loss the model was compiled with (read from the file by
            :func:`tfpartials.load_model`).
        from_logits: override ``from_logits`` of a cross-entropy.
        model: the model, for its stored loss when ``loss`` is None.
    """
    if loss is None:
        stored = getattr(model, "_tfpartials_loss", None) if model is not None else None
        if stored is None and model is not None:
            stored = _compiled_loss(model)
        if stored is None:
            raise InputError("no loss given and the model carries no compiled loss; pass loss= (CLI: --loss), "
                             f"e.g. one of {', '.join(LOSS_NAMES[::2])}")
        loss = stored
    if isinstance(loss, Loss):
        if from_logits is not None and loss.name in _FROM_LOGITS and loss.from_logits != from_logits:
            return _build(loss.name, {**loss.config, "from_logits": from_logits})
        return loss
    if isinstance(loss, str):
        kind = _kind_of(loss)
        if kind is None:
            raise InputError(f"unknown loss {loss!r}; expected one of {', '.join(LOSS_NAMES)} or a callable")
        cfg = {"from_logits": bool(from_logits)} if from_logits is not None else {}
        return _build(kind, cfg)
    if isinstance(loss, Mapping):
        cls_name = loss.get("class_name")
        kind = _kind_of(str(cls_name)) if cls_name else None
        if kind is None:
            raise InputError(f"unknown loss {cls_name!r}; expected one of {', '.join(LOSS_NAMES)}")
        cfg = dict(loss.get("config") or {})
        if from_logits is not None:
            cfg["from_logits"] = from_logits
        return _build(kind, cfg)
    if isinstance(loss, keras.losses.Loss):
        kind = _kind_of(type(loss).__name__)
        if kind is not None:
            cfg = {k: v for k, v in loss.get_config().items() if k in _SAFE_CONFIG_KEYS}
            if from_logits is not None:
                cfg["from_logits"] = from_logits
            return _build(kind, cfg)
        obj = loss

        def fn(y_true, y_pred, _obj=obj):
            return _obj.call(y_true, y_pred)

        return Loss(type(loss).__name__, fn)
    if callable(loss):
        fname = getattr(loss, "__name__", "custom")
        kind = _kind_of(fname)
        if kind is not None and getattr(keras.losses, fname, None) is loss:
            cfg = {"from_logits": bool(from_logits)} if from_logits is not None else {}
            return _build(kind, cfg)
        return Loss("custom", loss)
    raise TypeError(f"loss: expected a loss name, a Keras loss or a callable, got {type(loss).__name__}")


def _compiled_loss(model):
    loss = getattr(model, "loss", None)
    if loss is None:
        return None
    if isinstance(loss, str | keras.losses.Loss) or callable(loss):
        return loss
    return None
