"""Every implementation gives the same numbers: vectorized_map, stacked copies, and reverse-mode fallbacks for
models TensorFlow cannot differentiate in forward mode (an LSTM)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tests import models as M
from tests.inputs import _references as R
from tfpartials import _cache
from tfpartials.inputs import divergence, input_hessian, input_jacobian, laplacian, partial_derivative
from tfpartials.inputs._model_fn import get_function
from tfpartials.inputs._sweep import Unsupported


@pytest.fixture
def fresh_cache():
    _cache.clear()


def test_stacked_copies_when_vectorisation_is_unavailable(monkeypatch, fresh_cache):
    model, x, _ = M.mlp()
    x = x[:4]

    def refuse(*args, **kwargs):
        raise ValueError("no vectorisation rule")

    for module in ("jacobian", "hessian", "laplacian"):
        monkeypatch.setattr(sys.modules[f"tfpartials.inputs.{module}"], "map_directions", refuse)
    J = R.tape_input_jacobian(model, x)
    for m in ("forward", "reverse"):
        np.testing.assert_allclose(input_jacobian(model, x, mode=m, max_memory="20KB"), J, rtol=1e-4, atol=1e-6)
    H = np.stack([R.tape_input_hessian(model, x, c) for c in range(3)], axis=1)
    np.testing.assert_allclose(input_hessian(model, x, index="all"), H, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(laplacian(model, x, component="all"), np.trace(H, axis1=2, axis2=3), rtol=1e-4,
                               atol=1e-6)
    methods = {k[0]: v.method for k, v in get_function(model)._functions.items() if hasattr(v, "method")}
    assert set(methods) == {"jacobian", "hessian", "laplacian"}
    assert all(m.endswith("stacked copies") for m in methods.values()), methods


def test_lstm_without_forward_mode_falls_back_to_reverse(fresh_cache):
    model, x, _ = M.lstm_model()
    x = x[:3]
    J = input_jacobian(model, x, mode="auto")
    np.testing.assert_allclose(J.reshape(3, 1, -1), R.tape_input_jacobian(model, x), rtol=1e-4, atol=1e-6)
    with pytest.raises(Unsupported, match="forward-mode Jacobian.*use mode='reverse'"):
        input_jacobian(model, x, mode="forward")
    H = input_hessian(model, x).reshape(3, 12, 12)
    np.testing.assert_allclose(H, R.tape_input_hessian(model, x, 0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(laplacian(model, x), np.trace(H, axis1=1, axis2=2), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(partial_derivative(model, x, index=(2, 5)), H[:, 2, 5], rtol=1e-5, atol=1e-7)
    with pytest.raises(Unsupported, match="order 3 need forward mode"):
        partial_derivative(model, x, index=(0, 1, 1))


def test_divergence_equals_jacobian_trace():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(4)])
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    J = R.tape_input_jacobian(model, x)
    np.testing.assert_allclose(divergence(model, x), np.trace(J, axis1=1, axis2=2), rtol=1e-5, atol=1e-6)
