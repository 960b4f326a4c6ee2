"""Atomic output files: written to a temporary file beside the target, then renamed into place.

An interrupted run leaves no half-written file, and an existing file is never replaced unless asked.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import InputError

__all__ = ["check_output_path", "atomic_write", "save_npz", "save_json", "to_jsonable", "atomic_directory"]


def check_output_path(path: str | os.PathLike, overwrite: bool = False, *, directory: bool = False) -> Path:
    """Fail early (before any heavy work) if ``path`` cannot be written."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise InputError(f"output directory does not exist: {parent}")
    if not parent.is_dir():
        raise InputError(f"output location is not a directory: {parent}")
    if not os.access(parent, os.W_OK):
        raise InputError(f"output directory is not writable: {parent}")
    if p.exists():
        if directory and p.is_dir() and not any(p.iterdir()):
            return p
        if not overwrite:
            raise InputError(f"output {p} already exists; pass --overwrite (overwrite=True) to replace it")
        if p.is_dir() != directory:
            raise InputError(f"output {p} exists and is a {'directory' if p.is_dir() else 'file'}")
    return p


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], overwrite: bool = True) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` to ``path``; remove the temp file on any error."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise InputError(f"output {p} already exists; pass --overwrite (overwrite=True) to replace it")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp" + "".join(p.suffixes[-1:]),
                               dir=str(p.parent if str(p.parent) else "."))
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.replace(tmp_path, p)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return p


def save_npz(path: str | os.PathLike, arrays: Mapping[str, Any], overwrite: bool = True) -> Path:
    """Write ``arrays`` to an uncompressed .npz atomically."""
    data = {str(k): np.asarray(v) for k, v in arrays.items()}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **data)

    return atomic_write(path, write, overwrite)


def to_jsonable(obj: Any) -> Any:
    """numpy/tensors/dataclasses -> plain JSON types (NaN/Inf become None)."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "numpy") and callable(obj.numpy):
        obj = obj.numpy()
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_json(path: str | os.PathLike, obj: Any, overwrite: bool = True) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=False)

    def write(tmp: Path) -> None:
        tmp.write_text(text + "\n")

    return atomic_write(path, write, overwrite)


class atomic_directory:
    """Context manager: build a directory under a temporary name, rename it into place on success.

    >>> with atomic_directory("out") as tmp:    # doctest: +SKIP
    ...     (tmp / "index.html").write_text("...")
    """

    def __init__(self, path: str | os.PathLike, overwrite: bool = False):
        self.path = Path(path)
        self.overwrite = overwrite

    def __enter__(self) -> Path:
        parent = self.path.parent if str(self.path.parent) else Path(".")
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=str(parent)))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        if self.path.exists():
            if not self.overwrite and any(self.path.iterdir()) if self.path.is_dir() else not self.overwrite:
                shutil.rmtree(self.tmp, ignore_errors=True)
                raise InputError(f"output {self.path} already exists; pass --overwrite to replace it")
            old = self.path.with_name(f".{self.path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.path, old)
            os.replace(self.tmp, self.path)
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
        else:
            os.replace(self.tmp, self.path)
        return False
