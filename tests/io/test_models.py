"""The loading policy: safe by default, trust opts in, Keras's own safe mode behind ours, no false alarms."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

import tfpartials as tp
from tests import models as M
from tests.cli import hostile_files as H
from tfpartials._checks import InputError
from tfpartials.io.models import load_model, model_format, stored_loss


def test_trusted_lambda_loads_and_runs(tmp_path):
    """trust=True really opts in: the same file loads and its code runs (which is why it is refused by default)."""
    marker = tmp_path / "MARKER"
    p = H.model_with_lambda(tmp_path / "evil.keras", H.lambda_source_writing(marker), marker)
    with pytest.raises(InputError, match="holds Python bytecode"):
        load_model(p)
    assert not marker.exists()
    model = load_model(p, trust=True)
    assert marker.exists()
    assert [layer.name for layer in model.layers] == ["lin", "evil"]


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_safe_mode_is_the_second_line_of_defence(tmp_path, suffix):
    """Keras 3.15.1 itself refuses the Python lambda in safe mode, for .keras and legacy .h5 alike."""
    marker = tmp_path / "MARKER"
    p = H.model_with_lambda(tmp_path / f"evil{suffix}", H.lambda_source_writing(marker), marker)
    with pytest.raises(ValueError, match="Python lambda"):
        keras.models.load_model(p, compile=False, safe_mode=True)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_refuses_arbitrary_functions_too(tmp_path, suffix):
    base = H.model_with_lambda(tmp_path / f"base{suffix}", "lambda t: t")
    fn = {"module": "os", "class_name": "function", "config": "system", "registered_name": "function"}
    p = tmp_path / f"os{suffix}"
    if suffix == ".keras":
        H.with_layer_config(base, p, -1, function=fn)
    else:
        def mutate(cfg):
            cfg["config"]["layers"][-1]["config"]["function"] = fn
        H.h5_with_config(base, p, mutate)
    with pytest.raises(InputError, match=r"Python module 'os'"):
        load_model(p)
    with pytest.raises((TypeError, ValueError)):
        keras.models.load_model(p, compile=False, safe_mode=True)


def test_every_test_model_round_trips(tmp_path):
    """No false alarms on ordinary models: all test models with losses, metrics, optimisers, regularisers."""
    builders = [M.linear_regression, M.mlp, M.small_cnn, M.batchnorm_dropout_model, M.embedding_model,
                M.lstm_model]
    x = None
    for build in builders:
        model, x, _ = build()
        model.compile(optimizer="adam", loss=keras.losses.Huber(), metrics=["mae"])
        for suffix in (".keras", ".h5"):
            path = tmp_path / f"{build.__name__}{suffix}"
            model.save(path)
            loaded = load_model(path)
            for a, b in zip(loaded.weights, model.weights):
                np.testing.assert_array_equal(a.numpy(), b.numpy())
            np.testing.assert_allclose(loaded(x[:3]), model(x[:3]), rtol=1e-6, atol=1e-6)
    reg = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, kernel_regularizer=keras.regularizers.L2(0.1),
                                                                  activation=keras.activations.gelu)])
    reg.compile(loss=keras.losses.mean_squared_error)
    reg.save(tmp_path / "reg.keras")
    assert load_model(tmp_path / "reg.keras")._tfpartials_loss is not None


def test_registered_custom_layer_is_allowed_but_an_unknown_one_is_not(tmp_path):
    @keras.saving.register_keras_serializable(package="tfpartials_test")
    class Scale(keras.layers.Layer):
        def call(self, x):
            return 2.0 * x

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, name="d"), Scale(name="scale")])
    model.save(tmp_path / "custom.keras")
    assert type(load_model(tmp_path / "custom.keras").get_layer("scale")) is Scale

    def rename(cfg):
        cfg["config"]["layers"][-1]["registered_name"] = "someone_else>Scale"

    H.with_config(tmp_path / "custom.keras", tmp_path / "other.keras", rename)
    with pytest.raises(InputError, match=r"layer 'scale' names .* outside Keras"):
        load_model(tmp_path / "other.keras")


def test_trust_must_be_bool_or_sandbox(tmp_path):
    p = tmp_path / "lin.keras"
    M.linear_regression()[0].save(p)
    with pytest.raises(InputError, match=r"trust='sandbox' cannot return a live model.*sandboxed"):
        load_model(p, trust="sandbox")
    with pytest.raises(TypeError, match=r"trust: expected True, False or 'sandbox', got 'yes'"):
        load_model(p, trust="yes")


def test_savedmodel_needs_trust_and_then_explains(tmp_path):
    p = H.savedmodel(tmp_path / "sm")
    assert model_format(p) == "savedmodel"
    with pytest.raises(InputError, match=r"refused without trust"):
        load_model(p)
    model = load_model(p, trust=True)  # a tf.Module with x @ w: differentiable in w (tests/io/test_savedmodel.py)
    x = np.arange(12, dtype="float32").reshape(3, 4)
    g = tp.gradients(model, (x, np.zeros((3, 1), "float32")), loss="mse", quiet=True)
    np.testing.assert_allclose(g["variables/w"], 2 * x.T @ (x @ np.ones((4, 1))) / 3, rtol=1e-6)


def test_stored_loss_is_read_as_text(tmp_path):
    model = M.mlp()[0]
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.save(tmp_path / "m.keras")
    model.save(tmp_path / "m.h5")
    for suffix in (".keras", ".h5"):
        loss = stored_loss(tmp_path / f"m{suffix}")
        assert json.dumps(loss)
        text = json.dumps(loss).lower()
        assert "sparse" in text and "categorical" in text
    M.linear_regression()[0].save(tmp_path / "plain.keras")
    assert stored_loss(tmp_path / "plain.keras") is None


def test_h5_config_with_lambda_is_refused_even_for_the_loss(tmp_path):
    marker = tmp_path / "MARKER"
    p = H.model_with_lambda(tmp_path / "evil.h5", H.lambda_source_writing(marker), marker)
    with pytest.raises(InputError, match="holds Python bytecode"):
        stored_loss(p)
    assert stored_loss(p, trust=True) is not None
