"""Dataset gradients against closed forms and float64 central differences."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tfpartials as tp
from tests import models as M
from tests import references as R


def test_linear_regression_closed_form_partial_last_batch():
    model, x, y = M.linear_regression(n=37)
    g = tp.gradients(model, (x, y), loss="mse", batch_size=10)  # 37 = 3*10 + 7
    W, b = model.get_layer("lin").kernel.numpy().astype(np.float64), model.get_layer("lin").bias.numpy()
    r = x.astype(np.float64) @ W + b - y
    np.testing.assert_allclose(g["lin/kernel"], 2 * x.T @ r / len(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g["lin/bias"], 2 * r.sum(0) / len(x), rtol=1e-5, atol=1e-6)


def test_logistic_regression_closed_form():
    model, x, y = M.logistic_regression()
    g = tp.gradients(model, (x, y), loss="binary_crossentropy", from_logits=True, batch_size=8)
    W, b = model.get_layer("logit").kernel.numpy(), model.get_layer("logit").bias.numpy()
    p = 1 / (1 + np.exp(-(x.astype(np.float64) @ W + b)))
    np.testing.assert_allclose(g["logit/kernel"], x.T @ (p - y) / len(x), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g["logit/bias"], (p - y).sum(0) / len(x), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("builder,loss", [
    (M.mlp, "sparse_categorical_crossentropy_logits"),
    (M.small_cnn, "sparse_categorical_crossentropy_logits"),
    (M.batchnorm_dropout_model, "mse"),
])
@pytest.mark.parametrize("batch_size", [4, 1000])
def test_matches_float64_central_differences(builder, loss, batch_size):
    model, x, y = builder()
    ref = R.central_difference_gradient(model, x, y, loss)
    name = "mse" if loss == "mse" else "sparse_categorical_crossentropy"
    g = tp.gradients(model, (x, y), loss=name, from_logits=(loss != "mse") or None, batch_size=batch_size,
                     precision="float64")
    flat = np.concatenate([a.ravel() for a in g.values()])
    np.testing.assert_allclose(flat, ref, rtol=1e-5, atol=1e-7)
    g32 = tp.gradients(model, (x, y), loss=name, from_logits=(loss != "mse") or None, batch_size=batch_size)
    flat32 = np.concatenate([a.ravel() for a in g32.values()])
    np.testing.assert_allclose(flat32, ref, rtol=2e-3, atol=2e-5)


def test_seed_recipe_two_variables_from_one_pass():
    """Plain TF raises RuntimeError asking a non-persistent tape twice; ours gives both, correct."""
    model, x, y = M.regression_mlp()
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x) - y))
    tape.gradient(loss, model.get_layer("h1").kernel)
    with pytest.raises(RuntimeError):
        tape.gradient(loss, model.get_layer("out").bias)
    g = tp.gradients(model, (x, y), loss="mse", wrt=["h1/kernel", "out/bias"])
    assert list(g) == ["h1/kernel", "out/bias"]
    ref = R.central_difference_gradient(model, x, y, "mse")
    sizes = [v.numpy().size for v in model.trainable_variables]
    offs = np.cumsum([0] + sizes)
    np.testing.assert_allclose(g["h1/kernel"].ravel(), ref[offs[0]:offs[1]], rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(g["out/bias"].ravel(), ref[offs[3]:offs[4]], rtol=2e-3, atol=1e-5)


def test_tf_data_equals_arrays():
    model, x, y = M.regression_mlp()
    a = tp.gradients(model, (x, y), loss="mse", batch_size=8)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(5)
    b = tp.gradients(model, ds, loss="mse", batch_size=8)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-7)


def test_regularization_included_by_default_and_switchable():
    import keras

    model, x, y = M.linear_regression()
    reg = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, name="lin", kernel_regularizer=keras.regularizers.L2(0.3))])
    reg.set_weights(model.get_weights())
    g0 = tp.gradients(model, (x, y), loss="mse")
    g1 = tp.gradients(reg, (x, y), loss="mse", batch_size=9)
    W = reg.get_layer("lin").kernel.numpy()
    np.testing.assert_allclose(g1["lin/kernel"], g0["lin/kernel"] + 2 * 0.3 * W, rtol=1e-5, atol=1e-6)
    g2 = tp.gradients(reg, (x, y), loss="mse", include_regularization=False)
    np.testing.assert_allclose(g2["lin/kernel"], g0["lin/kernel"], rtol=1e-6)


def test_none_gradient_is_an_error_naming_the_variable():
    import keras

    # the gradient of 'a' is cut by tf.round: plain TF returns None, we name the variable
    cut = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="a"),
                            keras.layers.Lambda(lambda t: tf.round(t), name="round"),
                            keras.layers.Dense(1, name="b")])
    x = np.ones((4, 3), "float32")
    yy = np.zeros((4, 1), "float32")
    with pytest.raises(tp.InputError, match="'a/kernel'.*None"):
        tp.gradients(cut, (x, yy), loss="mse")
    g = tp.gradients(cut, (x, yy), loss="mse", unconnected="zero")
    assert np.all(g["a/kernel"] == 0) and np.any(g["b/kernel"] != 0)


def test_no_retrace_on_partial_last_batch_or_second_call():
    model, x, y = M.regression_mlp(n=33)
    obj = tp.Objective(model, "mse")
    from tfpartials.autodiff.gradient import value_and_gradient
    from tfpartials.io.data import load_data

    d = load_data((x, y), batch_size=10)
    value_and_gradient(obj, d)
    value_and_gradient(obj, load_data((x[::-1].copy(), y[::-1].copy()), batch_size=10))
    assert obj.trace_counts == {"gradient": 1}


def test_wrt_unknown_lists_available():
    model, x, y = M.regression_mlp()
    with pytest.raises(tp.InputError, match="available: h1/kernel, h1/bias, out/kernel, out/bias"):
        tp.gradients(model, (x, y), loss="mse", wrt=["nope/*"])


def test_wrt_layer_name_and_glob():
    model, x, y = M.regression_mlp()
    assert list(tp.gradients(model, (x, y), loss="mse", wrt="h1")) == ["h1/kernel", "h1/bias"]
    assert list(tp.gradients(model, (x, y), loss="mse", wrt=["*/bias"])) == ["h1/bias", "out/bias"]


def test_value_and_gradients_inside_tf_function():
    model, x, y = M.regression_mlp()

    @tf.function
    def step(xb, yb):
        return tp.value_and_gradients(model, xb, yb, loss="mse")

    value, grads = step(tf.constant(x), tf.constant(y))
    ref = tp.gradients(model, (x, y), loss="mse")
    for gv, k in zip(grads, ref):
        np.testing.assert_allclose(gv.numpy(), ref[k], rtol=1e-5, atol=1e-7)
    assert np.isclose(float(value), np.mean((model(x).numpy() - y) ** 2), rtol=1e-5)
