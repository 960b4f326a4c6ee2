"""The derivative scope: exact second derivatives through moments, no native crash under pfor, quiet logs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfpartials as tp
from tfpartials._tracing import captured_tf_logs, derivative_scope, short_reason, traced, unaudited_layer


def _layernorm_model():
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, name="d"),
                              keras.layers.LayerNormalization(name="ln"), keras.layers.Dense(1, name="out")])
    x = np.random.default_rng(0).normal(size=(6, 5))
    y = np.random.default_rng(1).normal(size=(6, 1))
    return model, x, y


def _fd_hvp(model, x, y, v, eps=1e-4):
    """H v by float64 central differences of the first derivative from a plain tape (no tfpartials)."""
    f64 = tp.float64_copy(model)
    x64, y64 = tf.constant(x), tf.constant(y)
    base = [w.numpy() for w in f64.trainable_variables]
    sizes = [b.size for b in base]

    def grad_at(shift):
        i = 0
        for w, b, n in zip(f64.trainable_variables, base, sizes):
            w.assign(b + shift[i:i + n].reshape(b.shape))
            i += n
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((f64(x64, training=False) - y64) ** 2)
        return np.concatenate([g.numpy().ravel() for g in tape.gradient(loss, f64.trainable_variables)])

    return (grad_at(eps * v) - grad_at(-eps * v)) / (2 * eps)


def test_hvp_through_layer_normalization_matches_finite_differences():
    model, x, y = _layernorm_model()
    n = sum(int(np.prod(w.shape)) for w in model.trainable_variables)
    v = np.random.default_rng(2).normal(size=n)
    reference = _fd_hvp(model, x, y, v)
    for method in ("forward", "reverse", "loop"):
        hv = tp.hvp(model, (x, y), v, loss="mse", precision="float64", method=method)
        flat = np.concatenate([np.ravel(a) for a in hv.values()])
        assert np.linalg.norm(flat - reference) <= 1e-6 * np.linalg.norm(reference), method


def test_plain_tensorflow_moments_lose_a_second_derivative_term():
    """Why the scope exists: outside it, tf.nn.moments' second derivative differs from the exact one."""
    x = tf.constant(np.random.default_rng(0).normal(size=(3, 4)))

    def hessian_of_variance_sum():
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                _, var = tf.nn.moments(x, axes=[1])
                s = tf.reduce_sum(var)
            g = inner.gradient(s, x)
            s2 = tf.reduce_sum(g * tf.ones_like(g))
        return outer.gradient(s2, x).numpy()

    plain = hessian_of_variance_sum()
    with derivative_scope():
        exact = hessian_of_variance_sum()
    # var = mean((x - mean)^2) per row: d/dx_j var = 2 (x_j - m) / k; its derivative along 1 is 2/k (1 - 1) = 0
    np.testing.assert_allclose(exact, 0.0, atol=1e-12)
    assert np.max(np.abs(plain)) > 0.1
    np.testing.assert_allclose(hessian_of_variance_sum(), plain)  # the user's TensorFlow is restored after it


@pytest.mark.parametrize("xs, ys, adj_x, adj_y", [
    ((1, 6, 8), (8, 8), False, False),
    ((1, 6, 8), (8, 8), False, True),
    ((1, 6, 8), (1, 6, 8), True, False),
    ((2, 3, 4), (1, 4, 5), False, False),
    ((3, 1, 2, 4), (1, 5, 4, 2), False, False),
])
def test_pfor_batch_matmul_rule_is_exact(xs, ys, adj_x, adj_y):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(8, *xs))
    b = rng.normal(size=ys)

    def one(ai):
        return tf.linalg.matmul(ai, tf.constant(b), adjoint_a=adj_x, adjoint_b=adj_y)

    fn = traced(lambda t: tf.vectorized_map(one, t))
    got = fn(tf.constant(a)).numpy()
    at = np.swapaxes(a, -1, -2) if adj_x else a
    bt = np.swapaxes(b, -1, -2) if adj_y else b
    np.testing.assert_allclose(got, np.matmul(at, bt), rtol=1e-12)


def test_vectorized_matmul_that_crashes_onednn_runs_in_scope():
    """(8, 1, 6, 8) @ (8, 8): the shape pfor makes of an attention projection; oneDNN crashes on it."""
    code = textwrap.dedent("""
        import numpy as np, tensorflow as tf
        from tfpartials._tracing import traced
        w = tf.constant(np.ones((8, 8), "float32"))
        fn = traced(lambda t: tf.vectorized_map(lambda xi: tf.linalg.matmul(xi, w), t))
        out = fn(tf.ones((8, 1, 6, 8)))
        print("ok", float(out.numpy().sum()))
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "ok 3072.0" in res.stdout


def test_custom_layers_take_the_exact_loop_and_can_be_trusted():
    class Cube(keras.layers.Layer):
        def call(self, x):
            return x ** 3

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d"), Cube(name="cube")])
    x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    y = np.zeros((5, 2), "float32")
    assert unaudited_layer(model) == "'cube' (Cube)"
    with pytest.warns(tp.FallbackWarning, match="'cube' \\(Cube\\) is not a built-in Keras layer"):
        looped = tp.per_example_gradients(model, (x, y), loss="mse")
    # reference: one plain tape per example
    for i in range(5):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(x[i:i + 1]) - y[i:i + 1]) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        np.testing.assert_allclose(looped["d/kernel"][i], grads[0].numpy(), rtol=1e-5, atol=1e-6)
    tp.trust_vectorization(Cube)
    try:
        assert unaudited_layer(model) is None
        with warnings.catch_warnings():
            warnings.simplefilter("error", tp.FallbackWarning)
            vectorised = tp.per_example_gradients(model, (x, y), loss="mse", batch_size=5)
        np.testing.assert_allclose(vectorised["d/kernel"], looped["d/kernel"], rtol=1e-5, atol=1e-6)
    finally:
        from tfpartials import _tracing

        _tracing._TRUSTED.discard(Cube)
    with pytest.raises(TypeError, match="layer classes"):
        tp.trust_vectorization("Cube")


def test_captured_logs_nest_and_stay_off_the_console(caplog):
    logger = logging.getLogger("tensorflow")
    with captured_tf_logs() as outer:
        with captured_tf_logs() as inner:
            logger.error("Got error while pfor was converting op name: \"x\"\nop: \"DepthwiseConv2dNative\"")
        logger.warning("Using a while_loop for converting Conv2D cause ...")
    assert inner.looped == ["DepthwiseConv2dNative"]
    assert outer.looped == ["DepthwiseConv2dNative", "Conv2D"]
    assert not [r for r in caplog.records if r.name == "tensorflow"]


def test_short_reason_keeps_the_error_line():
    exc = ValueError("Traceback ...\n  File x\n\nValueError: No pfor vectorization defined for Foo\nmore")
    assert short_reason(exc).startswith("ValueError: No pfor vectorization defined for Foo")
    assert short_reason(RuntimeError("a" * 500), limit=20).endswith("...")


def test_real_cnns_take_the_exact_loop_for_parameter_derivatives():
    """Four or more convolutions pfor has no rule for (3-D here; 1-D/2-D ones have tfpartials' own rules): pfor
    would trace a while loop per conv op, so the loop comes first (exact)."""
    from tfpartials._tracing import pfor_looped_layers
    from tfpartials.autodiff.hvp import batch_hvp_kernel
    from tfpartials.autodiff.per_example import PerExampleEngine
    from tfpartials.autodiff.problem import objective_for

    keras.utils.set_random_seed(0)
    layers = [keras.Input((4, 4, 4, 2))]
    layers += [keras.layers.Conv3D(2, 2, padding="same", activation="tanh", name=f"c{i}") for i in range(4)]
    model = keras.Sequential(layers + [keras.layers.GlobalAveragePooling3D(), keras.layers.Dense(1, name="o")])
    assert pfor_looped_layers(model) == 4
    x = np.random.default_rng(0).normal(size=(3, 4, 4, 4, 2)).astype("float32")
    y = np.zeros((3, 1), "float32")
    obj = objective_for(model, "mse")
    assert PerExampleEngine(obj).mode == "loop"
    assert batch_hvp_kernel(obj).method.startswith("reverse-over-reverse (one vector")
    with warnings.catch_warnings():
        warnings.simplefilter("error", tp.FallbackWarning)
        pe = tp.per_example_gradients(model, (x, y), loss="mse")
    for i in range(3):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(x[i:i + 1]) - y[i:i + 1]) ** 2)
        np.testing.assert_allclose(pe["c0/kernel"][i], tape.gradient(loss, model.trainable_variables[0]).numpy(),
                                   rtol=1e-4, atol=1e-6)


def test_short_reason_skips_keras_argument_bullets():
    exc = ValueError("Exception encountered when calling Conv2D.call().\n\n\x1b[1mNo kernel for shape (3,)\x1b[0m\n\n"
                     "Arguments received by Conv2D.call():\n  \u2022 inputs=tf.Tensor(shape=(3,))\n  \u2022 kwargs={}")
    text = short_reason(exc)
    assert text.endswith("No kernel for shape (3,)") and "Conv2D" in text and "\u2022" not in text, text


def test_an_explicit_method_that_cannot_be_built_is_refused_in_one_line():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 2)), keras.layers.SimpleRNN(3, name="rnn"), keras.layers.Dense(1)])
    x = np.random.default_rng(0).normal(size=(3, 4, 2)).astype("float32")
    y = np.zeros((3, 1), "float32")
    n = sum(int(np.prod(w.shape)) for w in model.trainable_variables)
    with pytest.raises(tp.InputError, match="cannot compile Hessian-vector products by forward-over-reverse") as info:
        tp.hvp(model, (x, y), np.ones(n, "float32"), loss="mse", method="forward")
    assert "\n" not in str(info.value)
    hv = tp.hvp(model, (x, y), np.ones(n, "float32"), loss="mse", method="reverse")  # the same numbers, exact
    assert all(np.all(np.isfinite(v)) for v in hv.values())


def _activation_model(name):
    model = keras.Sequential([keras.Input((1,)), keras.layers.Activation(name, name="act")])
    return model, np.linspace(-3.0, 3.0, 13)[:, None]


def test_float64_gelu_derivative_matches_the_closed_form():
    """tf.nn.gelu rounds its constants through float32; in scope the float64 derivative is exact."""
    model, x = _activation_model("gelu")
    got = tp.input_gradient(model, x, precision="float64")[:, 0]
    from scipy.special import ndtr

    z = x[:, 0]
    expected = ndtr(z) + z * np.exp(-0.5 * z**2) / np.sqrt(2.0 * np.pi)  # Keras' gelu is exact: x Phi(x)
    np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-15)


class _ApproximateGelu(keras.layers.Layer):
    def call(self, t):
        return keras.ops.gelu(t, approximate=True)


def test_float64_approximate_gelu_derivative_matches_the_closed_form():
    model = keras.Sequential([keras.Input((1,)), _ApproximateGelu(name="gelu_tanh")])
    x = np.linspace(-3.0, 3.0, 13)[:, None]
    got = tp.input_gradient(model, x, precision="float64")[:, 0]
    c, k, z = 0.044715, np.sqrt(2.0 / np.pi), x[:, 0]
    t = np.tanh(k * (z + c * z**3))
    expected = 0.5 * (1 + t) + 0.5 * z * (1 - t**2) * k * (1 + 3 * c * z**2)
    np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-15)


def test_softsign_has_a_second_derivative_in_scope():
    model, x = _activation_model("softsign")
    got = tp.input_hessian(model, x, precision="float64")[:, 0, 0]
    expected = -2.0 * np.sign(x[:, 0]) / (1.0 + np.abs(x[:, 0])) ** 3
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)


def test_float64_leaky_relu_slope_is_exact():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Activation("leaky_relu", name="act")])
    x = np.array([[-2.0], [-0.5], [1.5]])
    got = tp.input_gradient(model, x, precision="float64")[:, 0]
    np.testing.assert_array_equal(got, [0.2, 0.2, 1.0])  # 0.2 exactly, not float32(0.2)
