"""Checks on untrusted model files, run before Keras opens them.

A model file is a program: its config names classes and functions that Keras imports and calls, and its
containers (zip, HDF5) can point at other files. These checks read the file as data only -- nothing is
imported, deserialised or executed -- and refuse, with a one-line reason, anything tfpartials never needs:

- zip archives (``.keras``): corrupt or encrypted members, names that escape the archive (``../``, absolute,
  drive letters), symbolic links, duplicate names, too many members, decompression bombs (size or ratio);
- HDF5 (``.h5`` and the weights inside a ``.keras``): external links, soft links, virtual datasets and
  datasets stored in external raw files (all can read files outside the model), cycles;
- configs: Python bytecode (``Lambda`` layers holding a lambda), functions or classes from modules outside
  Keras (``os.system``, ``builtins.eval``, ``subprocess``...), Keras APIs that are not modelling operations
  (``get_file``, ``load_model``, ``enable_unsafe_deserialization``...), layers that load SavedModels or
  read vocabulary files from disk.

Cost: one pass over the zip (CRC check of every member) and over the HDF5 link graph; linear in file size.

Reference: Keras security advisories CVE-2025-1550, CVE-2025-8747, CVE-2025-9905, CVE-2025-9906,
CVE-2025-12058 (safe_mode bypasses through configs naming arbitrary callables and files).
"""

from __future__ import annotations

import builtins
import json
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._checks import InputError

__all__ = ["check_keras_archive", "check_h5_file", "check_h5_object", "check_model_config", "read_json_member",
           "MAX_UNCOMPRESSED", "MAX_RATIO", "MAX_MEMBERS", "MAX_CONFIG_BYTES"]

MAX_UNCOMPRESSED = 4 * 1024**3     # 4 GiB of weights is far beyond what tfpartials can differentiate densely
MAX_RATIO = 200                    # zip bombs compress far better than float weights
MAX_MEMBERS = 10_000
MAX_CONFIG_BYTES = 64 * 1024**2    # a config.json of a huge model is a few MiB
MAX_CONFIG_DEPTH = 200             # deeper nesting is an attack on the JSON parser, not a model
MAX_H5_OBJECTS = 200_000

_TRUST_HINT = "if you made this file yourself, pass trust=True (--trust), or use --sandbox"

# package roots whose classes Keras may import (it only accepts KerasSaveable subclasses from them)
_KERAS_PACKAGES = {"keras", "keras_hub", "keras_cv", "keras_nlp", "tf_keras"}
# modules that exist to run programs, touch files or the network, or load code
_DANGEROUS_MODULES = {
    "os", "posix", "nt", "sys", "subprocess", "shutil", "socket", "ssl", "http", "urllib", "requests",
    "importlib", "imp", "runpy", "code", "codeop", "pickle", "marshal", "shelve", "dill", "cloudpickle",
    "ctypes", "cffi", "pty", "signal", "multiprocessing", "threading", "asyncio", "webbrowser", "tempfile",
    "pathlib", "io", "fileinput", "glob", "ftplib", "smtplib", "telnetlib", "pdb", "inspect", "types",
    "functools", "operator", "numpy", "tensorflow", "torch", "jax", "__main__",
}
# Keras functions that do things other than modelling (download, load, save, change safety settings)
_NON_MODELLING = {
    "enable_unsafe_deserialization", "get_file", "load_model", "model_from_json", "model_from_config",
    "save_model", "load_weights", "save_weights", "load_img", "save_img", "deserialize_keras_object",
    "serialize_keras_object", "register_keras_serializable", "clear_session", "image_dataset_from_directory",
    "text_dataset_from_directory", "audio_dataset_from_directory", "timeseries_dataset_from_array",
    "set_random_seed", "set_floatx", "set_epsilon", "set_image_data_format", "set_backend", "disable_traceback_filtering",
}
# layers that load other programs or read files named in their config
_FILE_LAYERS = {"TFSMLayer": "loads a TF SavedModel (arbitrary graph operations)"}
_VOCAB_LAYERS = {"StringLookup", "IntegerLookup", "TextVectorization", "IndexLookup"}


# ------------------------------------------------------------------------------------------------ zip
def check_keras_archive(p: Path) -> None:
    """Reject corrupt zips, path traversal, symlinks, duplicates and decompression bombs in a ``.keras`` archive.

    Raises:
        InputError: naming the offending member and why.
    """
    p = Path(p)
    if not zipfile.is_zipfile(p):
        raise InputError(f"{p}: not a Keras model archive (not a valid zip file; truncated or corrupt?)")
    try:
        with zipfile.ZipFile(p) as z:
            infos = z.infolist()
            if len(infos) > MAX_MEMBERS:
                raise InputError(f"{p}: refused: the archive has {len(infos)} members (limit {MAX_MEMBERS})")
            seen: set[str] = set()
            total = 0
            for info in infos:
                _check_member(p, info)
                if info.filename in seen:
                    raise InputError(f"{p}: refused: archive member {info.filename!r} appears twice "
                                     "(ambiguous archive)")
                seen.add(info.filename)
                total += info.file_size
                if info.compress_size > 0 and info.file_size > 10 * 1024**2 and \
                        info.file_size / info.compress_size > MAX_RATIO:
                    raise InputError(f"{p}: refused: archive member {info.filename!r} expands "
                                     f"{info.file_size // info.compress_size}x (a decompression bomb?)")
                if info.compress_size == 0 and info.file_size > 10 * 1024**2:
                    raise InputError(f"{p}: refused: archive member {info.filename!r} claims "
                                     f"{info.file_size} bytes from nothing (a decompression bomb?)")
            if total > MAX_UNCOMPRESSED:
                raise InputError(f"{p}: refused: the archive expands to {total / 1024**3:.1f} GiB "
                                 f"(limit {MAX_UNCOMPRESSED / 1024**3:.0f} GiB; a decompression bomb?)")
            bad = z.testzip()
            if bad is not None:
                raise InputError(f"{p}: corrupt archive (member {bad!r} fails its checksum)")
            for info in infos:
                if info.filename.endswith(".h5") and not info.is_dir():
                    # a seekable copy (memory up to 256 MiB, then a temporary file) for h5py to walk
                    with z.open(info) as fh, tempfile.SpooledTemporaryFile(max_size=256 * 1024**2) as copy:
                        shutil.copyfileobj(fh, copy, 1024**2)
                        copy.seek(0)
                        check_h5_object(copy, f"{p}: {info.filename}")
    except zipfile.BadZipFile as exc:
        raise InputError(f"{p}: not a Keras model archive (corrupt zip: {exc})") from None
    except RuntimeError as exc:  # encrypted members
        raise InputError(f"{p}: refused: unreadable archive member ({' '.join(str(exc).split())})") from None
    except (OSError, EOFError, NotImplementedError, ValueError, zlib_error()) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{p}: unreadable archive ({type(exc).__name__}: {_short(exc)})") from None


def _check_member(p: Path, info: zipfile.ZipInfo) -> None:
    name = info.filename
    norm = name.replace("\\", "/")
    parts = norm.split("/")
    if "\x00" in name or norm.startswith("/") or ".." in parts or (len(name) > 1 and name[1] == ":"):
        raise InputError(f"{p}: refused: archive member {name!r} points outside the archive (path traversal)")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise InputError(f"{p}: refused: archive member {name!r} is a symbolic link")
    if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise InputError(f"{p}: refused: archive member {name!r} is a special file (not a regular file)")
    if info.flag_bits & 0x1:
        raise InputError(f"{p}: refused: archive member {name!r} is encrypted")


def zlib_error() -> type[BaseException]:
    import zlib

    return zlib.error


def read_json_member(p: Path, member: str = "config.json") -> dict:
    """Read and parse one JSON member of a checked archive, with size and nesting limits."""
    with zipfile.ZipFile(p) as z:
        try:
            info = z.getinfo(member)
        except KeyError:
            raise InputError(f"{p}: not a Keras model archive (no {member} inside)") from None
        if info.file_size > MAX_CONFIG_BYTES:
            raise InputError(f"{p}: refused: {member} is {info.file_size} bytes (limit {MAX_CONFIG_BYTES})")
        raw = z.read(member)
    return parse_config_text(raw, f"{p}: {member}")


def parse_config_text(raw: bytes | str, where: str) -> Any:
    """``json.loads`` with the nesting limit checked first (deep nesting crashes parsers)."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{where} is not UTF-8 text") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise InputError(f"{where}: refused: {len(raw)} bytes of config (limit {MAX_CONFIG_BYTES})")
    depth = deepest = 0
    in_str = escaped = False
    for ch in raw:
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    if deepest > MAX_CONFIG_DEPTH:
        raise InputError(f"{where}: refused: the config is nested {deepest} levels deep (limit {MAX_CONFIG_DEPTH})")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InputError(f"{where} is not valid JSON ({_short(exc)})") from None


# ------------------------------------------------------------------------------------------------ config
def check_model_config(config: Any, where: str, *, trust: bool = False) -> None:
    """Refuse configs that would make Keras import or run code, read files, or weaken its own safety.

    The config is walked as plain JSON; nothing is imported. With ``trust=True`` nothing is checked (the
    caller vouches for the file).

    Raises:
        InputError: naming the entry, what it would do, and how to opt in.
    """
    if trust:
        return
    for node, layer in _dicts(config):
        reason = _unsafe_reason(node, layer)
        if reason:
            raise InputError(f"{where}: refused to load: {reason}; {_TRUST_HINT}")


def _dicts(obj: Any) -> Iterator[tuple[dict, str | None]]:
    """Every dict in the config, with the name of the innermost layer (or object) that holds it."""
    stack: list[tuple[Any, str | None]] = [(obj, None)]
    while stack:
        cur, owner = stack.pop()
        if isinstance(cur, dict):
            cfg = cur.get("config")
            name = cfg.get("name") if isinstance(cfg, dict) else None
            owner = name if isinstance(name, str) else owner
            yield cur, owner
            stack.extend((v, owner) for v in cur.values())
        elif isinstance(cur, list):
            stack.extend((v, owner) for v in cur)


def _unsafe_reason(node: dict, owner: str | None = None) -> str | None:
    class_name = node.get("class_name")
    cfg = node.get("config")
    label = f"layer {owner!r}" if owner else f"entry {class_name!r}"
    if class_name == "__lambda__" or node.get("function_type") == "lambda":
        return (f"{label} holds Python bytecode (a Lambda layer with a Python lambda), which runs when the "
                "model is loaded or called")
    if isinstance(class_name, str) and class_name in _FILE_LAYERS:
        return f"{label} is a {class_name}, which {_FILE_LAYERS[class_name]}"
    if isinstance(class_name, str) and class_name in _VOCAB_LAYERS and isinstance(cfg, dict) and \
            isinstance(cfg.get("vocabulary"), str):
        return f"{label} reads its vocabulary from the file {cfg['vocabulary']!r}, outside the model"
    module = node.get("module")
    name = cfg if isinstance(cfg, str) else class_name
    if module is not None:
        if not isinstance(module, str):
            return f"{label} names a module that is not text ({type(module).__name__})"
        root = module.split(".", 1)[0]
        if module == "builtins":
            for fn in (cfg if isinstance(cfg, str) else None, node.get("registered_name"), class_name):
                if isinstance(fn, str) and fn != "function" and hasattr(builtins, fn):
                    return (f"{label} names the Python built-in {fn!r} (module 'builtins'), which can run "
                            "arbitrary code")
        elif root in _DANGEROUS_MODULES:
            return (f"{label} names {module}.{name} from the Python module {module!r}, which can run "
                    "programs or touch files")
        elif root not in _KERAS_PACKAGES and not _registered(node):
            return (f"{label} names {module}.{name} from module {module!r}, outside Keras; Keras would "
                    "need code that is not part of the model")
    for text in (name, node.get("registered_name"), node.get("function") if isinstance(node.get("function"), str)
                 else None):
        if isinstance(text, str) and text.rsplit(".", 1)[-1].rsplit(">", 1)[-1] in _NON_MODELLING:
            return f"{label} names {text!r}, which is not a modelling operation (it loads, saves or downloads)"
    fn = node.get("function")
    if isinstance(fn, list) and fn and isinstance(fn[0], str) and len(fn[0]) > 16:
        return f"{label} holds what looks like serialised Python bytecode in 'function'"
    return None


def _registered(node: dict) -> bool:
    """True when the config names a custom object the user registered in this process (their own code)."""
    reg = node.get("registered_name")
    if not isinstance(reg, str) or not reg:
        return False
    try:
        import keras

        return keras.saving.get_registered_object(reg) is not None
    except Exception:  # noqa: BLE001 - a lookup that fails means "not registered"
        return False


# ------------------------------------------------------------------------------------------------ HDF5
def check_h5_file(p: Path, *, trust: bool = False) -> None:
    """Reject HDF5 files that are unreadable, point outside themselves, or carry unsafe model configs."""
    import h5py

    p = Path(p)
    try:
        f = h5py.File(p, "r")
    except (OSError, ValueError) as exc:
        raise InputError(f"{p}: not a readable HDF5 file ({_short(exc, 160)})") from None
    with f:
        _check_h5_links(f, str(p))
        for attr in ("model_config", "training_config"):
            raw = f.attrs.get(attr)
            if raw is None:
                continue
            if isinstance(raw, bytes | str):
                check_model_config(parse_config_text(raw, f"{p}: {attr}"), str(p), trust=trust)


def check_h5_object(source: Any, where: str) -> None:
    """Reject an HDF5 file (a path or a file-like object) with external links, soft links or virtual data."""
    import h5py

    try:
        f = h5py.File(source, "r")
    except (OSError, ValueError) as exc:
        raise InputError(f"{where}: not a readable HDF5 file ({_short(exc, 160)})") from None
    with f:
        _check_h5_links(f, where)


def _check_h5_links(f, where: str) -> None:
    import h5py

    seen: set[int] = set()
    stack: list[tuple[Any, str]] = [(f, "")]
    count = 0
    while stack:
        group, prefix = stack.pop()
        try:
            key = h5py.h5o.get_info(group.id).addr
        except Exception:  # noqa: BLE001 - fall back to the object hash
            key = hash(group.id)
        if key in seen:
            continue
        seen.add(key)
        for name in group.keys():
            count += 1
            if count > MAX_H5_OBJECTS:
                raise InputError(f"{where}: refused: more than {MAX_H5_OBJECTS} HDF5 entries")
            full = f"{prefix}{name}"
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise InputError(f"{where}: refused: HDF5 entry {full!r} is an external link to "
                                 f"{link.filename!r} (reads files outside the model)")
            if isinstance(link, h5py.SoftLink):
                raise InputError(f"{where}: refused: HDF5 entry {full!r} is a soft link to {link.path!r} "
                                 "(Keras model files have none)")
            item = group.get(name)
            if isinstance(item, h5py.Dataset):
                if item.is_virtual:
                    raise InputError(f"{where}: refused: HDF5 entry {full!r} is a virtual dataset "
                                     "(reads files outside the model)")
                if item.external:
                    raise InputError(f"{where}: refused: HDF5 dataset {full!r} stores its data in the external "
                                     f"file {item.external[0][0]!r} (reads files outside the model)")
            elif isinstance(item, h5py.Group):
                stack.append((item, f"{full}/"))


def _short(exc: Any, n: int = 200) -> str:
    msg = " ".join(str(exc).split())
    return msg if len(msg) <= n else msg[: n - 3] + "..."
