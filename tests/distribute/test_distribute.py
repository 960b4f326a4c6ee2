"""tf.distribute: the same numbers on 1, 2 and 3 logical CPU devices, and on two real worker processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import tfpartials as tp
from tests import models as M

ROOT = Path(__file__).resolve().parents[2]
N_EXAMPLES, BATCH = 29, 4  # 29 divides evenly by neither the batch size nor 2 or 3 replicas


def _strategy(r: int):
    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < r:
        pytest.skip(f"needs {r} logical CPU devices (configured in conftest before TF starts)")
    return tf.distribute.MirroredStrategy([d.name for d in devices[:r]],
                                          cross_device_ops=tf.distribute.ReductionToOneDevice())


KW = dict(loss="sparse_categorical_crossentropy", from_logits=True, batch_size=BATCH)


@pytest.mark.parametrize("replicas", [2, 3])
def test_gradients_equal_single_device(replicas):
    model, x, y = M.mlp(n=N_EXAMPLES)
    ref = tp.gradients(model, (x, y), **KW)
    got = tp.gradients(model, (x, y), **KW, strategy=_strategy(replicas))
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-7)


def test_strategy_with_tf_data():
    model, x, y = M.mlp(n=N_EXAMPLES)
    ref = tp.gradients(model, (x, y), **KW)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(7)
    got = tp.gradients(model, ds, **KW, strategy=_strategy(3))
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-7)


def test_make_strategy_rejects_bad_tf_config(monkeypatch):
    from tfpartials.distribute import make_strategy

    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(tp.InputError, match="TF_CONFIG"):
        make_strategy()


def _free_ports(k):
    socks = []
    for _ in range(k):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_two_worker_processes_match_single_process(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    env.pop("TF_CONFIG", None)
    single = tmp_path / "single.npz"
    subprocess.run([sys.executable, "-m", "tests.distribute._worker", str(single)], env=env, cwd=ROOT,
                   check=True, timeout=180, capture_output=True)
    ports = _free_ports(2)
    workers = [f"127.0.0.1:{p}" for p in ports]
    procs = []
    try:
        for i in range(2):
            cfg = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tests.distribute._worker", str(tmp_path / f"w{i}.npz")],
                env={**env, "TF_CONFIG": json.dumps(cfg)}, cwd=ROOT,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        for p in procs:
            _, err = p.communicate(timeout=240)
            assert p.returncode == 0, err.decode()[-2000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    ref = np.load(single)
    for i in range(2):
        got = np.load(tmp_path / f"w{i}.npz")
        assert int(got["replicas"]) == 2
        keys = [k for k in ref.files if k != "replicas"]
        assert any(k.startswith("grad/") for k in keys)
        for k in keys:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)


def _model():
    return M.mlp(n=N_EXAMPLES, hidden=5)


@pytest.mark.parametrize("replicas", [2, 3])
def test_hvp_and_dense_hessian_equal_single_device(replicas):
    model, x, y = _model()
    rng = np.random.default_rng(3)
    n = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    v = rng.normal(size=n).astype("float32")
    ref = tp.hvp(model, (x, y), v, **KW)
    s = _strategy(replicas)
    got = tp.hvp(model, (x, y), v, **KW, strategy=s)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-6)
    H1 = tp.hessian(model, (x, y), **KW).matrix
    Hs = tp.hessian(model, (x, y), **KW, strategy=s).matrix
    np.testing.assert_allclose(Hs, H1, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("replicas", [2, 3])
def test_estimators_equal_single_device(replicas):
    model, x, y = _model()
    op1 = tp.HessianOperator(model, (x, y), **KW)
    ops = tp.HessianOperator(model, (x, y), **KW, strategy=_strategy(replicas))
    e1 = tp.top_eigenvalues(op1, k=2, seed=0).eigenvalues
    es = tp.top_eigenvalues(ops, k=2, seed=0).eigenvalues
    np.testing.assert_allclose(es, e1, rtol=1e-4)
    t1 = tp.hutchpp_trace(op1, num_matvecs=12, seed=5)
    ts = tp.hutchpp_trace(ops, num_matvecs=12, seed=5)
    np.testing.assert_allclose(ts.value, t1.value, rtol=1e-4)
    assert ts.num_matvecs == t1.num_matvecs


def test_cli_devices_flag(tmp_path):
    """`--devices 2` in a fresh process gives the single-device gradients."""
    model, x, y = _model()
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", x=x, y=y)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    common = [sys.executable, "-m", "tfpartials", "gradients", str(tmp_path / "m.keras"), "--data",
              str(tmp_path / "d.npz"), "--loss", "sparse_categorical_crossentropy", "--from-logits",
              "--batch-size", "4", "--quiet"]
    for name, extra in (("one", []), ("two", ["--devices", "2"])):
        r = subprocess.run(common + ["--out", str(tmp_path / f"{name}.npz")] + extra, env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stderr
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    for k in a.files:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-7)
    r = subprocess.run(common + ["--devices", "0"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--devices" in r.stderr and "Traceback" not in r.stderr
