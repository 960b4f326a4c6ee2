"""A corpus of hostile and broken inputs, built here, each through the real command line.

For every case: exit code 2, exactly one line on stderr that says what is wrong, no traceback, no output file,
and no code from the file executed (the malicious files try to create a marker file).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.cli import hostile_files as H


@dataclass
class Ctx:
    files: object
    tmp: Path
    marker: Path
    out: Path

    def evil_keras(self, name="evil.keras"):
        return H.model_with_lambda(self.tmp / name, H.lambda_source_writing(self.marker), self.marker)

    def data(self, name, **arrays):
        p = self.tmp / name
        np.savez(p, **arrays)
        return p


def _grad(model, data, *extra):
    return ["gradients", model, "--data", data, *extra]


# ------------------------------------------------------------------------------------------ model files
def c_truncated_zip(c):
    return _grad(H.truncated(c.files.lin_keras, c.tmp / "t.keras"), c.files.lin_npz)


def c_zip_bomb(c):
    bomb = H.write_zip(c.tmp / "bomb.keras", [("config.json", b"{}"), ("model.weights.h5", bytes(11 * 2**20))])
    return _grad(bomb, c.files.lin_npz)


def c_dotdot_member(c):
    members = list(H.zip_members(c.files.lin_keras).items()) + [("../../escape.txt", b"x")]
    return _grad(H.write_zip(c.tmp / "dotdot.keras", members), c.files.lin_npz)


def c_absolute_member(c):
    members = list(H.zip_members(c.files.lin_keras).items()) + [("/etc/cron.d/evil", b"x")]
    return _grad(H.write_zip(c.tmp / "abs.keras", members), c.files.lin_npz)


def c_symlink_member(c):
    members = list(H.zip_members(c.files.lin_keras).items()) + [H.symlink_info("assets/link", "/etc/passwd")]
    return _grad(H.write_zip(c.tmp / "sym.keras", members), c.files.lin_npz)


def c_corrupt_crc(c):
    return _grad(H.flipped_crc(c.files.lin_keras, c.tmp / "crc.keras"), c.files.lin_npz)


def c_encrypted_member(c):
    return _grad(H.encrypted_flag(c.files.lin_keras, c.tmp / "enc.keras"), c.files.lin_npz)


def c_duplicate_member(c):
    members = list(H.zip_members(c.files.lin_keras).items())
    members.append(("config.json", b'{"class_name": "Sequential"}'))
    with pytest.warns(UserWarning, match="Duplicate name"):
        path = H.write_zip(c.tmp / "dup.keras", members)
    return _grad(path, c.files.lin_npz)


def c_no_config(c):
    members = [(k, v) for k, v in H.zip_members(c.files.lin_keras).items() if k != "config.json"]
    return _grad(H.write_zip(c.tmp / "noconf.keras", members), c.files.lin_npz)


def c_bad_json(c):
    members = dict(H.zip_members(c.files.lin_keras))
    members["config.json"] = b'{"class_name": '
    return _grad(H.write_zip(c.tmp / "badjson.keras", list(members.items())), c.files.lin_npz)


def c_deep_json(c):
    members = dict(H.zip_members(c.files.lin_keras))
    members["config.json"] = b"[" * 100_000 + b"]" * 100_000
    return _grad(H.write_zip(c.tmp / "deep.keras", list(members.items())), c.files.lin_npz)


def c_lambda_keras(c):
    return _grad(c.evil_keras(), c.files.lin_npz)


def c_lambda_h5(c):
    return _grad(H.model_with_lambda(c.tmp / "evil.h5", H.lambda_source_writing(c.marker), c.marker),
                 c.files.lin_npz)


def c_keras2_lambda_h5(c):
    base = H.model_with_lambda(c.tmp / "k2.h5", "lambda t: t * 2")

    def mutate(cfg):
        layer = cfg["config"]["layers"][-1]["config"]
        code = layer["function"]["config"]["code"]
        layer.update(function=[code, None, None], function_type="lambda")
        return cfg

    return _grad(H.h5_with_config(base, c.tmp / "k2evil.h5", mutate), c.files.lin_npz)


def c_os_system(c):
    base = H.model_with_lambda(c.tmp / "fnbase.keras", "lambda t: t")
    path = H.with_layer_config(base, c.tmp / "os.keras", -1, function={
        "module": "os", "class_name": "function", "config": "system", "registered_name": "function"})
    return _grad(path, c.files.lin_npz)


def c_builtins_eval(c):
    base = H.model_with_lambda(c.tmp / "fnbase.keras", "lambda t: t")
    path = H.with_layer_config(base, c.tmp / "eval.keras", -1, function={
        "module": "builtins", "class_name": "function", "config": "eval", "registered_name": "function"})
    return _grad(path, c.files.lin_npz)


def c_subprocess_class(c):
    layer = {"module": "subprocess", "class_name": "Popen", "config": {"args": ["touch", str(c.marker)]},
             "registered_name": None}
    return _grad(H.with_extra_layer(c.files.lin_keras, c.tmp / "popen.keras", layer), c.files.lin_npz)


def c_keras_get_file(c):
    base = H.model_with_lambda(c.tmp / "fnbase.keras", "lambda t: t")
    path = H.with_layer_config(base, c.tmp / "getfile.keras", -1, function={
        "module": "keras.utils", "class_name": "function", "config": "get_file", "registered_name": None})
    return _grad(path, c.files.lin_npz)


def c_unsafe_switch(c):
    base = H.model_with_lambda(c.tmp / "fnbase.keras", "lambda t: t")
    path = H.with_layer_config(base, c.tmp / "unsafe.keras", -1, function={
        "module": "keras.config", "class_name": "function", "config": "enable_unsafe_deserialization",
        "registered_name": None})
    return _grad(path, c.files.lin_npz)


def c_tfsm_layer(c):
    layer = {"module": "keras.layers", "class_name": "TFSMLayer",
             "config": {"name": "sm", "filepath": str(c.tmp), "call_endpoint": "serve"}, "registered_name": None}
    return _grad(H.with_extra_layer(c.files.lin_keras, c.tmp / "tfsm.keras", layer), c.files.lin_npz)


def c_vocabulary_file(c):
    layer = {"module": "keras.layers", "class_name": "StringLookup",
             "config": {"name": "lookup", "vocabulary": "/etc/passwd"}, "registered_name": None}
    return _grad(H.with_extra_layer(c.files.lin_keras, c.tmp / "vocab.keras", layer), c.files.lin_npz)


def c_h5_external_link(c):
    def add(f):
        f["leak"] = h5py.ExternalLink("/etc/hostname", "/")
    return _grad(H.h5_with(c.files.lin_h5, c.tmp / "ext.h5", add), c.files.lin_npz)


def c_h5_soft_link(c):
    def add(f):
        f["alias"] = h5py.SoftLink("/model_weights")
    return _grad(H.h5_with(c.files.lin_h5, c.tmp / "soft.h5", add), c.files.lin_npz)


def c_h5_virtual_dataset(c):
    return _grad(H.h5_with(c.files.lin_h5, c.tmp / "vds.h5",
                           lambda f: H.virtual_dataset_h5(f, c.tmp / "source.h5")), c.files.lin_npz)


def c_h5_external_storage(c):
    def add(f):
        f.create_dataset("raw", shape=(4,), dtype="u1", external=[("/etc/hostname", 0, 4)])
    return _grad(H.h5_with(c.files.lin_h5, c.tmp / "rawext.h5", add), c.files.lin_npz)


def c_inner_h5_external_link(c):
    return _grad(H.inner_weights_with_external_link(c.files.lin_keras, c.tmp / "inner.keras"), c.files.lin_npz)


def c_h5_not_hdf5(c):
    p = c.tmp / "fake.h5"
    p.write_text("this is not HDF5\n")
    return _grad(p, c.files.lin_npz)


def c_savedmodel_untrusted(c):
    return _grad(H.savedmodel(c.tmp / "sm"), c.files.lin_npz)


def c_not_a_model(c):
    p = c.tmp / "notes.keras"
    p.write_text("hello\n")
    return _grad(p, c.files.lin_npz)


def c_unsupported_format(c):
    p = c.tmp / "model.pkl"
    p.write_bytes(b"\x80\x04K\x01.")
    return _grad(p, c.files.lin_npz)


def c_missing_model(c):
    return _grad(c.tmp / "nope.keras", c.files.lin_npz)


def c_directory_not_savedmodel(c):
    (c.tmp / "somedir").mkdir()
    return _grad(c.tmp / "somedir", c.files.lin_npz)


# ------------------------------------------------------------------------------------------ data and flags
def c_wrong_input_shape(c):
    return _grad(c.files.lin_keras, c.data("d.npz", x=c.files.x[:, :3], y=c.files.y))


def c_string_dtype(c):
    return _grad(c.files.lin_keras, c.data("d.npz", x=np.full((37, 4), "a"), y=c.files.y))


def c_complex_dtype(c):
    return _grad(c.files.lin_keras, c.data("d.npz", x=c.files.x.astype(np.complex64), y=c.files.y))


def c_empty_data(c):
    return _grad(c.files.lin_keras, c.data("d.npz", x=np.zeros((0, 4), "f4"), y=np.zeros((0, 1), "f4")))


def c_nan_inputs(c):
    x = c.files.x.copy()
    x[3, 1] = np.nan
    return _grad(c.files.lin_keras, c.data("d.npz", x=x, y=c.files.y))


def c_inf_targets(c):
    y = c.files.y.copy()
    y[0, 0] = np.inf
    return _grad(c.files.lin_keras, c.data("d.npz", x=c.files.x, y=y))


def c_labels_out_of_range(c):
    with np.load(c.files.mlp_npz) as z:
        x, y = z["x"], z["y"].copy()
    y[0] = 7
    return _grad(c.files.mlp_keras, c.data("d.npz", x=x, y=y))


def c_labels_not_integer(c):
    with np.load(c.files.mlp_npz) as z:
        x, y = z["x"], z["y"].astype("f4")
    y[0] = 0.5
    return _grad(c.files.mlp_keras, c.data("d.npz", x=x, y=y))


def c_unknown_loss(c):
    return _grad(c.files.lin_keras, c.files.lin_npz, "--loss", "definitely_not_a_loss")


def c_negative_batch_size(c):
    return _grad(c.files.lin_keras, c.files.lin_npz, "--batch-size", "-3")


def c_zero_batch_size(c):
    return _grad(c.files.lin_keras, c.files.lin_npz, "--batch-size", "0")


def c_out_in_missing_dir(c):
    c.out = c.tmp / "no" / "such" / "dir" / "g.npz"
    return _grad(c.files.lin_keras, c.files.lin_npz)


def c_existing_output(c):
    c.out.write_bytes(b"precious")
    return _grad(c.files.lin_keras, c.files.lin_npz)


def c_non_numeric_csv(c):
    p = c.tmp / "d.csv"
    p.write_text("a,b,c,d,t\n1,2,3,4,5\n1,2,oops,4,5\n")
    return _grad(c.files.lin_keras, p, "--target", "t")


def c_ragged_csv(c):
    p = c.tmp / "d.csv"
    p.write_text("a,b,c,d,t\n1,2,3,4,5\n1,2,3\n")
    return _grad(c.files.lin_keras, p, "--target", "t")


def c_csv_missing_target(c):
    return _grad(c.files.lin_keras, c.files.lin_csv, "--target", "price")


def c_count_mismatch(c):
    return _grad(c.files.lin_keras, c.data("d.npz", x=c.files.x, y=c.files.y[:30]))


def c_target_shape_mismatch(c):
    return _grad(c.files.lin_keras, c.data("d.npz", x=c.files.x, y=np.zeros((37, 3), "f4")))


def c_pickled_npz(c):
    return _grad(c.files.lin_keras, c.data("d.npz", x=np.array([{"a": 1}] * 37, dtype=object), y=c.files.y))


def c_inputs_only_npy(c):
    p = c.tmp / "x.npy"
    np.save(p, c.files.x)
    return _grad(c.files.lin_keras, p)


def c_missing_data(c):
    return _grad(c.files.lin_keras, c.tmp / "nope.npz")


def c_data_format(c):
    p = c.tmp / "d.parquet"
    p.write_bytes(b"PAR1")
    return _grad(c.files.lin_keras, p)


def c_truncated_npz(c):
    return _grad(c.files.lin_keras, H.truncated(c.files.lin_npz, c.tmp / "d.npz", 0.6))


def c_npz_without_x(c):
    return _grad(c.files.lin_keras, c.data("d.npz", features=c.files.x, y=c.files.y))


def c_negative_timeout(c):
    return _grad(c.files.lin_keras, c.files.lin_npz, "--timeout", "-1")


def c_unknown_wrt(c):
    return _grad(c.files.lin_keras, c.files.lin_npz, "--wrt", "nothing/here")


def c_hessian_too_large(c):
    return ["hessian", c.files.lin_keras, "--data", c.files.lin_npz, "--max-memory", "16B"]


CASES = [
    (c_truncated_zip, r"not a valid zip|truncated or corrupt"),
    (c_zip_bomb, r"decompression bomb"),
    (c_dotdot_member, r"'\.\./\.\./escape\.txt' points outside the archive"),
    (c_absolute_member, r"'/etc/cron\.d/evil' points outside the archive"),
    (c_symlink_member, r"'assets/link' is a symbolic link"),
    (c_corrupt_crc, r"corrupt|checksum|CRC"),
    (c_encrypted_member, r"encrypted"),
    (c_duplicate_member, r"'config\.json' appears twice"),
    (c_no_config, r"no config\.json inside"),
    (c_bad_json, r"config\.json is not valid JSON"),
    (c_deep_json, r"nested 100000 levels deep"),
    (c_lambda_keras, r"refused to load: layer 'evil' holds Python bytecode .*pass trust=True \(--trust\)"),
    (c_lambda_h5, r"refused to load: layer 'evil' holds Python bytecode .*--trust"),
    (c_keras2_lambda_h5, r"refused to load: layer 'evil' holds Python bytecode"),
    (c_os_system, r"names os\.system from the Python module 'os'"),
    (c_builtins_eval, r"names the Python built-in 'eval'"),
    (c_subprocess_class, r"names subprocess\.Popen from the Python module 'subprocess'"),
    (c_keras_get_file, r"names 'get_file', which is not a modelling operation"),
    (c_unsafe_switch, r"'enable_unsafe_deserialization', which is not a modelling operation"),
    (c_tfsm_layer, r"layer 'sm' is a TFSMLayer, which loads a TF SavedModel"),
    (c_vocabulary_file, r"reads its vocabulary from the file '/etc/passwd'"),
    (c_h5_external_link, r"'leak' is an external link to '/etc/hostname'"),
    (c_h5_soft_link, r"'alias' is a soft link"),
    (c_h5_virtual_dataset, r"'vds' is a virtual dataset"),
    (c_h5_external_storage, r"'raw' stores its data in the external file '/etc/hostname'"),
    (c_inner_h5_external_link, r"model\.weights\.h5: refused: HDF5 entry 'leak' is an external link"),
    (c_h5_not_hdf5, r"not a readable HDF5 file"),
    (c_savedmodel_untrusted, r"TF SavedModel can run arbitrary graph operations .*refused without trust"),
    (c_not_a_model, r"not a valid zip"),
    (c_unsupported_format, r"unsupported model format \.pkl"),
    (c_missing_model, r"model file not found"),
    (c_directory_not_savedmodel, r"not a TF SavedModel"),
    (c_wrong_input_shape, r"inputs: expected shape \(N, 4\), got \(37, 3\)"),
    (c_string_dtype, r"expected numeric data, got dtype <U1"),
    (c_complex_dtype, r"expected real numbers, got dtype complex64"),
    (c_empty_data, r"empty \(0 examples\)"),
    (c_nan_inputs, r"inputs: 1 NaN/Inf value\(s\).*--allow-nan"),
    (c_inf_targets, r"targets: 1 NaN/Inf value\(s\)"),
    (c_labels_out_of_range, r"class labels must lie in \[0, 2\], got values in \[0, 7\]"),
    (c_labels_not_integer, r"expects integer class labels"),
    (c_unknown_loss, r"unknown loss 'definitely_not_a_loss'"),
    (c_negative_batch_size, r"--batch-size: expected a positive integer, got -3"),
    (c_zero_batch_size, r"--batch-size: expected a positive integer, got 0"),
    (c_out_in_missing_dir, r"output directory does not exist"),
    (c_existing_output, r"already exists; pass --overwrite"),
    (c_non_numeric_csv, r"column 'c' is not numeric \(row 3: 'oops'\)"),
    (c_ragged_csv, r"row 3 has 3 fields, expected 5"),
    (c_csv_missing_target, r"--target column 'price' not found"),
    (c_count_mismatch, r"x/y count mismatch: 37 inputs but 30 targets"),
    (c_target_shape_mismatch, r"targets: expected shape \(N, 1\) .* got \(37, 3\)"),
    (c_pickled_npz, r"pickled objects, which are refused"),
    (c_inputs_only_npy, r"inputs only"),
    (c_missing_data, r"data file not found"),
    (c_data_format, r"unsupported data format \.parquet"),
    (c_truncated_npz, r"not a readable \.npz"),
    (c_npz_without_x, r"expected an array named 'x'"),
    (c_negative_timeout, r"--timeout: expected a finite number > 0"),
    (c_unknown_wrt, r"nothing/here"),
    (c_hessian_too_large, r"(?i)memory|MiB|KiB|bytes"),
]


@pytest.mark.parametrize("build,pattern", CASES, ids=[f.__name__[2:] for f, _ in CASES])
def test_hostile_input_is_refused_cleanly(build, pattern, files, cli, tmp_path):
    c = Ctx(files, tmp_path, tmp_path / "MARKER", tmp_path / "g.npz")
    argv = [str(a) for a in build(c)]
    before = c.out.read_bytes() if c.out.exists() else None
    code, out, err = cli(*argv, "--out", c.out, "--quiet")
    assert code == 2, err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert err.startswith("tfpartials: error: ")
    assert re.search(pattern, err), err
    if before is None:
        assert not c.out.exists()
    else:
        assert c.out.read_bytes() == before
    assert not c.marker.exists(), "code from the hostile file ran"
    assert not [p for p in c.out.parent.glob(".*.tmp*")] if c.out.parent.exists() else True


def test_corpus_is_large_enough():
    assert len(CASES) >= 30


# ------------------------------------------------------------------------------------------ real entry point
_TF_NOISE = re.compile(r"oneDNN|I0000|W0000|E0000|cuda|absl|tensorflow/core|WARNING", re.I)


def test_real_entry_point_one_line_no_noise(files, tmp_path):
    """The installed entry ``python -m tfpartials.cli.main``: stderr is one line, no traceback, no TF noise."""
    c = Ctx(files, tmp_path, tmp_path / "MARKER", tmp_path / "g.npz")
    runs = {"lambda": (_grad(c.evil_keras(), files.lin_npz), r"holds Python bytecode")}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"}   # even with TensorFlow's own logging fully on
    procs = {k: subprocess.Popen([sys.executable, "-m", "tfpartials.cli.main", *map(str, argv), "--out",
                                  str(c.out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for k, (argv, _) in runs.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (name, err)
        assert err.count("\n") == 1 and err.startswith("tfpartials: error: "), (name, err)
        assert "Traceback" not in err and not _TF_NOISE.search(err), (name, err)
        assert re.search(runs[name][1], err), (name, err)
    assert not c.out.exists()
    assert not c.marker.exists()
