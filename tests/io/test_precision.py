"""float64 copies: exact weights, names kept, the original untouched, clear errors; float64 removes round-off."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfpartials as tp
from tests import models as M
from tests import references as R
from tfpartials.io.precision import copy_with_dtype, float64_copy, with_precision
from tfpartials.params import ParameterSpace

BUILDERS = [M.mlp, M.small_cnn, M.batchnorm_dropout_model, M.embedding_model, M.lstm_model]


def _snapshot(model):
    return [(v.dtype, np.array(v.numpy(), copy=True)) for v in model.variables]


def _same(before, model):
    after = _snapshot(model)
    assert len(before) == len(after)
    for (d0, a0), (d1, a1) in zip(before, after):
        assert d0 == d1
        np.testing.assert_array_equal(a0, a1)


@pytest.mark.parametrize("builder", BUILDERS)
def test_copy_is_float64_with_the_same_weights_names_and_outputs(builder):
    model, x, _ = builder()
    before = _snapshot(model)
    copy = float64_copy(model)
    _same(before, model)  # the original is untouched: same dtypes, same values
    assert ParameterSpace(copy).names == ParameterSpace(model).names
    for src, dst in zip(model.variables, copy.variables):
        if np.issubdtype(np.asarray(src.numpy()).dtype, np.floating):
            assert dst.dtype == "float64"
            np.testing.assert_array_equal(dst.numpy(), src.numpy().astype(np.float64))
        else:  # seed-generator states and other integer state keep their dtype
            np.testing.assert_array_equal(dst.numpy(), src.numpy())
    out32 = model(x, training=False).numpy()
    out64 = copy(x.astype(np.float64) if x.dtype.kind == "f" else x, training=False).numpy()
    assert out64.dtype == np.float64
    np.testing.assert_allclose(out64, out32, rtol=1e-5, atol=1e-6)


def test_integer_inputs_and_batchnorm_statistics_are_kept():
    model, x, _ = M.embedding_model()
    copy = float64_copy(model)
    assert copy.inputs[0].dtype == "int32"
    bn_model, _, _ = M.batchnorm_dropout_model()
    bn = float64_copy(bn_model).get_layer("bn")
    np.testing.assert_array_equal(bn.moving_mean.numpy(), bn_model.get_layer("bn").moving_mean.numpy())
    np.testing.assert_array_equal(bn.moving_variance.numpy(), bn_model.get_layer("bn").moving_variance.numpy())
    assert bn.moving_mean.dtype == "float64"


def test_nested_functional_model():
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh", name="a"),
                              keras.layers.BatchNormalization(name="bn")], name="inner")
    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.Dense(1, name="head")(inner(inp)))
    x = np.random.default_rng(0).normal(size=(6, 3)).astype("float32")
    copy = float64_copy(model)
    assert ParameterSpace(copy).names == ParameterSpace(model).names
    np.testing.assert_allclose(copy(x.astype(np.float64)).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
    bn, bn64 = inner.get_layer("bn"), copy.get_layer("inner").get_layer("bn")
    bn.moving_mean.assign(np.arange(4, dtype="float32"))  # after the copy: the copy keeps its own statistics
    np.testing.assert_array_equal(bn64.moving_mean.numpy(), np.zeros(4))


class _Scaled(keras.layers.Layer):  # deliberately not registered; its config is captured automatically
    def __init__(self, factor, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.w * self.factor


class _Sub(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(2)
        self.norm = keras.layers.BatchNormalization()

    def call(self, x):
        return self.norm(self.dense(x))


def test_unregistered_custom_layer_and_subclassed_model_are_rebuilt():
    x = np.random.default_rng(1).normal(size=(5, 3)).astype("float32")
    model = keras.Sequential([keras.Input((3,)), _Scaled(2.0, name="sc"), keras.layers.Dense(1, name="d")])
    copy = float64_copy(model)
    assert ParameterSpace(copy).names == ParameterSpace(model).names
    np.testing.assert_allclose(copy(x.astype(np.float64)).numpy(), model(x).numpy(), rtol=1e-6)
    sub = _Sub()
    sub(x)
    copy = float64_copy(sub)
    assert all(v.dtype == "float64" for v in copy.weights)
    assert ParameterSpace(copy).names == ParameterSpace(sub).names
    np.testing.assert_allclose(copy(x.astype(np.float64)).numpy(), sub(x).numpy(), rtol=1e-5, atol=1e-6)


class _Lambdaish(keras.layers.Layer):
    def __init__(self, fn, **kwargs):
        super().__init__(**kwargs)
        self.fn = fn

    def call(self, x):
        return self.fn(x)


class _Forgetful(keras.layers.Layer):
    def __init__(self, k, **kwargs):
        super().__init__(**kwargs)
        self.k = k

    def get_config(self):
        return super().get_config()  # forgets k

    def call(self, x):
        return x * self.k


class _HardCoded(keras.layers.Layer):
    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1],), initializer="ones", dtype="float32")

    def call(self, x):
        return x * tf.cast(self.w, x.dtype)


@pytest.mark.parametrize("layer,match", [
    (lambda: _Lambdaish(lambda t: 2 * t, name="fnlayer"), r"layer 'fnlayer' \(_Lambdaish\) has no usable get_config"),
    (lambda: _Forgetful(2.0, name="forget"), r"cannot rebuild the model in float64 from its config"),
    (lambda: _HardCoded(name="hard"), r"'hard/.*' is created as float32 .*hard-codes dtype"),
])
def test_custom_layers_that_cannot_be_rebuilt_give_a_clear_error(layer, match):
    model = keras.Sequential([keras.Input((3,)), layer(), keras.layers.Dense(1)])
    with pytest.raises(tp.InputError, match=match):
        float64_copy(model)
    x, y = np.ones((4, 3), "float32"), np.zeros((4, 1), "float32")
    with pytest.raises(tp.InputError, match="cannot rebuild"):
        tp.gradients(model, (x, y), loss="mse", precision="float64")


def test_with_precision_choices_and_errors():
    model, _, _ = M.linear_regression()
    assert with_precision(model, None) is model
    assert with_precision(model, "float32") is model
    copy = with_precision(model, "float64")
    assert copy is not model and copy.get_layer("lin").kernel.dtype == "float64"
    assert with_precision(copy, "float32").get_layer("lin").kernel.dtype == "float32"
    with pytest.raises(tp.InputError, match="precision: expected one of 'float32', 'float64', got 'float16'"):
        with_precision(model, "float16")
    with pytest.raises(TypeError, match="model: expected a Keras model"):
        copy_with_dtype("model.keras", "float64")
    unbuilt = keras.Sequential([keras.layers.Dense(1)])
    with pytest.raises(tp.InputError, match="expected a built Keras model"):
        float64_copy(unbuilt)


def test_mixed_precision_model_is_copied_for_float32_too():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, dtype="mixed_float16", name="d"),
                              keras.layers.Dense(1, name="o")])
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    f32 = with_precision(model, "float32")
    assert f32 is not model and f32.get_layer("d").compute_dtype == "float32"
    f64 = with_precision(model, "float64")
    np.testing.assert_allclose(f32(x).numpy(), f64(x.astype(np.float64)).numpy(), rtol=1e-5, atol=1e-6)
    assert model.get_layer("d").compute_dtype == "float16"  # the original is unchanged


def test_compiled_loss_is_carried_to_the_copy():
    model, x, y = M.linear_regression()
    model.compile(loss="mse")
    g64 = tp.gradients(model, (x, y), precision="float64")
    g32 = tp.gradients(model, (x, y), loss="mse")
    for k in g32:
        np.testing.assert_allclose(g64[k], g32[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("builder,loss,logits", [
    (M.mlp, "sparse_categorical_crossentropy", True),
    (M.small_cnn, "sparse_categorical_crossentropy", True),
    (M.batchnorm_dropout_model, "mse", None),
    (M.lstm_model, "mse", None),
    (M.embedding_model, "mse", None),
])
def test_float64_gradients_equal_float32_to_float32_roundoff_and_model_untouched(builder, loss, logits):
    model, x, y = builder()
    before = _snapshot(model)
    g64 = tp.gradients(model, (x, y), loss=loss, from_logits=logits, precision="float64")
    g32 = tp.gradients(model, (x, y), loss=loss, from_logits=logits)
    _same(before, model)
    for k in g32:
        assert g64[k].dtype == np.float64 and g32[k].dtype == np.float32
        np.testing.assert_allclose(g64[k], g32[k], rtol=2e-4, atol=2e-6)


# ---------------------------------------------------------------------------------- ill-conditioned Hessian
def _ill_conditioned_regression(n=64, d=5, eta=1e-3, seed=0):
    """Columns scaled over 1e-4 ... 1e4 and nearly collinear (a shared factor plus eta * noise)."""
    rng = np.random.default_rng(seed)
    scales = np.logspace(-4, 4, d)
    shared = rng.standard_normal((n, 1))
    x = ((shared + eta * rng.standard_normal((n, d))) * scales).astype("float32")
    y = rng.standard_normal((n, 1)).astype("float32")
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(1, name="lin")])
    return model, x, y


def _dense_hessian(model, x, y, precision):
    """The library's dense Hessian (the tests compare it with the closed form 2 Z^T Z / N)."""
    from tfpartials.autodiff.hessian import hessian

    return np.asarray(hessian(model, (x, y), loss="mse", precision=precision).matrix, np.float64)


def _smallest(h, k=3):
    try:
        return R.spd_eigenvalues(h)[:k]
    except np.linalg.LinAlgError:  # round-off made it indefinite: certainly no match
        return np.linalg.eigvalsh(h)[:k]


def test_float64_hessian_matches_closed_form_on_ill_conditioned_inputs_where_float32_does_not():
    model, x, y = _ill_conditioned_regression()
    z = np.hstack([x.astype(np.float64), np.ones((len(x), 1))])  # the stored float32 data, exactly
    # closed form: H = 2 Z^T Z / N, eigenvalues 2 sigma_i(Z)^2 / N, with relative accuracy from Jacobi's SVD
    exact = np.sort(2 * R.jacobi_singular_values(z) ** 2 / len(x))[:3]
    assert exact[0] / (2 * R.jacobi_singular_values(z)[-1] ** 2 / len(x)) < 1e-20  # condition number > 1e20
    err64 = np.abs(_smallest(_dense_hessian(model, x, y, "float64")) - exact) / exact
    err32 = np.abs(_smallest(_dense_hessian(model, x, y, None)) - exact) / exact
    assert np.all(err64 < 1e-7), err64
    assert np.max(err32) > 1e-3, err32
