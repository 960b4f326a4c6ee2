"""Many-column HVPs and per-example gradients of a small CNN: vectorised through convolutions, no loop.

References are plain nested ``tf.GradientTape``s in eager mode on the float64 model, one column or one example
at a time (no pfor, no tfpartials code).
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfpartials as tp
from tfpartials._tracing import pfor_looped_layers
from tfpartials.autodiff.hvp import batch_hvp_kernel
from tfpartials.autodiff.per_example import PerExampleEngine
from tfpartials.autodiff.problem import objective_for


def _cnn(seed=0):
    """Conv2D strided, Conv2D dilated, DepthwiseConv2D, SeparableConv2D, BatchNorm, Conv1D: float64 throughout."""
    keras.utils.set_random_seed(seed)
    L = keras.layers
    kw = {"dtype": "float64"}
    inp = keras.Input((9, 8, 2), dtype="float64")
    h = L.Conv2D(3, 3, strides=2, padding="same", activation="tanh", name="c0", **kw)(inp)       # (5, 4, 3)
    h = L.Conv2D(3, (2, 2), dilation_rate=2, padding="same", activation="tanh", name="c1", **kw)(h)
    h = L.DepthwiseConv2D(2, depth_multiplier=2, padding="valid", activation="tanh", name="dw", **kw)(h)  # (4,3,6)
    h = L.BatchNormalization(name="bn", **kw)(h)
    h = L.SeparableConv2D(2, 2, padding="same", activation="tanh", name="sep", **kw)(h)             # (4, 3, 2)
    h = L.Reshape((12, 2), **kw)(h)
    h = L.Conv1D(2, 3, strides=2, padding="valid", activation="tanh", name="c1d", **kw)(h)          # (5, 2)
    h = L.Flatten(**kw)(h)
    model = keras.Model(inp, L.Dense(2, name="out", **kw)(h))
    rng = np.random.default_rng(seed)
    bn = model.get_layer("bn")  # non-trivial inference statistics
    bn.moving_mean.assign(rng.normal(size=bn.moving_mean.shape) * 0.1)
    bn.moving_variance.assign(1.0 + rng.random(bn.moving_variance.shape))
    x = rng.normal(size=(5, 9, 8, 2))
    y = rng.normal(size=(5, 2))
    return model, x, y


def _loss(model, x, y):
    return tf.reduce_mean(tf.reduce_sum((model(x, training=False) - y) ** 2, axis=-1))


def test_rules_make_this_cnn_vectorisable():
    model, _, _ = _cnn()
    assert pfor_looped_layers(model) == 0  # every convolution here has a pfor rule
    assert pfor_looped_layers(model, ruled=False) == 5
    assert batch_hvp_kernel(objective_for(model, "mse")).method.startswith("reverse-over-reverse (one vector")


def test_hvp_block_is_vectorised_and_exact():
    model, x, y = _cnn()
    ws = model.trainable_variables
    n = sum(int(np.prod(w.shape)) for w in ws)
    V = np.random.default_rng(1).normal(size=(n, 8))

    want = []
    for j in range(V.shape[1]):  # H v = d/dw (g(w) . v), nested tapes, one column at a time
        parts = np.split(V[:, j], np.cumsum([int(np.prod(w.shape)) for w in ws])[:-1])
        vs = [tf.constant(p.reshape(w.shape)) for p, w in zip(parts, ws)]
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                value = _loss(model, x, y)
            g = inner.gradient(value, ws)
            dot = tf.add_n([tf.reduce_sum(a * b) for a, b in zip(g, vs)])
        want.append(np.concatenate([t.numpy().ravel() for t in outer.gradient(dot, ws)]))
    want = np.stack(want, axis=1)

    # "auto" runs a real CNN's columns in a compiled loop (as fast once traced, 4x faster to trace): ask for pfor
    H = tp.HessianOperator(model, (x, y), loss="mse", batch_size=5, quiet=True, method="forward")
    with warnings.catch_warnings():
        warnings.simplefilter("error", tp.FallbackWarning)  # pfor looping over any op would warn
        got = H.matmat(V).numpy()
    assert batch_hvp_kernel(H.objective, H.method).method == "forward-over-reverse (vectorised)"
    # mse here is the mean over outputs too: Keras' "mse" divides the squared error by 2 outputs
    np.testing.assert_allclose(got, want / 2, rtol=1e-10, atol=1e-12)

    R = tp.HessianOperator(model, (x, y), loss="mse", batch_size=5, quiet=True, method="reverse")
    with warnings.catch_warnings():
        warnings.simplefilter("error", tp.FallbackWarning)
        np.testing.assert_allclose(R.matmat(V).numpy(), want / 2, rtol=1e-10, atol=1e-12)


def test_per_example_gradients_are_vectorised_and_exact():
    model, x, y = _cnn(seed=2)
    obj = objective_for(model, "mse")
    engine = PerExampleEngine(obj)
    with warnings.catch_warnings():
        warnings.simplefilter("error", tp.FallbackWarning)
        engine(obj.space.values(), tf.constant(x), tf.constant(y))
        got = tp.per_example_gradients(model, (x, y), loss="mse", quiet=True)
    assert engine.mode == "vectorized"
    ws = model.trainable_variables
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            value = tf.reduce_mean((model(x[i:i + 1], training=False) - y[i:i + 1]) ** 2)
        for name, g in zip(obj.space.names, tape.gradient(value, ws)):
            np.testing.assert_allclose(got[name][i], g.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("layer", ["Conv3D"])
def test_uncovered_convolutions_still_count(layer):
    L = keras.layers
    model = keras.Sequential([keras.Input((4, 4, 4, 1)), getattr(L, layer)(1, 2, name="c")])
    assert pfor_looped_layers(model) == 1
