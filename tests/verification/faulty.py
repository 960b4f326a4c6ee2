"""Models with deliberately broken derivatives, for the checks to catch."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


class WrongGradient(keras.layers.Layer):
    """y = x * w elementwise, with a custom gradient for ``w`` multiplied by ``factor`` (1 = correct)."""

    def __init__(self, factor: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def build(self, shape):
        self.scale = self.add_weight(shape=(shape[-1],), initializer="ones", name="scale")

    def call(self, x):
        factor = self.factor

        @tf.custom_gradient
        def scaled(x, w):
            def grad(dy):
                return dy * w, factor * tf.reduce_sum(dy * x, axis=0)
            return x * w, grad

        return scaled(x, tf.convert_to_tensor(self.scale))


class Rounded(keras.layers.Layer):
    """Rounds its input: everything before it gets a None gradient (the op is ``Round``)."""

    def call(self, x):
        return tf.round(4.0 * x)


class SquareRoot(keras.layers.Layer):
    def call(self, x):
        return tf.sqrt(x)


def _data(n=12, d=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype("float32"), rng.normal(size=(n, 1)).astype("float32")


def wrong_gradient_model(factor: float):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh", name="d1"),
                              WrongGradient(factor, name="wrong"), keras.layers.Dense(1, name="out")])
    rng = np.random.default_rng(1)
    for v in model.trainable_variables:
        v.assign(rng.normal(size=v.shape).astype("float32") * 0.7 + (1.0 if "scale" in v.path else 0.0))
    return (model, *_data())


def rounded_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="d1"), Rounded(name="rnd"),
                              keras.layers.Dense(1, name="out")])
    return (model, *_data())


def sqrt_at_zero_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, kernel_initializer="zeros", name="d1"),
                              SquareRoot(name="root"), keras.layers.Dense(1, name="out")])
    return (model, *_data())
