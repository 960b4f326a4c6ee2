"""Small models with closed-form input derivatives (float64 custom layers) and multi-input/-output graphs."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


class SinExp(keras.layers.Layer):
    """u(x) = [sin(x0) exp(x1), x0^2 x1 + x1^3] (x2 unused): exact closed-form derivatives."""

    def call(self, x):
        x0, x1 = x[:, 0:1], x[:, 1:2]
        return tf.concat([tf.sin(x0) * tf.exp(x1), x0 * x0 * x1 + x1 * x1 * x1], axis=1)


class Quadratic(keras.layers.Layer):
    """q(h) = h0 * h1 + h2^2 (for h = Wx + b: a constant input Hessian)."""

    def call(self, h):
        return h[:, 0:1] * h[:, 1:2] + h[:, 2:3] ** 2


class Swirl(keras.layers.Layer):
    """F(x) = (x0 * x1, sin(x1) + x0^3): divergence x1 + cos(x1)."""

    def call(self, x):
        x0, x1 = x[:, 0:1], x[:, 1:2]
        return tf.concat([x0 * x1, tf.sin(x1) + x0 ** 3], axis=1)


def sinexp_model():
    return keras.Sequential([keras.Input((3,), dtype="float64"), SinExp(dtype="float64", name="u")])


def swirl_model():
    return keras.Sequential([keras.Input((2,), dtype="float64"), Swirl(dtype="float64", name="F")])


def quadratic_model(seed=0):
    rng = np.random.default_rng(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="lin"), Quadratic(name="q")])
    W = rng.normal(size=(4, 3)).astype("float32")
    b = rng.normal(size=3).astype("float32")
    model.get_layer("lin").set_weights([W, b])
    return model, W


def tanh_model(seed=0):
    rng = np.random.default_rng(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="tanh", name="t")])
    W = rng.normal(size=(4, 3)).astype("float32")
    b = rng.normal(size=3).astype("float32")
    model.get_layer("t").set_weights([W, b])
    return model, W, b


def two_in_two_out(seed=0, as_dict=False):
    """Inputs a (3,), b (2,); outputs o1 (2,) = Dense(tanh(Dense([a, b]))), o2 (1,)."""
    keras.utils.set_random_seed(seed)
    a = keras.Input((3,), name="a")
    b = keras.Input((2,), name="b")
    h = keras.layers.Dense(4, activation="tanh", name="h")(keras.layers.Concatenate(name="cat")([a, b]))
    o1 = keras.layers.Dense(2, name="o1")(h)
    o2 = keras.layers.Dense(1, activation="tanh", name="o2")(h)
    if as_dict:
        return keras.Model({"a": a, "b": b}, {"o1": o1, "o2": o2})
    return keras.Model([a, b], [o1, o2])
