"""A small convolutional classifier on scikit-learn's bundled 8×8 handwritten digits (no download).

``digits_cnn()`` trains it (seeded, a few seconds on two CPU cores), caches the trained model, and returns it
with held-out images: the example used in the docs, the report and the attribution benchmark.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

__all__ = ["digits_cnn", "digits_arrays", "build_digits_cnn", "DigitsExample"]

_VERSION = 1  # bump when the architecture or training changes, so stale cache entries are not reused


class DigitsExample(NamedTuple):
    """A trained digits classifier and held-out data: ``model, x, y = digits_cnn()``.

    Attributes:
        model: Keras model ``(B, 8, 8, 1) -> (B, 10)`` logits, compiled with sparse categorical
            cross-entropy from logits.
        x: held-out images ``(N, 8, 8, 1)`` float32 in [0, 1].
        y: their labels ``(N,)`` int32.
    """

    model: object
    x: np.ndarray
    y: np.ndarray


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as ``(N, 8, 8, 1)`` float32 images in [0, 1] and ``(N,)`` int32 labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    return x, data.target.astype(np.int32)


def build_digits_cnn(seed: int = 0):
    """The untrained CNN: two 3×3 convolutions (smooth activations), average pooling, a linear read-out."""
    from .._backend import keras

    def init(i: int):
        return keras.initializers.GlorotUniform(seed=seed * 100 + i)

    return keras.Sequential([
        keras.Input((8, 8, 1), name="image"),
        keras.layers.Conv2D(16, 3, padding="same", activation="swish", kernel_initializer=init(1), name="conv1"),
        keras.layers.AveragePooling2D(2, name="pool1"),
        keras.layers.Conv2D(32, 3, padding="same", activation="swish", kernel_initializer=init(2), name="conv2"),
        keras.layers.AveragePooling2D(2, name="pool2"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(10, kernel_initializer=init(3), name="logits"),
    ], name="digits_cnn")


def _split(n: int, seed: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    return order[n_test:], order[:n_test]


def train_digits_cnn(epochs: int = 15, seed: int = 0, test_fraction: float = 0.2, batch_size: int = 32):
    """Build and train the CNN on the training split (seeded: fixed initialisers, a fixed example order)."""
    from .._backend import keras

    x, y = digits_arrays()
    train, _ = _split(len(x), seed, test_fraction)
    model = build_digits_cnn(seed)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x[train], y[train], epochs=int(epochs), batch_size=batch_size, shuffle=False, verbose=0)
    return model


def digits_cnn(epochs: int = 15, seed: int = 0, *, cache: bool | str | os.PathLike = True,
               test_fraction: float = 0.2) -> DigitsExample:
    """A trained digits CNN and its held-out images (about 96% accurate on them after the default 15 epochs).

    Args:
        epochs: training epochs (about 0.3 s each on two CPU cores).
        seed: seed of the initialisation and of the train/test split.
        cache: ``True`` caches the trained model under the user cache directory (see
            :func:`tfpartials.examples._cache.cache_dir`), a path uses that directory, ``False`` always trains.
        test_fraction: share of the 1797 digits held out and returned.

    Example:
        >>> model, x, y = digits_cnn(cache=False)          # doctest: +SKIP
        >>> (model.predict(x, verbose=0).argmax(1) == y).mean() > 0.9   # doctest: +SKIP
        True

        One epoch, to see the shapes quickly:

        >>> import tfpartials as tp
        >>> model, x, y = tp.digits_cnn(epochs=1, cache=False)
        >>> x.shape, tuple(model(x[:2]).shape), sorted(set(y.tolist())) == list(range(10))  # 20% of 1797 images
        ((359, 8, 8, 1), (2, 10), True)
    """
    from .._checks import check_nonnegative_int, check_positive_int
    from ._cache import cached_model

    epochs = check_positive_int("epochs", epochs)
    seed = check_nonnegative_int("seed", seed)
    x, y = digits_arrays()
    _, test = _split(len(x), seed, test_fraction)
    name = f"digits_cnn-v{_VERSION}-seed{seed}-epochs{epochs}-test{test_fraction:g}.keras"
    model = cached_model(name, lambda: train_digits_cnn(epochs, seed, test_fraction), cache)
    return DigitsExample(model, x[test], y[test])
