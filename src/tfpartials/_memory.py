"""The memory planner: one budget, chunk sizes for every vectorised computation, refusals with numbers.

Every dense or vectorised quantity (Hessian columns, Jacobian rows, per-example gradients, IG steps) asks
:func:`plan_chunks` how many items to process at once given a per-item cost, and :func:`require_fits` before
allocating a result, so nothing starts that cannot finish.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ._checks import ResourceError, format_bytes, parse_size

__all__ = ["available_memory", "default_budget", "resolve_budget", "plan_chunks", "require_fits", "ChunkPlan",
           "DEFAULT_DENSE_LIMIT", "activation_elements", "activation_bytes"]

DEFAULT_DENSE_LIMIT = 2 * 1024**3  # dense results (Hessians) refuse above 2 GiB unless told otherwise
_BUDGET_FRACTION = 0.5


#: a reading of the available memory is reused for this long: a small model's call plans its chunks in well
#: under a millisecond, and reading /proc and the cgroup files each time cost ~0.1 ms of it
_FRESH_SECONDS = 0.25
_LAST_READING = [float("-inf"), 0]  # [_clock() of the reading, bytes]
_clock = time.monotonic


def available_memory() -> int:
    """Bytes of memory available to this process now (MemAvailable, or a cgroup limit if lower), read at most
    every 0.25 s."""
    now = _clock()
    when, value = _LAST_READING
    if now - when < _FRESH_SECONDS:
        return value
    value = _read_available_memory()
    _LAST_READING[:] = [now, value]
    return value


def _read_available_memory() -> int:
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:  # pragma: no cover - non-Linux
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as fh:
                text = fh.read().strip()
            if text.isdigit():
                limit = int(text)
                if limit < (1 << 60):
                    avail = min(avail, limit) if avail else limit
        except OSError:
            continue
    if avail is None:  # pragma: no cover
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            avail = 4 * 1024**3
    return int(avail)


def default_budget() -> int:
    """Working-memory budget when none is given: half of what is available now."""
    return int(available_memory() * _BUDGET_FRACTION)


def resolve_budget(max_memory: str | int | float | None) -> int:
    """Bytes for ``max_memory`` (``"2GiB"``, a number of bytes, or None for the default budget)."""
    if max_memory is None:
        return default_budget()
    return parse_size(max_memory, "max_memory")


@dataclass(frozen=True)
class ChunkPlan:
    """How a vectorised computation over ``total`` items is split."""

    total: int
    chunk: int
    bytes_per_item: int
    budget: int

    @property
    def num_chunks(self) -> int:
        return -(-self.total // self.chunk) if self.total else 0

    def ranges(self):
        for start in range(0, self.total, self.chunk):
            yield start, min(start + self.chunk, self.total)


def plan_chunks(total: int, bytes_per_item: int, *, budget: int | None = None, fixed: int = 0,
                what: str = "items", max_chunk: int | None = None) -> ChunkPlan:
    """Largest chunk of ``total`` items whose working memory ``fixed + chunk * bytes_per_item`` fits ``budget``.

    Raises:
        ResourceError: even one item does not fit (the message gives the numbers).
    """
    budget = default_budget() if budget is None else int(budget)
    per = max(int(bytes_per_item), 1)
    room = budget - int(fixed)
    if room < per:
        raise ResourceError(
            f"{what}: one item needs {format_bytes(per)} on top of {format_bytes(fixed)}, but the memory budget "
            f"is {format_bytes(budget)}; raise --max-memory or reduce the problem (fewer parameters with "
            "--wrt, a smaller --batch-size)")
    chunk = max(1, min(total, room // per))
    if max_chunk is not None:
        chunk = max(1, min(chunk, max_chunk))
    return ChunkPlan(total=int(total), chunk=int(chunk), bytes_per_item=per, budget=budget)


def require_fits(nbytes: int, budget: int, what: str, alternative: str) -> None:
    """Raise ResourceError if a result of ``nbytes`` exceeds ``budget``; ``alternative`` says what to use instead."""
    if nbytes > budget:
        raise ResourceError(f"{what} needs about {format_bytes(nbytes)}, above the memory limit of "
                            f"{format_bytes(budget)}; {alternative}")


# -- the one model of a network's working memory ---------------------------------------------------------------
def activation_elements(model) -> int:
    """Elements of every layer output for one example (nested layers included; unknown dimensions count 1).

    The one estimate of a forward pass's working set that every planner scales: a backward pass keeps about
    this many values per example, a forward-mode or vectorised derivative about this many per direction.
    """
    layers = (model._flatten_layers(include_self=False, recursive=True) if hasattr(model, "_flatten_layers")
              else getattr(model, "layers", []))
    total = 0
    for layer in layers:
        try:
            outputs = _flatten(layer.output)
        except (AttributeError, ValueError, RuntimeError):
            continue
        for t in outputs:
            shape = getattr(t, "shape", None)
            if shape is None:
                continue
            size = 1
            for d in tuple(shape)[1:]:
                size *= int(d) if d is not None else 1
            total += size
    return max(total, 1)


def activation_bytes(model, itemsize: int) -> int:
    """:func:`activation_elements` in bytes of ``itemsize``."""
    return activation_elements(model) * int(itemsize)


def _flatten(structure) -> list:
    if isinstance(structure, dict):
        return [t for v in structure.values() for t in _flatten(v)]
    if isinstance(structure, list | tuple):
        return [t for v in structure for t in _flatten(v)]
    return [structure]
