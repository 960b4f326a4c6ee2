"""Where the bundled examples keep their trained models: a user cache directory, else the temp directory.

Nothing here touches the network. A cached model is an ordinary ``.keras`` archive loaded with tfpartials'
safe loader; a corrupt or unreadable cache entry is ignored and retrained.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["cache_dir", "cached_model"]


def cache_dir(cache: bool | str | os.PathLike = True) -> Path | None:
    """The directory for cached example models, or None when caching is off.

    ``cache=True`` uses ``$TFPARTIALS_CACHE_DIR``, else ``$XDG_CACHE_HOME/tfpartials``, else
    ``~/.cache/tfpartials``, falling back to the temp directory when that is not writable.
    """
    if cache is False or cache is None:
        return None
    if cache is not True:
        return Path(cache)
    env = os.environ.get("TFPARTIALS_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    candidate = Path(base) / "tfpartials"
    try:
        candidate.mkdir(parents=True, exist_ok=True)
        if os.access(candidate, os.W_OK):
            return candidate
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / "tfpartials-cache"


def cached_model(name: str, train: Callable[[], object], cache: bool | str | os.PathLike = True):
    """Load ``name`` (a ``.keras`` file name) from the cache, or call ``train()`` and store its result."""
    from ..io.models import load_model
    from ..io.writers import atomic_write

    directory = cache_dir(cache)
    if directory is None:
        return train()
    path = directory / name
    if path.exists():
        try:
            return load_model(path)
        except Exception:  # noqa: BLE001 - a damaged cache entry is retrained, never fatal
            pass
    model = train()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: model.save(tmp), overwrite=True)
    except OSError:
        pass  # a read-only cache only costs the training time
    return model
