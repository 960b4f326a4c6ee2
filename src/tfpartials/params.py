"""ParameterSpace: which variables we differentiate with respect to, their stable names, and the flat vector.

Names are ``<layer>/<variable>`` with nested layers joined by ``/`` (the top-level model's own name is left
out), so they are the same before and after a save/load round trip, unlike Keras' ``Variable.path``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ._backend import keras, tf
from ._checks import InputError

__all__ = ["ParameterSpace", "variable_names"]


def _own_variables(layer) -> list:
    own = list(getattr(layer, "_trainable_variables", [])) + list(getattr(layer, "_non_trainable_variables", []))
    return own


def _sublayers(layer) -> list:
    subs = getattr(layer, "_layers", None)
    if subs is None:
        subs = getattr(layer, "layers", [])
    return [s for s in subs if isinstance(s, keras.layers.Layer)]


def variable_names(model) -> dict[int, str]:
    """Map ``id(variable)`` to its stable name for every variable of ``model``."""
    names: dict[int, str] = {}
    taken: set[str] = set()

    def assign(var, name):
        if id(var) in names:
            return
        base, k = name, 1
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        names[id(var)] = name
        taken.add(name)

    def walk(layer, prefix: str):
        for sub in _sublayers(layer):
            walk(sub, f"{prefix}{sub.name}/")
        for var in _own_variables(layer):
            vname = var.name.split("/")[-1].split(":")[0]
            assign(var, f"{prefix}{vname}")

    walk(model, "")
    for var in model.variables:  # anything the walk missed (unusual custom layers)
        if id(var) not in names:
            assign(var, getattr(var, "path", var.name))
    return names


@dataclass(frozen=True)
class _Entry:
    name: str
    shape: tuple[int, ...]
    size: int
    offset: int


class ParameterSpace:
    """The variables of a model we differentiate with respect to, flattened into one vector.

    Args:
        model: a built Keras model.
        wrt: ``None`` for all trainable variables, or names / glob patterns / layer names
            (``"dense_1/kernel"``, ``"dense_1/*"``, ``"dense_1"``). Patterns that match nothing are an error
            listing the available names.

    The flat vector concatenates the selected variables in model order (C order within each).

    Example:
        >>> import keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="dense"),
        ...                           keras.layers.Dense(1, name="out")])
        >>> space = tp.ParameterSpace(model, wrt=["dense/*"])
        >>> list(space.names), space.size            # 3 x 2 kernel + 2 biases
        (['dense/kernel', 'dense/bias'], 8)
    """

    def __init__(self, model, wrt: str | Sequence[str] | None = None):
        if not getattr(model, "built", True) or not model.variables:
            raise InputError("expected a built Keras model with variables; call the model on data or build() it first")
        self.model = model
        names = variable_names(model)
        trainable = list(model.trainable_variables)
        if not trainable:
            raise InputError("the model has no trainable variables to differentiate")
        all_names = [names[id(v)] for v in trainable]
        if wrt is None:
            chosen = list(range(len(trainable)))
        else:
            patterns = [wrt] if isinstance(wrt, str) else list(wrt)
            if not patterns:
                raise InputError("wrt: expected at least one variable name or pattern, got an empty list")
            chosen_set: set[int] = set()
            for pat in patterns:
                if not isinstance(pat, str):
                    raise TypeError(f"wrt: expected variable names or glob patterns (str), got {pat!r}")
                hits = [i for i, n in enumerate(all_names)
                        if n == pat or fnmatch.fnmatchcase(n, pat) or n.startswith(pat.rstrip("/") + "/")]
                if not hits:
                    raise InputError(
                        f"wrt: no trainable variable matches {pat!r}; available: {', '.join(all_names)}")
                chosen_set.update(hits)
            chosen = sorted(chosen_set)
        self._trainable = trainable
        self._names_all = all_names
        self.indices: tuple[int, ...] = tuple(chosen)
        self.variables = tuple(trainable[i] for i in chosen)
        entries, off = [], 0
        for i in chosen:
            shape = tuple(int(d) for d in trainable[i].shape)
            size = int(np.prod(shape, dtype=np.int64))
            entries.append(_Entry(all_names[i], shape, size, off))
            off += size
        self._entries = tuple(entries)
        self.size = off
        dtypes = {trainable[i].dtype for i in chosen}
        self.dtype = tf.as_dtype(sorted(dtypes)[0] if len(dtypes) == 1 else "float32")

    # -- metadata ---------------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [e.name for e in self._entries]

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [e.shape for e in self._entries]

    @property
    def sizes(self) -> list[int]:
        return [e.size for e in self._entries]

    @property
    def offsets(self) -> list[int]:
        """Start of each variable in the flat vector, plus the total size at the end (length = len(names)+1)."""
        return [e.offset for e in self._entries] + [self.size]

    @property
    def all_trainable_names(self) -> list[str]:
        return list(self._names_all)

    def slice_of(self, name: str) -> slice:
        for e in self._entries:
            if e.name == name:
                return slice(e.offset, e.offset + e.size)
        raise InputError(f"unknown parameter {name!r}; available: {', '.join(self.names)}")

    def shape_of(self, name: str) -> tuple[int, ...]:
        for e in self._entries:
            if e.name == name:
                return e.shape
        raise InputError(f"unknown parameter {name!r}; available: {', '.join(self.names)}")

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"ParameterSpace({len(self)} variables, {self.size} parameters)"

    # -- values -----------------------------------------------------------------------------------------------
    def values(self) -> list:
        """Current values of the selected variables as tensors."""
        return [tf.convert_to_tensor(v.value) for v in self.variables]

    def full_trainable(self, selected: Sequence) -> list:
        """All trainable values with the selected ones replaced by ``selected`` (for ``stateless_call``)."""
        out = [tf.convert_to_tensor(v.value) for v in self._trainable]
        for i, t in zip(self.indices, selected):
            out[i] = t
        return out

    def flatten(self, tensors: Sequence) -> tf.Tensor:
        """List of tensors with the selected shapes -> flat vector."""
        if len(tensors) != len(self._entries):
            raise InputError(f"expected {len(self._entries)} tensors, got {len(tensors)}")
        return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)

    def unflatten(self, vector) -> list:
        """Flat vector (n,) -> list of tensors with the selected shapes."""
        vector = tf.convert_to_tensor(vector)
        parts = tf.split(vector, self.sizes, axis=0)
        return [tf.reshape(p, e.shape) for p, e in zip(parts, self._entries)]

    def unflatten_batch(self, matrix) -> list:
        """(k, n) -> list of (k, *shape) tensors."""
        matrix = tf.convert_to_tensor(matrix)
        parts = tf.split(matrix, self.sizes, axis=1)
        return [tf.reshape(p, (-1, *e.shape)) for p, e in zip(parts, self._entries)]

    def to_dict(self, vector_or_list) -> dict[str, np.ndarray]:
        """Flat vector or list of tensors -> ``{name: numpy array}``."""
        if isinstance(vector_or_list, list | tuple):
            parts = vector_or_list
        else:
            parts = self.unflatten(vector_or_list)
        return {e.name: np.asarray(p) for e, p in zip(self._entries, parts)}

    def vector_from(self, v, dtype=None) -> tf.Tensor:
        """Accept a flat vector (n,) or a ``{name: array}`` dict and return the flat vector as a tensor."""
        dtype = dtype or self.dtype
        if isinstance(v, Mapping):
            missing = [n for n in self.names if n not in v]
            extra = [k for k in v if k not in self.names]
            if missing or extra:
                raise InputError(
                    f"vector dict: expected keys {', '.join(self.names)}; "
                    + (f"missing {', '.join(missing)}" if missing else f"unexpected {', '.join(map(str, extra))}"))
            parts = []
            for e in self._entries:
                a = np.asarray(v[e.name])
                if tuple(a.shape) != e.shape:
                    raise InputError(f"vector dict: {e.name} expected shape {e.shape}, got {tuple(a.shape)}")
                parts.append(a.reshape(-1))
            flat = np.concatenate(parts) if parts else np.zeros(0)
            return tf.constant(flat, dtype=dtype)
        a = np.asarray(v)
        if a.ndim != 1 or a.shape[0] != self.size:
            raise InputError(f"vector: expected shape ({self.size},) (or a dict keyed by parameter name), "
                             f"got {tuple(a.shape)}")
        if not np.issubdtype(a.dtype, np.number):
            raise InputError(f"vector: expected numbers, got dtype {a.dtype}")
        return tf.constant(a, dtype=dtype)

    def matching(self, patterns: Iterable[str]) -> list[str]:
        """Names in this space that match any of ``patterns``."""
        pats = list(patterns)
        return [n for n in self.names if any(n == p or fnmatch.fnmatchcase(n, p) or n.startswith(p + "/") for p in pats)]
