"""Progress bars (rich) for long passes; silent when quiet, when stderr is not a terminal, or for short passes."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

__all__ = ["progress", "set_quiet"]

_QUIET = False
_TERMINAL: bool | None = None  # stderr is a terminal (set by the CLI when it filters stderr through a pipe)


def set_quiet(quiet: bool = True) -> None:
    """Silence (or re-enable) every progress bar of tfpartials in this process.

    Bars are drawn on stderr only when it is a terminal and a pass is long; ``quiet=True`` on a single call
    (or ``TFPARTIALS_PROGRESS=0`` in the environment) silences one call or every process instead.

    Example:
        >>> import tfpartials as tp
        >>> tp.set_quiet()          # no progress bars from here on
        >>> tp.set_quiet(False)     # back to the default
    """
    global _QUIET
    _QUIET = bool(quiet)


def _enabled(total: int | None, quiet: bool, min_total: int) -> bool:
    if quiet or _QUIET:
        return False
    if os.environ.get("TFPARTIALS_PROGRESS") == "1":
        return True
    if os.environ.get("TFPARTIALS_PROGRESS") == "0":
        return False
    if total is not None and total < min_total:
        return False
    return _TERMINAL if _TERMINAL is not None else sys.stderr.isatty()


class _Null:
    def advance(self, n: int = 1) -> None:
        pass

    def update(self, **kw) -> None:
        pass


@contextmanager
def progress(description: str, total: int | None, *, quiet: bool = False, unit: str = "batches",
             min_total: int = 4):
    """Context manager yielding an object with ``advance(n)``; draws a rich bar on stderr when useful."""
    if not _enabled(total, quiet, min_total):
        yield _Null()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn(unit), TimeElapsedColumn(), console=Console(stderr=True, force_terminal=_TERMINAL), transient=True)

    class _Task:
        def __init__(self, task_id):
            self.task_id = task_id

        def advance(self, n: int = 1) -> None:
            bar.advance(self.task_id, n)

        def update(self, **kw) -> None:
            bar.update(self.task_id, **kw)

    with bar:
        yield _Task(bar.add_task(description, total=total))
