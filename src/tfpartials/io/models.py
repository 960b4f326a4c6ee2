"""Safe model loading.

A model file is a program. ``.keras`` archives are loaded with Keras ``safe_mode`` on and without compiling
(the loss name is read from the archive's config as text); legacy ``.h5`` files likewise; TF SavedModel
directories can run arbitrary graph ops and are refused unless ``trust=True``.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

from .._backend import keras
from .._checks import InputError

__all__ = ["load_model", "stored_loss", "model_format"]


def model_format(path: str | os.PathLike) -> str:
    """``"keras"``, ``"h5"`` or ``"savedmodel"``; InputError for anything else."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"model file not found: {p}")
    if p.is_dir():
        if (p / "saved_model.pb").exists() or (p / "saved_model.pbtxt").exists():
            return "savedmodel"
        raise InputError(f"{p}: a directory that is not a TF SavedModel (no saved_model.pb)")
    suffix = p.suffix.lower()
    if suffix == ".keras":
        return "keras"
    if suffix in (".h5", ".hdf5"):
        return "h5"
    raise InputError(f"{p}: unsupported model format {suffix or '(none)'}; expected .keras, .h5 or a "
                     "SavedModel directory")


def _read_keras_config(p: Path) -> dict:
    from .safety import check_keras_archive

    check_keras_archive(p)
    with zipfile.ZipFile(p) as z:
        try:
            raw = z.read("config.json")
        except KeyError:
            raise InputError(f"{p}: not a Keras model archive (no config.json inside)") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{p}: config.json inside the archive is not valid JSON ({exc})") from None


def _loss_from_compile_config(cc: Any):
    if not isinstance(cc, dict):
        return None
    loss = cc.get("loss")
    if isinstance(loss, str):
        return loss
    if isinstance(loss, dict) and isinstance(loss.get("class_name"), str):
        cfg = loss.get("config") if isinstance(loss.get("config"), dict) else {}
        return {"class_name": loss["class_name"], "config": {k: v for k, v in cfg.items()
                                                              if isinstance(v, bool | int | float | str)}}
    return None


def stored_loss(path: str | os.PathLike):
    """The loss a saved model was compiled with, read as text (nothing deserialised), or None."""
    p = Path(path)
    fmt = model_format(p)
    if fmt == "keras":
        return _loss_from_compile_config(_read_keras_config(p).get("compile_config"))
    if fmt == "h5":
        from .safety import check_h5_file

        check_h5_file(p)
        import h5py

        try:
            with h5py.File(p, "r") as f:
                raw = f.attrs.get("training_config")
        except OSError as exc:
            raise InputError(f"{p}: not a readable HDF5 file ({exc})") from None
        if raw is None:
            return None
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        try:
            tc = json.loads(raw)
        except json.JSONDecodeError:
            return None
        return _loss_from_compile_config(tc)
    return None


def load_model(path: str | os.PathLike, trust: bool = False) -> keras.Model:
    """Load a saved Keras model safely.

    Args:
        path: a ``.keras`` archive, a legacy ``.h5`` file, or a TF SavedModel directory.
        trust: allow formats that can execute code (TF SavedModel, Python lambdas in Lambda layers).
            Never set it for files you did not make.

    Returns:
        The model, uncompiled; the compiled loss (if any) is remembered so that ``loss=None`` uses it.

    Raises:
        InputError: missing or corrupt file, unsafe content without ``trust``, unsupported format.

    Example:
        >>> model = tp.load_model("model.keras")   # doctest: +SKIP
    """
    p = Path(path)
    fmt = model_format(p)
    loss = None
    if fmt == "savedmodel":
        if not trust:
            raise InputError(f"{p}: a TF SavedModel can run arbitrary graph operations when loaded; refused "
                             "without trust (pass trust=True / --trust only for files you made yourself)")
        model = _load_savedmodel(p)
    elif fmt == "keras":
        config = _read_keras_config(p)
        loss = _loss_from_compile_config(config.get("compile_config"))
        model = _keras_load(p, trust)
    else:
        loss = stored_loss(p)
        model = _keras_load(p, trust)
    if not isinstance(model, keras.Model):
        raise InputError(f"{p}: the file does not hold a Keras model (got {type(model).__name__})")
    model._tfpartials_loss = loss
    model._tfpartials_source = str(p)
    return model


def _keras_load(p: Path, trust: bool):
    try:
        return keras.models.load_model(p, compile=False, safe_mode=not trust)
    except ValueError as exc:
        msg = " ".join(str(exc).split())
        if "lambda" in msg.lower() or "safe_mode" in msg.lower() or "unsafe" in msg.lower():
            raise InputError(f"{p}: refused to load: the model contains code (a Python lambda or an arbitrary "
                             "function) that would run on loading; if you made this file yourself, pass "
                             "trust=True (--trust)") from None
        raise InputError(f"{p}: not a loadable Keras model ({_short(msg)})") from None
    except (OSError, zipfile.BadZipFile, KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise InputError(f"{p}: not a loadable Keras model ({type(exc).__name__}: {_short(str(exc))})") from None
    except Exception as exc:  # Keras raises many kinds on corrupt files; never a traceback for the user
        raise InputError(f"{p}: not a loadable Keras model ({type(exc).__name__}: {_short(str(exc))})") from None


def _short(msg: str, n: int = 200) -> str:
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= n else msg[: n - 3] + "..."


def _load_savedmodel(p: Path):
    try:
        layer = keras.layers.TFSMLayer(str(p), call_endpoint="serving_default")
    except Exception as exc:
        raise InputError(f"{p}: not a loadable SavedModel ({type(exc).__name__}: {_short(str(exc))})") from None
    raise InputError(f"{p}: SavedModel directories load as inference-only layers without trainable Keras "
                     f"variables ({type(layer).__name__}); re-save the model as .keras to differentiate it "
                     "with respect to its parameters")
