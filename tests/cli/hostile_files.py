"""Builders of hostile and broken model files, made by the tests themselves (nothing downloaded).

Each builder writes into a directory it is given. The malicious ones carry code that, if it ever ran, would
create ``marker``; tests assert that file never appears.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np


def lambda_source_writing(marker: Path) -> str:
    """A Python lambda that creates ``marker`` whenever it is called (also while Keras builds the model)."""
    return f"lambda t: (open({str(marker)!r}, 'w').write('pwned'), t)[1]"


def model_with_lambda(path: Path, source: str, marker: Path | None = None, d: int = 4) -> Path:
    """A real Keras model whose Lambda layer holds the Python lambda ``source`` (saved as .keras or .h5)."""
    fn = eval(source)  # noqa: S307 - the test's own code, to be serialised as bytecode
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(1, name="lin"),
                              keras.layers.Lambda(fn, name="evil")])
    model.compile(loss="mse")
    model.save(path)
    if marker is not None and marker.exists():  # building the model ran the lambda once, here, on purpose
        marker.unlink()
    return path


def zip_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def write_zip(path: Path, members: list[tuple[str | zipfile.ZipInfo, bytes]],
              compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members:
            z.writestr(name, data)
    return path


def with_config(base: Path, path: Path, mutate) -> Path:
    """Copy the ``.keras`` archive ``base`` with its config.json changed by ``mutate(config) -> config``."""
    members = zip_members(base)
    config = json.loads(members["config.json"])
    members["config.json"] = json.dumps(mutate(config) or config).encode()
    return write_zip(path, list(members.items()))


def with_layer_config(base: Path, path: Path, index: int, **updates) -> Path:
    def mutate(cfg):
        cfg["config"]["layers"][index]["config"].update(updates)
        return cfg

    return with_config(base, path, mutate)


def with_extra_layer(base: Path, path: Path, layer: dict) -> Path:
    def mutate(cfg):
        cfg["config"]["layers"].append(layer)
        return cfg

    return with_config(base, path, mutate)


def h5_with_config(base: Path, path: Path, mutate) -> Path:
    shutil.copy(base, path)
    with h5py.File(path, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        f.attrs["model_config"] = json.dumps(mutate(cfg) or cfg)
    return path


def h5_with(base: Path, path: Path, add) -> Path:
    """Copy the ``.h5`` model ``base`` and let ``add(h5file)`` plant something in it."""
    shutil.copy(base, path)
    with h5py.File(path, "r+") as f:
        add(f)
    return path


def symlink_info(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def truncated(base: Path, path: Path, keep: float = 0.5) -> Path:
    data = base.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def flipped_crc(base: Path, path: Path) -> Path:
    """A stored (uncompressed) copy with one byte of member data changed: the CRC no longer matches."""
    members = zip_members(base)
    write_zip(path, list(members.items()), compression=zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    at = data.find(b'"class_name"')
    data[at + 1] ^= 0x01
    path.write_bytes(bytes(data))
    return path


def encrypted_flag(base: Path, path: Path) -> Path:
    """Mark the first member as encrypted in both the local and the central header."""
    write_zip(path, list(zip_members(base).items()))
    data = bytearray(path.read_bytes())
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(sig)
        data[at + off] |= 0x01
    path.write_bytes(bytes(data))
    return path


def savedmodel(path: Path) -> Path:
    import tensorflow as tf

    class M(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(np.ones((4, 1), "float32"))

        @tf.function(input_signature=[tf.TensorSpec((None, 4), tf.float32)])
        def __call__(self, x):
            return x @ self.w

    tf.saved_model.save(M(), str(path))
    return path


def virtual_dataset_h5(f: h5py.File, source: Path) -> None:
    with h5py.File(source, "w") as s:
        s["data"] = np.arange(4.0)
    layout = h5py.VirtualLayout(shape=(4,), dtype="f8")
    layout[:] = h5py.VirtualSource(str(source), "data", shape=(4,))
    f.create_virtual_dataset("vds", layout)


def inner_weights_with_external_link(base: Path, path: Path) -> Path:
    """A .keras whose model.weights.h5 carries an external link (Keras opens it from memory)."""
    members = zip_members(base)
    tmp = path.with_suffix(".weights.h5")
    tmp.write_bytes(members["model.weights.h5"])
    with h5py.File(tmp, "r+") as f:
        f["leak"] = h5py.ExternalLink("/etc/hostname", "/")
    members["model.weights.h5"] = tmp.read_bytes()
    os.unlink(tmp)
    return write_zip(path, list(members.items()))
