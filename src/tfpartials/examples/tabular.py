"""A small regression MLP on scikit-learn's bundled diabetes table (442 patients, 10 named features).

``diabetes_mlp()`` trains it (seeded, about a second), caches it, and returns it with held-out rows and the
feature names, for the tabular attribution plots and the command line's CSV path.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

__all__ = ["diabetes_mlp", "diabetes_arrays", "build_diabetes_mlp", "TabularExample"]

_VERSION = 1


class TabularExample(NamedTuple):
    """A trained tabular model, held-out rows and feature names: ``model, x, y, names = diabetes_mlp()``.

    Attributes:
        model: Keras model ``(B, 10) -> (B, 1)``, compiled with mean squared error.
        x: held-out rows ``(N, 10)`` float32 (standardised features).
        y: standardised disease progression ``(N, 1)`` float32.
        feature_names: the 10 column names (``age``, ``sex``, ``bmi``, ``bp``, ``s1`` … ``s6``).
    """

    model: object
    x: np.ndarray
    y: np.ndarray
    feature_names: list[str]


def diabetes_arrays() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features standardised to zero mean and unit variance, the target standardised, and feature names."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    x = np.asarray(data.data, np.float64)
    x = (x - x.mean(0)) / x.std(0)
    y = np.asarray(data.target, np.float64)
    y = (y - y.mean()) / y.std()
    return x.astype(np.float32), y.astype(np.float32)[:, None], [str(n) for n in data.feature_names]


def build_diabetes_mlp(seed: int = 0, hidden: int = 32):
    """The untrained MLP: 10 -> hidden (tanh) -> hidden (tanh) -> 1."""
    from .._backend import keras

    def init(i: int):
        return keras.initializers.GlorotUniform(seed=seed * 100 + i)

    return keras.Sequential([
        keras.Input((10,), name="features"),
        keras.layers.Dense(hidden, activation="tanh", kernel_initializer=init(1), name="hidden1"),
        keras.layers.Dense(hidden, activation="tanh", kernel_initializer=init(2), name="hidden2"),
        keras.layers.Dense(1, kernel_initializer=init(3), name="progression"),
    ], name="diabetes_mlp")


def _split(n: int, seed: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    return order[n_test:], order[:n_test]


def train_diabetes_mlp(epochs: int = 60, seed: int = 0, test_fraction: float = 0.2):
    """Build and train the MLP on the training split (seeded initialisers, a fixed example order)."""
    from .._backend import keras

    x, y, _ = diabetes_arrays()
    train, _ = _split(len(x), seed, test_fraction)
    model = build_diabetes_mlp(seed)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    model.fit(x[train], y[train], epochs=int(epochs), batch_size=32, shuffle=False, verbose=0)
    return model


def diabetes_mlp(epochs: int = 60, seed: int = 0, *, cache: bool | str | os.PathLike = True,
                 test_fraction: float = 0.2) -> TabularExample:
    """A trained diabetes regression MLP, its held-out rows and the feature names.

    Args:
        epochs: training epochs (a few milliseconds each).
        seed: seed of the initialisation and of the train/test split.
        cache: ``True`` caches under the user cache directory, a path uses that directory, ``False`` trains.
        test_fraction: share of the 442 rows held out and returned.

    Example:
        >>> import tfpartials as tp
        >>> model, x, y, names = tp.diabetes_mlp(epochs=1, cache=False)   # one epoch: quick, not accurate
        >>> names[:4], x.shape, tuple(model(x[:2]).shape)                  # 20% of 442 rows, 10 features
        (['age', 'sex', 'bmi', 'bp'], (88, 10), (2, 1))
    """
    from .._checks import check_nonnegative_int, check_positive_int
    from ._cache import cached_model

    epochs = check_positive_int("epochs", epochs)
    seed = check_nonnegative_int("seed", seed)
    x, y, names = diabetes_arrays()
    _, test = _split(len(x), seed, test_fraction)
    name = f"diabetes_mlp-v{_VERSION}-seed{seed}-epochs{epochs}-test{test_fraction:g}.keras"
    model = cached_model(name, lambda: train_diabetes_mlp(epochs, seed, test_fraction), cache)
    return TabularExample(model, x[test], y[test], names)
