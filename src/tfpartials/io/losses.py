"""Loss resolution: Keras loss names, Keras loss objects or callables -> a per-example loss.

The per-example loss maps ``(y_true, y_pred)`` to a vector of shape ``(B,)``: Keras' own loss functions
reduce the last axis; any further non-batch axes are averaged, which matches Keras' "sum over batch size"
reduction up to the 1/N we apply ourselves.

A model with several outputs takes one loss per output and optional weights (as ``model.compile(loss={...},
loss_weights={...})``): a :class:`MultiLoss`, whose per-example value is ``sum_k w_k loss_k(y_k, f_k(x))``,
so that its dataset mean is what Keras' ``model.evaluate`` reports as ``loss``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._backend import keras, tf
from .._checks import InputError

__all__ = ["Loss", "MultiLoss", "resolve_loss", "LOSS_NAMES"]

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

    Example:
        >>> import numpy as np, tfpartials as tp
        >>> loss = tp.resolve_loss("mse")
        >>> loss.name, loss.per_example(np.zeros((2, 1)), np.array([[1.0], [3.0]])).numpy().tolist()
        ('mse', [1.0, 9.0])
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


@dataclass(frozen=True)
class MultiLoss:
    """One loss per model output, weighted: per example ``sum_k w_k loss_k(y_k, f_k(x))``.

    Outputs whose loss is None do not enter the objective (as in Keras). Targets and outputs are matched by
    output name (``outputs`` may be a dict, a list in the model's output order, or one tensor).

    Attributes:
        output_names: the model's output names, in the order of its targets.
        losses: one :class:`Loss` (or None) per output.
        weights: one weight per output (Keras' ``loss_weights``; default 1).

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> inp = keras.Input((2,))
        >>> model = keras.Model(inp, [keras.layers.Dense(1, name="price")(inp), keras.layers.Dense(1, name="size")(inp)])
        >>> ml = tp.resolve_loss({"price": "mse", "size": "mae"}, model=model, loss_weights={"size": 0.5})
        >>> ml.output_names, ml.weights
        (('price', 'size'), (1.0, 0.5))
        >>> y_true = [np.zeros((1, 1)), np.zeros((1, 1))]; y_pred = [np.array([[3.0]]), np.array([[-2.0]])]
        >>> float(ml.per_example(y_true, y_pred)[0])       # 3^2 + 0.5 |-2|
        10.0
    """

    output_names: tuple[str, ...]
    losses: tuple[Loss | None, ...] = field(repr=False)
    weights: tuple[float, ...]
    from_logits: bool = False
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        parts = [f"{n}={loss.name}" + ("" if w == 1 else f"*{w:g}")
                 for n, loss, w in zip(self.output_names, self.losses, self.weights) if loss is not None]
        return ",".join(parts)

    @property
    def is_classification(self) -> bool:
        return False

    def per_output(self, y_true, y_pred) -> list:
        """Unweighted per-example losses ``(B,)`` of the outputs that have a loss (None for the others)."""
        preds = self._outputs(y_pred)
        trues = self._targets(y_true)
        return [None if loss is None else loss.per_example(t, p)
                for loss, t, p in zip(self.losses, trues, preds)]

    def per_example(self, y_true, y_pred):
        """``sum_k w_k loss_k``, shape (B,)."""
        terms = [w * per for w, per in zip(self.weights, self.per_output(y_true, y_pred)) if per is not None]
        return tf.add_n(terms)

    def only(self, output: int | str) -> MultiLoss:
        """The same losses with every other output's weight set to zero (that output's term alone)."""
        k = output if isinstance(output, int) else self.output_names.index(output)
        return MultiLoss(self.output_names, self.losses,
                         tuple(w if i == k else 0.0 for i, w in enumerate(self.weights)))

    def _outputs(self, y_pred) -> list:
        if isinstance(y_pred, Mapping):
            missing = [n for n in self.output_names if n not in y_pred]
            if missing:
                raise InputError(f"model outputs {', '.join(y_pred)} lack {', '.join(missing)}")
            return [y_pred[n] for n in self.output_names]
        preds = list(y_pred) if isinstance(y_pred, list | tuple) else [y_pred]
        if len(preds) != len(self.output_names):
            raise InputError(f"expected {len(self.output_names)} model outputs ({', '.join(self.output_names)}), "
                             f"got {len(preds)}")
        return preds

    def _targets(self, y_true) -> list:
        if isinstance(y_true, Mapping):
            return [y_true.get(n) for n in self.output_names]
        trues = list(y_true) if isinstance(y_true, list | tuple) else [y_true]
        if len(trues) != len(self.output_names):
            raise InputError(f"the model has {len(self.output_names)} outputs ({', '.join(self.output_names)}) "
                             f"but {len(trues)} target arrays were given")
        return trues


def _output_names(model) -> tuple[str, ...]:
    if model is None:
        raise InputError("per-output losses need the model (to match losses to its outputs): pass model=")
    from .signature import signature

    return signature(model).output_names


def _per_output(structure, names: Sequence[str], what: str) -> list:
    """A dict keyed by output name or a list in output order -> one entry per output (None where absent)."""
    if isinstance(structure, Mapping):
        unknown = [k for k in structure if k not in names]
        if unknown:
            raise InputError(f"{what}: unknown output {', '.join(map(repr, unknown))}; the model outputs "
                             f"{', '.join(names)}")
        return [structure.get(n) for n in names]
    items = list(structure)
    if len(items) != len(names):
        raise InputError(f"{what}: expected one entry per model output ({len(names)}: {', '.join(names)}), "
                         f"got {len(items)}")
    return items


def _multi(loss, loss_weights, from_logits, names: Sequence[str]) -> Loss | MultiLoss:
    specs = _per_output(loss, names, "loss") if _is_structure(loss) else [loss] * len(names)
    losses = tuple(None if spec is None else resolve_loss(spec, from_logits if _is_xent(spec) else None)
                   for spec in specs)
    if all(item is None for item in losses):
        raise InputError("loss: every output's loss is None; give at least one output a loss")
    weights = [1.0] * len(names)
    if loss_weights is not None:
        if isinstance(loss_weights, int | float) and len(names) == 1:
            loss_weights = [loss_weights]
        given = _per_output(loss_weights, names, "loss_weights")
        weights = []
        for n, w in zip(names, given):
            w = 1.0 if w is None else w
            if isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w < float("inf"):
                raise InputError(f"loss_weights: expected a finite number >= 0 for output {n!r}, got {w!r}")
            weights.append(float(w))
    if len(names) == 1 and weights[0] == 1.0:
        return losses[0]  # one output, unweighted: the plain loss
    return MultiLoss(tuple(names), losses, tuple(weights))


def _is_structure(loss) -> bool:
    return (isinstance(loss, Mapping) and "class_name" not in loss) or isinstance(loss, list | tuple)


def _is_xent(spec) -> bool:
    if isinstance(spec, Loss):
        return spec.name in _FROM_LOGITS
    if isinstance(spec, str):
        return _kind_of(spec) in _FROM_LOGITS
    if isinstance(spec, Mapping):
        return _kind_of(str(spec.get("class_name", ""))) in _FROM_LOGITS
    return _kind_of(type(spec).__name__) in _FROM_LOGITS or _kind_of(getattr(spec, "__name__", "")) in _FROM_LOGITS


def resolve_loss(loss: Any, from_logits: bool | None = None, model=None, loss_weights=None) -> Loss | MultiLoss:
    """Turn ``loss`` into a :class:`Loss`.

    Args:
        loss: a Keras loss name (``"mse"``, ``"sparse_categorical_crossentropy"``, ...), a Keras loss object,
            a safe serialised loss config dict, a :class:`Loss`, a callable ``(y_true, y_pred) -> (B,)``, or
            ``None`` to use the loss the model was compiled with (read from the file by
            :func:`tfpartials.load_model`).
            A dict ``{output name: loss}`` or a list (one per output, None to leave one out) gives a
            :class:`MultiLoss` for a multi-output model.
        from_logits: override ``from_logits`` of a cross-entropy (of every cross-entropy of a MultiLoss).
        model: the model, for its stored loss when ``loss`` is None, and its output names for per-output losses.
        loss_weights: per-output weights, a dict by output name or a list (as Keras' ``loss_weights``);
            default the weights stored with a compiled model, else 1.

    Example:
        >>> import keras, tfpartials as tp
        >>> inp = keras.Input((2,))
        >>> model = keras.Model(inp, [keras.layers.Dense(1, name="price")(inp), keras.layers.Dense(3, name="kind")(inp)])
        >>> tp.resolve_loss({"price": "mse", "kind": "scce"}, model=model, loss_weights={"kind": 0.5}).name
        'price=mse,kind=sparse_categorical_crossentropy*0.5'
    """
    if loss is None:
        stored = getattr(model, "_tfpartials_loss", None) if model is not None else None
        if stored is None and model is not None:
            stored = _compiled_loss(model)
        if stored is None:
            raise InputError("no loss given and the model carries no compiled loss; pass loss= (CLI: --loss), "
                             f"e.g. one of {', '.join(LOSS_NAMES[::2])}")
        loss = stored
        if loss_weights is None and model is not None:
            loss_weights = getattr(model, "_tfpartials_loss_weights", None) or _compiled_loss_weights(model)
    if isinstance(loss, MultiLoss):
        if loss_weights is not None or from_logits is not None:
            return _multi(list(loss.losses), loss_weights if loss_weights is not None else list(loss.weights),
                          from_logits, loss.output_names)
        return loss
    if _is_structure(loss) or loss_weights is not None:
        return _multi(loss, loss_weights, from_logits, _output_names(model))
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
    if isinstance(loss, str | keras.losses.Loss) or callable(loss) or _is_structure(loss):
        return loss
    return None


def _compiled_loss_weights(model):
    config = getattr(getattr(model, "_compile_config", None), "config", None)
    return config.get("loss_weights") if isinstance(config, Mapping) else None
