"""Boundary validators.

Every public entry point validates what it is given here and raises :class:`InputError` (a ``ValueError``) or
``TypeError`` with a one-line message of the form "expected X, got Y". The command line turns these into a
one-line message on stderr and exit code 2.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "InputError",
    "ResourceError",
    "check_choice",
    "check_positive_int",
    "check_nonnegative_int",
    "check_positive_float",
    "check_seed",
    "parse_size",
    "format_bytes",
]


class InputError(ValueError):
    """Bad input from the user: a wrong shape, an unknown name, a file that is not what it claims to be.

    A subclass of ``ValueError``, raised at the boundary before any work, with "expected X, got Y" wording.

    Example:
        >>> import numpy as np, tfpartials as tp
        >>> tp.load_data((np.zeros((3, 2)), np.zeros((4, 1))))     # 3 inputs, 4 targets
        Traceback (most recent call last):
            ...
        tfpartials._checks.InputError: x/y count mismatch: 3 inputs but 4 targets
    """


class ResourceError(InputError):
    """A computation that would not fit in its memory budget (or time limit) and was refused before it ran.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((2000,)), keras.layers.Dense(100)])   # 200,100 parameters
        >>> data = (np.zeros((2, 2000), "float32"), np.zeros((2, 100), "float32"))
        >>> tp.hessian(model, data, loss="mse", max_memory="1MiB")   # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        tfpartials._checks.ResourceError: the dense Hessian of 200,100 parameters (149.2 GiB ...) needs about ...
    """


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise InputError listing them."""
    choices = list(choices)
    if value not in choices:
        shown = ", ".join(repr(c) for c in choices)
        raise InputError(f"{name}: expected one of {shown}, got {value!r}")
    return value


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` as an int if it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int | _np_integer()):
        raise TypeError(f"{name}: expected a positive integer, got {type(value).__name__} {value!r}")
    if value < 1:
        raise InputError(f"{name}: expected a positive integer, got {value}")
    return int(value)


def check_nonnegative_int(name: str, value: Any) -> int:
    """Return ``value`` as an int if it is an integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | _np_integer()):
        raise TypeError(f"{name}: expected a non-negative integer, got {type(value).__name__} {value!r}")
    if value < 0:
        raise InputError(f"{name}: expected a non-negative integer, got {value}")
    return int(value)


def check_positive_float(name: str, value: Any, allow_zero: bool = False) -> float:
    """Return ``value`` as a float if it is finite and > 0 (or >= 0 with ``allow_zero``)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__} {value!r}") from None
    if not math.isfinite(f) or f < 0 or (f == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise InputError(f"{name}: expected a finite number {bound}, got {value!r}")
    return f


def check_seed(seed: Any) -> int:
    """Return ``seed`` as a non-negative int (the seed of every randomised estimator)."""
    return check_nonnegative_int("seed", seed)


_UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "M": 1000**2, "MB": 1000**2, "G": 1000**3, "GB": 1000**3,
          "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4, "TB": 1000**4}


def parse_size(value: str | int | float, name: str = "max_memory") -> int:
    """Parse a memory size such as ``"2GiB"``, ``"256MiB"``, ``"500MB"`` or a number of bytes."""
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected a size like '2GiB', got {value!r}")
    if isinstance(value, int | float):
        if value <= 0 or not math.isfinite(value):
            raise InputError(f"{name}: expected a positive size, got {value!r}")
        return int(value)
    text = str(value).strip().upper().replace(" ", "")
    num = text.rstrip("KMGTIB")
    unit = text[len(num):]
    try:
        number = float(num)
    except ValueError:
        raise InputError(f"{name}: expected a size like '2GiB' or '512MiB', got {value!r}") from None
    if unit not in _UNITS or number <= 0 or not math.isfinite(number):
        raise InputError(f"{name}: expected a size like '2GiB' or '512MiB', got {value!r}")
    return int(number * _UNITS[unit])


def format_bytes(n: float) -> str:
    """Human-readable size in binary units (``'1.5 GiB'``)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def check_names_known(what: str, requested: Sequence[str], available: Sequence[str]) -> None:
    """Raise InputError naming the unknown entries and listing the available ones."""
    unknown = [r for r in requested if r not in available]
    if unknown:
        raise InputError(f"unknown {what} {', '.join(map(repr, unknown))}; available: {', '.join(available)}")


def _np_integer():
    import numpy as np

    return np.integer
