"""Safe model loading.

A model file is a program. The policy, in order:

- ``.keras`` archives: the zip is checked (traversal, symlinks, bombs, corrupt members), its ``config.json`` is
  read as text and refused if it names Python bytecode, modules outside Keras or non-modelling Keras APIs
  (:func:`tfpartials.io.safety.check_model_config`), then Keras loads it with ``safe_mode`` on and
  ``compile=False``; the loss name is read from the config as text.
- legacy ``.h5``: the same config check on the ``model_config`` attribute, plus HDF5 checks (external links,
  virtual datasets, external storage); Keras >= 3.15.1 honours ``safe_mode`` for HDF5 too (tested).
- TF SavedModel directories can run arbitrary graph operations and are refused unless ``trust=True``; with it
  they load as Keras models over their restored variables (:mod:`tfpartials.io.savedmodel`; no stored loss).
- ``trust="sandbox"`` is for computations, not live models: see :func:`tfpartials.cli.sandbox.sandboxed`.
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
    from .safety import check_keras_archive, read_json_member

    check_keras_archive(p)
    config = read_json_member(p, "config.json")
    if not isinstance(config, dict):
        raise InputError(f"{p}: not a Keras model archive (config.json holds {type(config).__name__}, "
                         "expected an object)")
    return config


def _loss_from_compile_config(cc: Any):
    if not isinstance(cc, dict):
        return None
    return _one_loss(cc.get("loss"), per_output=True)


def _one_loss(loss: Any, per_output: bool = False):
    """A loss name or a sanitised loss config; with ``per_output``, also a dict/list of them (one per output)."""
    if isinstance(loss, str):
        return loss
    if isinstance(loss, dict) and isinstance(loss.get("class_name"), str):
        cfg = loss.get("config") if isinstance(loss.get("config"), dict) else {}
        return {"class_name": loss["class_name"], "config": {k: v for k, v in cfg.items()
                                                              if isinstance(v, bool | int | float | str)}}
    if per_output and isinstance(loss, dict) and all(isinstance(k, str) for k in loss):
        out = {k: _one_loss(v) for k, v in loss.items()}
        return out if all(v is not None or loss[k] is None for k, v in out.items()) else None
    if per_output and isinstance(loss, list):
        out = [_one_loss(v) for v in loss]
        return out if all(v is not None or item is None for v, item in zip(out, loss)) else None
    return None


def _loss_weights_from_compile_config(cc: Any):
    """Per-output loss weights (a dict by output name or a list), numbers only; None when absent."""
    weights = cc.get("loss_weights") if isinstance(cc, dict) else None
    if isinstance(weights, dict) and all(isinstance(v, int | float) for v in weights.values()):
        return {str(k): float(v) for k, v in weights.items()}
    if isinstance(weights, list) and all(isinstance(v, int | float) for v in weights):
        return [float(v) for v in weights]
    return None


def stored_loss(path: str | os.PathLike, *, trust: bool = False):
    """The loss a saved model was compiled with, read as text (nothing deserialised), or None."""
    p = Path(path)
    fmt = model_format(p)
    if fmt == "keras":
        return _loss_from_compile_config(_read_keras_config(p).get("compile_config"))
    if fmt == "h5":
        from .safety import check_h5_file, parse_config_text

        check_h5_file(p, trust=trust)
        import h5py

        try:
            with h5py.File(p, "r") as f:
                raw = f.attrs.get("training_config")
        except OSError as exc:
            raise InputError(f"{p}: not a readable HDF5 file ({exc})") from None
        if raw is None:
            return None
        if not isinstance(raw, bytes | str):
            return None
        try:
            tc = parse_config_text(raw, f"{p}: training_config")
        except InputError:
            return None
        return _loss_from_compile_config(tc)
    return None


def load_model(path: str | os.PathLike, trust: bool | str = False) -> keras.Model:
    """Load a saved Keras model safely.

    Args:
        path: a ``.keras`` archive, a legacy ``.h5`` file, or a TF SavedModel directory.
        trust: allow formats that can execute code (TF SavedModel, Python lambdas in Lambda layers).
            Never set it for files you did not make. ``"sandbox"`` is refused here with a pointer to
            :func:`tfpartials.cli.sandbox.sandboxed`, which loads and differentiates in a confined child process.

    Returns:
        The model, uncompiled; the compiled loss (if any) is remembered so that ``loss=None`` uses it.

    Raises:
        InputError: missing or corrupt file, unsafe content without ``trust``, unsupported format.

    Example:
        >>> import os, tempfile, numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="lin")])
        >>> model.compile(loss="mse")
        >>> tmp = tempfile.TemporaryDirectory(); path = os.path.join(tmp.name, "model.keras")
        >>> model.save(path)
        >>> loaded = tp.load_model(path)
        >>> np.array_equal(loaded.get_layer("lin").kernel.numpy(), model.get_layer("lin").kernel.numpy())
        True
        >>> tp.resolve_loss(None, model=loaded).name        # the compiled loss is remembered
        'mse'
        >>> tmp.cleanup()
    """
    trust = _check_trust(trust)
    p = Path(path)
    fmt = model_format(p)
    loss = loss_weights = None
    if fmt == "savedmodel":
        if not trust:
            raise InputError(f"{p}: a TF SavedModel can run arbitrary graph operations when loaded; refused "
                             "without trust (pass trust=True / --trust only for files you made yourself)")
        model = _load_savedmodel(p)
    elif fmt == "keras":
        from .safety import check_model_config

        config = _read_keras_config(p)
        check_model_config(config, str(p), trust=trust)
        loss = _loss_from_compile_config(config.get("compile_config"))
        loss_weights = _loss_weights_from_compile_config(config.get("compile_config"))
        model = _keras_load(p, trust)
    else:
        loss = stored_loss(p, trust=trust)
        model = _keras_load(p, trust)
    if not isinstance(model, keras.Model):
        raise InputError(f"{p}: the file does not hold a Keras model (got {type(model).__name__})")
    model._tfpartials_loss = loss
    model._tfpartials_loss_weights = loss_weights
    model._tfpartials_source = str(p)
    return model


def _check_trust(trust: bool | str) -> bool:
    if trust == "sandbox":
        raise InputError("trust='sandbox' cannot return a live model (the model stays in the sandboxed child "
                         "process); use tfpartials.cli.sandbox.sandboxed(command, path, ...) to compute there and get "
                         "arrays back")
    if not isinstance(trust, bool):
        raise TypeError(f"trust: expected True, False or 'sandbox', got {trust!r}")
    return trust


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
    from .savedmodel import load_savedmodel

    return load_savedmodel(p)
