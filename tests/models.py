"""Small deterministic test models and data. Each builder returns ``(model, x, y)`` in float32.

Weights are set from a seeded generator, so every test sees the same numbers.
"""

from __future__ import annotations

import keras
import numpy as np


def _seed(seed: int) -> np.random.Generator:
    keras.utils.set_random_seed(seed)
    return np.random.default_rng(seed)


def _randomize(model, rng, scale=0.5):
    for v in model.trainable_variables:
        v.assign((rng.normal(size=v.shape) * scale).astype(v.dtype))
    return model


def linear_regression(n=37, d=4, seed=0):
    rng = _seed(seed)
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(1, name="lin")])
    _randomize(model, rng)
    x = rng.normal(size=(n, d)).astype("float32")
    y = rng.normal(size=(n, 1)).astype("float32")
    return model, x, y


def logistic_regression(n=41, d=3, seed=1):
    rng = _seed(seed)
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(1, name="logit")])
    _randomize(model, rng)
    x = rng.normal(size=(n, d)).astype("float32")
    y = (rng.random((n, 1)) < 0.5).astype("float32")
    return model, x, y


def mlp(n=29, d=5, hidden=6, out=3, seed=2, activation="tanh"):
    """tanh/relu MLP with softmax cross-entropy targets (integer labels)."""
    rng = _seed(seed)
    model = keras.Sequential([
        keras.Input((d,)),
        keras.layers.Dense(hidden, activation=activation, name="h1"),
        keras.layers.Dense(hidden, activation="relu" if activation == "tanh" else "tanh", name="h2"),
        keras.layers.Dense(out, name="logits"),
    ])
    _randomize(model, rng)
    x = rng.normal(size=(n, d)).astype("float32")
    y = rng.integers(0, out, size=(n,)).astype("int32")
    return model, x, y


def regression_mlp(n=33, d=3, hidden=5, seed=3):
    rng = _seed(seed)
    model = keras.Sequential([
        keras.Input((d,)),
        keras.layers.Dense(hidden, activation="tanh", name="h1"),
        keras.layers.Dense(1, name="out"),
    ])
    _randomize(model, rng)
    x = rng.normal(size=(n, d)).astype("float32")
    y = rng.normal(size=(n, 1)).astype("float32")
    return model, x, y


def small_cnn(n=11, seed=4, classes=3):
    rng = _seed(seed)
    model = keras.Sequential([
        keras.Input((6, 6, 1)),
        keras.layers.Conv2D(2, 3, activation="tanh", name="conv"),
        keras.layers.MaxPooling2D(2, name="pool"),
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(classes, name="logits"),
    ])
    _randomize(model, rng)
    x = rng.normal(size=(n, 6, 6, 1)).astype("float32")
    y = rng.integers(0, classes, size=(n,)).astype("int32")
    return model, x, y


def batchnorm_dropout_model(n=23, d=4, seed=5):
    """Dense -> BatchNorm -> Dropout -> Dense; inference mode must be deterministic and per-example."""
    rng = _seed(seed)
    model = keras.Sequential([
        keras.Input((d,)),
        keras.layers.Dense(5, activation="tanh", name="d1"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.Dropout(0.5, name="drop"),
        keras.layers.Dense(1, name="out"),
    ])
    _randomize(model, rng)
    bn = model.get_layer("bn")
    bn.moving_mean.assign(rng.normal(size=5).astype("float32") * 0.1)
    bn.moving_variance.assign((1 + rng.random(5)).astype("float32"))
    x = rng.normal(size=(n, d)).astype("float32")
    y = rng.normal(size=(n, 1)).astype("float32")
    return model, x, y


def embedding_model(n=17, vocab=12, length=5, seed=6):
    rng = _seed(seed)
    model = keras.Sequential([
        keras.Input((length,), dtype="int32"),
        keras.layers.Embedding(vocab, 3, name="emb"),
        keras.layers.GlobalAveragePooling1D(name="avg"),
        keras.layers.Dense(1, name="out"),
    ])
    _randomize(model, rng)
    x = rng.integers(0, vocab, size=(n, length)).astype("int32")
    y = rng.normal(size=(n, 1)).astype("float32")
    return model, x, y


def lstm_model(n=9, steps=4, d=3, seed=7):
    rng = _seed(seed)
    model = keras.Sequential([
        keras.Input((steps, d)),
        keras.layers.LSTM(4, name="lstm"),
        keras.layers.Dense(1, name="out"),
    ])
    _randomize(model, rng, scale=0.4)
    x = rng.normal(size=(n, steps, d)).astype("float32")
    y = rng.normal(size=(n, 1)).astype("float32")
    return model, x, y


def attention_model(n=6, steps=3, d=4, seed=8):
    """Self-attention over a short sequence: MultiHeadAttention (2 heads of 2) -> LayerNormalization -> Dense."""
    rng = _seed(seed)
    inp = keras.Input((steps, d))
    h = keras.layers.MultiHeadAttention(2, 2, name="mha")(inp, inp)
    h = keras.layers.LayerNormalization(name="ln")(h)
    out = keras.layers.Dense(1, name="out")(keras.layers.GlobalAveragePooling1D(name="avg")(h))
    model = keras.Model(inp, out)
    _randomize(model, rng)
    x = rng.normal(size=(n, steps, d)).astype("float32")
    y = rng.normal(size=(n, 1)).astype("float32")
    return model, x, y
