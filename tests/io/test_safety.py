"""Checks on untrusted model files: zip, HDF5 and config rules, each with the reason it gives."""

from __future__ import annotations

import zipfile

import h5py
import numpy as np
import pytest

from tests.cli import hostile_files as H
from tests.models import linear_regression
from tfpartials._checks import InputError
from tfpartials.io import safety
from tfpartials.io.safety import check_h5_object, check_keras_archive, check_model_config, parse_config_text


@pytest.fixture(scope="module")
def lin_keras(tmp_path_factory):
    path = tmp_path_factory.mktemp("safety") / "lin.keras"
    linear_regression()[0].save(path)
    return path


def test_clean_archive_passes(lin_keras):
    check_keras_archive(lin_keras)


def test_total_size_and_member_limits(lin_keras, monkeypatch):
    monkeypatch.setattr(safety, "MAX_UNCOMPRESSED", 1000)
    with pytest.raises(InputError, match=r"expands to .* GiB \(limit .*decompression bomb"):
        check_keras_archive(lin_keras)
    monkeypatch.setattr(safety, "MAX_UNCOMPRESSED", 4 * 1024**3)
    monkeypatch.setattr(safety, "MAX_MEMBERS", 2)
    with pytest.raises(InputError, match=r"has 3 members \(limit 2\)"):
        check_keras_archive(lin_keras)


def test_member_claiming_size_from_nothing(tmp_path):
    p = H.write_zip(tmp_path / "z.keras", [("config.json", b"{}"), ("w.bin", b"")], zipfile.ZIP_STORED)
    data = bytearray(p.read_bytes())
    at = data.find(b"PK\x01\x02", data.find(b"PK\x01\x02") + 4)   # central record of the second member
    data[at + 24: at + 28] = (64 * 2**20).to_bytes(4, "little")    # its uncompressed size: 64 MiB
    p.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"'w\.bin' claims \d+ bytes from nothing"):
        check_keras_archive(p)


@pytest.mark.parametrize("name", ["..\\..\\evil", "C:/Windows/x", "a/../../b", "/abs", "\\server\\share"])
def test_escaping_member_names(tmp_path, name):
    p = H.write_zip(tmp_path / "z.keras", [("config.json", b"{}"), (name, b"x")])
    with pytest.raises(InputError, match=r"points outside the archive \(path traversal\)"):
        check_keras_archive(p)


def test_special_file_member(tmp_path):
    info = zipfile.ZipInfo("fifo")
    info.create_system = 3
    info.external_attr = (0o010644) << 16    # S_IFIFO
    p = H.write_zip(tmp_path / "z.keras", [("config.json", b"{}"), (info, b"")])
    with pytest.raises(InputError, match=r"'fifo' is a special file"):
        check_keras_archive(p)


def test_h5_hard_link_cycle_terminates(tmp_path):
    p = tmp_path / "cycle.h5"
    with h5py.File(p, "w") as f:
        g = f.create_group("g")
        g["again"] = g
        g["w"] = np.ones(3)
    check_h5_object(p, str(p))


def test_h5_too_many_entries(tmp_path, monkeypatch):
    monkeypatch.setattr(safety, "MAX_H5_OBJECTS", 5)
    p = tmp_path / "many.h5"
    with h5py.File(p, "w") as f:
        for i in range(10):
            f[f"d{i}"] = np.ones(1)
    with pytest.raises(InputError, match=r"more than 5 HDF5 entries"):
        check_h5_object(p, str(p))


def test_parse_config_limits(monkeypatch):
    assert parse_config_text(b'{"a": "[[[[[["}', "c") == {"a": "[[[[[["}     # brackets in strings do not count
    with pytest.raises(InputError, match=r"nested 201 levels deep \(limit 200\)"):
        parse_config_text("[" * 201 + "]" * 201, "c")
    with pytest.raises(InputError, match=r"c is not UTF-8 text"):
        parse_config_text(b"\xff\xfe", "c")
    monkeypatch.setattr(safety, "MAX_CONFIG_BYTES", 10)
    with pytest.raises(InputError, match=r"refused: 12 bytes of config \(limit 10\)"):
        parse_config_text('{"a": 12345}', "c")


def _fn(module, name, registered="function"):
    return {"module": module, "class_name": "function", "config": name, "registered_name": registered}


@pytest.mark.parametrize("node,reason", [
    ({"class_name": "Lambda", "config": {"name": "l", "function": {"class_name": "__lambda__", "config": {}}}},
     r"layer 'l' holds Python bytecode"),
    ({"class_name": "Lambda", "config": {"name": "l", "function": ["4wEAAAAAAAAAAAAAAAQAAAAD", None, None],
                                         "function_type": "lambda"}}, r"layer 'l' holds Python bytecode"),
    ({"class_name": "Lambda", "config": {"name": "l", "function": ["4wEAAAAAAAAAAAAAAAQAAAAD", None, None]}},
     r"serialised Python bytecode"),
    (_fn("posix", "system"), r"Python module 'posix'"),
    (_fn("importlib", "import_module"), r"Python module 'importlib'"),
    (_fn("builtins", "exec"), r"Python built-in 'exec'"),
    (_fn("builtins", "ignored", registered="__import__"), r"Python built-in '__import__'"),
    ({"module": "builtins", "class_name": "getattr", "config": {}}, r"Python built-in 'getattr'"),
    (_fn("my_package.layers", "helper"), r"outside Keras"),
    (_fn("keras.saving", "load_model"), r"'load_model', which is not a modelling operation"),
    (_fn("keras.src.utils.file_utils", "get_file"), r"not a modelling operation"),
    ({"module": 7, "class_name": "X", "config": {}}, r"names a module that is not text"),
    ({"class_name": "IntegerLookup", "config": {"name": "v", "vocabulary": "/data/v.txt"}}, r"vocabulary"),
])
def test_unsafe_config_entries(node, reason):
    config = {"class_name": "Sequential", "config": {"name": "seq", "layers": [node]}}
    with pytest.raises(InputError, match=reason):
        check_model_config(config, "m.keras")
    check_model_config(config, "m.keras", trust=True)      # trust skips the config check


@pytest.mark.parametrize("node", [
    _fn("builtins", "mean_squared_error"),                   # how Keras saves its own loss functions
    {"module": "keras.layers", "class_name": "Dense", "config": {"name": "d", "activation": "relu"}},
    {"module": "keras_hub.layers", "class_name": "X", "config": {}},
    {"class_name": "StringLookup", "config": {"name": "s", "vocabulary": ["a", "b"]}},
    {"class_name": "Dense", "config": {"name": "load_model"}},     # a layer *named* like an API is fine
])
def test_ordinary_config_entries(node):
    check_model_config({"class_name": "Sequential", "config": {"layers": [node]}}, "m.keras")
