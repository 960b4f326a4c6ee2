"""The one cache: compiled functions and the objects that own them, per owner, weakly, with explicit keys.

Every part of tfpartials that compiles something (objectives and their per-batch functions, HVP kernels,
distributed data passes, input functions, attribution steps) keeps it here under its owner — the user's model,
or an object cached under the model — so that a second call with the same settings reuses what was traced,
and everything is freed with the model. Keys are built by :func:`key_of`: plain values by value, containers
by content, and any other object (a loss instance, a callable, a ``tf.distribute`` strategy) by identity
*while holding it*, so an id can never be reused by a new object while an entry that names it exists.

The table lives in the owner's instance dictionary (a private attribute invisible to Keras' tracking, to
saving and to copies), not in a global map: cached objects refer back to their model, and a global map
keyed by the model would then keep it alive forever. Here the model and its entries form an ordinary cycle
that Python's garbage collector frees once the user drops the model.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import numpy as np

__all__ = ["cached", "key_of", "table", "clear", "Identity"]

T = TypeVar("T")


class Identity:
    """A key part that stands for one object by identity and keeps it alive as long as the key exists."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Identity) and other.obj is self.obj

    def __repr__(self) -> str:
        return f"Identity({type(self.obj).__name__} at {id(self.obj):#x})"


def key_of(value: Any) -> Hashable:
    """A safe, hashable key for ``value`` (see the module docstring)."""
    if value is None or isinstance(value, str | bool | int | float | bytes):
        return value
    if isinstance(value, list | tuple):
        return (type(value).__name__, *(key_of(v) for v in value))
    if isinstance(value, dict):
        return ("dict", *sorted(((str(k), key_of(v)) for k, v in value.items()), key=lambda kv: kv[0]))
    if isinstance(value, np.ndarray):
        return ("array", value.shape, value.dtype.str, value.tobytes())
    if isinstance(value, np.generic):
        return value.item()
    return Identity(value)


_ATTRIBUTE = "_tfpartials_cache"
_OWNERS: weakref.WeakSet = weakref.WeakSet()  # for clear(): never keeps an owner alive


class _Table(dict):
    """An owner's entries; copies and pickles of the owner start with an empty one."""

    def __deepcopy__(self, memo):
        return _Table()

    def __copy__(self):
        return _Table()

    def __reduce__(self):
        return (_Table, ())


def table(owner: Any) -> dict:
    """The cache dictionary of ``owner`` (a fresh, uncached one when ``owner`` has no instance dictionary)."""
    try:
        attrs = vars(owner)
    except TypeError:
        return {}
    entries = attrs.get(_ATTRIBUTE)
    if entries is None:
        entries = _Table()
        object.__setattr__(owner, _ATTRIBUTE, entries)
        try:
            _OWNERS.add(owner)
        except TypeError:  # not weakly referenceable: cannot be cleared all at once, still freed with the owner
            pass
    return entries


def cached(owner: Any, key: Hashable, build: Callable[[], T]) -> T:
    """The entry ``key`` of ``owner``, built by ``build()`` on first use."""
    entries = table(owner)
    try:
        return entries[key]
    except KeyError:
        value = entries[key] = build()
        return value


def clear(owner: Any = None) -> None:
    """Forget what is cached for ``owner`` (for every owner when None)."""
    for o in list(_OWNERS) if owner is None else [owner]:
        try:
            vars(o).pop(_ATTRIBUTE, None)
        except TypeError:
            pass
