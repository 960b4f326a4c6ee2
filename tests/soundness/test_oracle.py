"""The audit's committed fixtures stay honest: the live JAX reference and the catalogue still produce them.

The matrix (``test_matrix.py``) reads the JAX reference from ``fixtures/reference.npz`` so it fits the CI
budget; these tests re-run the reference pipeline itself (a ``KERAS_BACKEND=jax`` child process on the committed
``.keras`` files) on a few models and check it gives the committed arrays, and check that ``catalogue.make`` still
builds exactly the committed models and data (a changed catalogue needs ``python -m tests.soundness.regenerate``).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from tests.soundness import catalogue as C
from tests.soundness.regenerate import FIXTURES, directions, run_jax_reference

LIVE = ("layer_norm", "multi_head_attention")  # moments, and attention through the float64 softmax patch


def test_live_jax_reference_reproduces_the_committed_arrays(tmp_path):
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    entries = [dict(e, path=str(FIXTURES / e["path"])) for e in manifest["models"] if e["key"] in LIVE]
    assert sorted(e["key"] for e in entries) == sorted(LIVE)
    live = run_jax_reference({"arrays": str(FIXTURES / "arrays.npz"), "models": entries}, tmp_path, timeout=300)
    with np.load(FIXTURES / "reference.npz") as f:
        committed = {k: f[k] for k in f.files if k.split(":", 1)[0] in LIVE and not k.endswith(":seconds")}
    assert {k for k in live if not k.endswith(":seconds")} == set(committed)
    for k, want in committed.items():
        got = live[k]
        assert got.shape == want.shape, k
        scale = max(float(np.linalg.norm(want)), 1e-300)
        assert float(np.linalg.norm(got - want)) <= 1e-10 * scale, k
    assert {"grad", "hvp", "hessian", "ggn", "per_example", "input_hessian", "fd_uhv"} <= {
        k.split(":", 1)[1] for k in committed if k.startswith("multi_head_attention:")}


def test_catalogue_builds_the_committed_models_and_data(audit):
    with np.load(FIXTURES / "arrays.npz") as f:
        arrays = {k: f[k] for k in f.files}
    for key, b in audit.built.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, x, y = C.make(b.case)
        assert [tuple(w.shape) for w in model.weights] == [tuple(w.shape) for w in b.model.weights], key
        for mine, saved in zip(model.weights, b.model.weights):
            np.testing.assert_array_equal(np.asarray(mine.numpy()), np.asarray(saved.numpy()), err_msg=key)
        np.testing.assert_array_equal(x, arrays[f"{key}:x"], err_msg=key)
        np.testing.assert_array_equal(y, arrays[f"{key}:y"], err_msg=key)
        v, u = directions(b.n)
        np.testing.assert_array_equal(v, arrays[f"{key}:v"], err_msg=key)
        np.testing.assert_array_equal(u, arrays[f"{key}:u"], err_msg=key)


@pytest.mark.parametrize("key_dim", [2, 3])
def test_float64_copy_keeps_the_attention_scale_in_float64(key_dim):
    """Keras' TensorFlow backend applies the attention scale with ``tf.cast(python_float, dtype)``, which rounds
    1/sqrt(key_dim) to float32 on the way; tfpartials' float64 copy must not (numpy float64 reference)."""
    import keras

    import tfpartials as tp

    rng = np.random.default_rng(3)
    inp = keras.Input((3, 4))
    model = keras.Model(inp, keras.layers.MultiHeadAttention(num_heads=2, key_dim=key_dim, name="mha")(inp, inp))
    for w in model.weights:
        w.assign(rng.normal(size=w.shape).astype("float32"))
    x = rng.normal(size=(2, 3, 4))
    m64 = tp.float64_copy(model)
    layer = m64.get_layer("mha")
    W = {w.path.split("/", 1)[1]: np.asarray(w.numpy(), dtype="float64") for w in layer.weights}
    proj = {n: np.einsum("btd,dnh->btnh", x, W[f"{n}/kernel"]) + W[f"{n}/bias"] for n in ("query", "key", "value")}
    s = np.einsum("btnh,bsnh->bnts", proj["query"], proj["key"]) / np.sqrt(key_dim)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("bnts,bsnh->btnh", p, proj["value"])
    want = np.einsum("btnh,nhd->btd", o, W["attention_output/kernel"]) + W["attention_output/bias"]
    got = np.asarray(m64(x))
    assert got.dtype == np.float64
    assert np.abs(got - want).max() <= 1e-13 * np.abs(want).max()
