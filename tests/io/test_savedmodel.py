"""SavedModel directories (model.export()) against the same model's .keras file: gradients, HVP, per-example
gradients, input Jacobian and attributions agree (float64); a graph without second derivatives is refused
in one line before any work; the command line's exit codes."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfpartials as tp
from tfpartials.cli.main import main
from tfpartials.io.savedmodel import require_derivatives


class LRN(keras.layers.Layer):
    """Local response normalisation over features: TensorFlow registers no gradient for its gradient op."""

    def call(self, x):
        y = tf.nn.local_response_normalization(tf.cast(x, tf.float32)[:, None, None, :], depth_radius=2)  # f32 only
        return tf.cast(tf.reshape(y, tf.shape(x)), x.dtype)


def tiny(lrn: bool = False, seed: int = 0):
    rng = np.random.default_rng(seed)
    inp = keras.Input((4,), dtype="float64", name="x")
    h = keras.layers.Dense(5, activation="tanh", name="h", dtype="float64")(inp)
    h = (LRN(name="lrn", dtype="float64") if lrn else keras.layers.BatchNormalization(name="bn", dtype="float64"))(h)
    out = keras.layers.Dense(2, name="out", dtype="float64")(h)
    model = keras.Model(inp, out)
    for v in model.variables:
        v.assign(rng.uniform(0.5, 1.5, v.shape) if "variance" in v.path else rng.normal(0, 0.6, v.shape))
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("savedmodel")
    model = tiny()
    model.save(d / "m.keras")
    model.export(str(d / "sm"), verbose=False)
    tiny(lrn=True).export(str(d / "lrn"), verbose=False)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(13, 4)), rng.normal(size=(13, 2))
    np.savez(d / "d.npz", x=x, y=y)
    return d, x, y


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def test_savedmodel_matches_its_keras_file(files):
    d, x, y = files
    ref = tp.load_model(d / "m.keras")
    sm = tp.load_model(d / "sm", trust=True)
    names = list(tp.gradients(ref, (x, y), loss="mse", quiet=True))
    g_sm = tp.gradients(sm, (x, y), loss="mse", batch_size=5, quiet=True)
    assert list(g_sm) == names == ["h/kernel", "h/bias", "bn/gamma", "bn/beta", "out/kernel", "out/bias"]
    g_ref = tp.gradients(ref, (x, y), loss="mse", quiet=True)
    for k in names:
        assert rel(g_sm[k], g_ref[k]) < 1e-6, k
    v = np.random.default_rng(2).normal(size=sum(a.size for a in g_ref.values()))
    h_sm, h_ref = tp.hvp(sm, (x, y), v, loss="mse", quiet=True), tp.hvp(ref, (x, y), v, loss="mse", quiet=True)
    for k in names:
        assert rel(h_sm[k], h_ref[k]) < 1e-6, k
    assert rel(tp.input_jacobian(sm, x), tp.input_jacobian(ref, x)) < 1e-6
    pe_sm = tp.per_example_gradients(sm, (x, y), loss="mse", quiet=True)
    pe_ref = tp.per_example_gradients(ref, (x, y), loss="mse", quiet=True)
    assert rel(pe_sm["out/kernel"], pe_ref["out/kernel"]) < 1e-6
    ig_sm = tp.IntegratedGradients(sm).attribute(x, target=1)
    assert rel(ig_sm, tp.IntegratedGradients(ref).attribute(x, target=1)) < 1e-6
    # the restored BatchNorm statistics are non-trainable parameters, as in the .keras file
    assert len(sm.non_trainable_variables) == 2 and sm.get_layer("bn") is not None


def test_graph_without_second_derivative_is_refused_in_one_line(files, capsys):
    d, x, y = files
    lrn = tp.load_model(d / "lrn", trust=True)  # first derivatives exist: loads
    assert tp.gradients(lrn, (x, y), loss="mse", quiet=True)["h/kernel"].shape == (4, 5)
    with pytest.raises(tp.InputError, match="no second derivative for op LRNGrad"):
        require_derivatives(lrn, 2)
    code = main(["hessian", str(d / "lrn"), "--data", str(d / "d.npz"), "--loss", "mse", "--trust", "--quiet",
                 "--out", str(d / "never.npz")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no second derivative for op LRNGrad" in err
    assert not (d / "never.npz").exists()


def test_cli_gradients_exit_codes(files, capsys):
    d, x, y = files
    out = d / "g.npz"
    assert main(["gradients", str(d / "sm"), "--data", str(d / "d.npz"), "--loss", "mse", "--trust", "--quiet",
                 "--out", str(out)]) == 0
    ref = tp.gradients(tp.load_model(d / "m.keras"), (x, y), loss="mse", quiet=True)
    with np.load(out) as z:
        assert rel(z["out/kernel"], ref["out/kernel"]) < 1e-6
    capsys.readouterr()
    assert main(["gradients", str(d / "sm"), "--data", str(d / "d.npz"), "--loss", "mse"]) == 2
    assert "refused without trust" in capsys.readouterr().err
    assert main(["gradients", str(d / "sm"), "--data", str(d / "d.npz"), "--trust"]) == 2
    assert "no loss given" in capsys.readouterr().err


def test_not_a_savedmodel(tmp_path):
    (tmp_path / "saved_model.pb").write_bytes(b"not a protobuf")
    with pytest.raises(tp.InputError, match="not a loadable SavedModel"):
        tp.load_model(tmp_path, trust=True)
