"""Checks on untrusted model files before Keras opens them."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

from .._checks import InputError

__all__ = ["check_keras_archive", "check_h5_file", "MAX_UNCOMPRESSED", "MAX_RATIO"]

MAX_UNCOMPRESSED = 4 * 1024**3     # 4 GiB of weights is far beyond what tfpartials can differentiate densely
MAX_RATIO = 200                    # zip bombs compress far better than float weights
MAX_MEMBERS = 10_000


def check_keras_archive(p: Path) -> None:
    """Reject corrupt zips, path traversal, symlinks and decompression bombs in a ``.keras`` archive."""
    if not zipfile.is_zipfile(p):
        raise InputError(f"{p}: not a Keras model archive (not a valid zip file; truncated or corrupt?)")
    try:
        with zipfile.ZipFile(p) as z:
            infos = z.infolist()
            if len(infos) > MAX_MEMBERS:
                raise InputError(f"{p}: refused: the archive has {len(infos)} members (limit {MAX_MEMBERS})")
            total = 0
            for info in infos:
                name = info.filename
                parts = name.replace("\\", "/").split("/")
                if name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
                    raise InputError(f"{p}: refused: archive member {name!r} points outside the archive")
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise InputError(f"{p}: refused: archive member {name!r} is a symbolic link")
                total += info.file_size
                if info.compress_size > 0 and info.file_size / info.compress_size > MAX_RATIO and \
                        info.file_size > 10 * 1024**2:
                    raise InputError(f"{p}: refused: archive member {name!r} expands {info.file_size // info.compress_size}x "
                                     "(a decompression bomb?)")
            if total > MAX_UNCOMPRESSED:
                raise InputError(f"{p}: refused: the archive expands to {total / 1024**3:.1f} GiB "
                                 f"(limit {MAX_UNCOMPRESSED / 1024**3:.0f} GiB)")
            bad = z.testzip()
            if bad is not None:
                raise InputError(f"{p}: corrupt archive (member {bad!r} fails its checksum)")
    except zipfile.BadZipFile as exc:
        raise InputError(f"{p}: not a Keras model archive ({exc})") from None
    except (OSError, EOFError, NotImplementedError) as exc:
        raise InputError(f"{p}: unreadable archive ({type(exc).__name__}: {exc})") from None


def check_h5_file(p: Path) -> None:
    """Reject HDF5 files that are unreadable or hold external links or virtual datasets."""
    import h5py

    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise InputError(f"{p}: not a readable HDF5 file ({' '.join(str(exc).split())[:160]})") from None
    with f:
        problems: list[str] = []

        def visit(name, obj=None):
            link = f.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink | h5py.SoftLink):
                kind = "an external link" if isinstance(link, h5py.ExternalLink) else "a soft link"
                problems.append(f"{name!r} is {kind}")
                return
            item = f.get(name)
            if isinstance(item, h5py.Dataset) and item.is_virtual:
                problems.append(f"{name!r} is a virtual dataset")

        _visit_links(f, visit)
        if problems:
            raise InputError(f"{p}: refused: HDF5 entry {problems[0]} (can read files outside the model)")


def _visit_links(group, fn, prefix: str = "") -> None:
    import h5py

    for key in group.keys():
        name = f"{prefix}{key}"
        link = group.get(key, getlink=True)
        fn(name)
        if isinstance(link, h5py.HardLink):
            item = group.get(key)
            if isinstance(item, h5py.Group):
                _visit_links(item, lambda n, _fn=fn, _pre=name: _fn(n), prefix=f"{name}/")
