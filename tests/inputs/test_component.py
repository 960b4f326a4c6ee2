"""``component=`` means the same output component in every input-derivative function (closed-form reference)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfpartials as tp

_W = np.array([[0.5, -1.0, 0.25], [1.5, 0.5, -0.75]])  # (in=2, out=3)


def _tanh_layer():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="tanh", use_bias=False)])
    model.set_weights([_W.astype("float32")])
    x = np.random.default_rng(0).normal(size=(4, 2))
    return model, x


def _closed_form(x, c):
    """y_c = tanh(w_c . x): gradient (1 - t^2) w_c, Hessian -2 t (1 - t^2) w_c w_c^T."""
    w = _W[:, c]
    t = np.tanh(x @ w)
    grad = (1 - t**2)[:, None] * w[None, :]
    hess = (-2 * t * (1 - t**2))[:, None, None] * np.outer(w, w)[None]
    return grad, hess


@pytest.mark.parametrize("c", [0, 2])
def test_component_means_the_same_everywhere(c):
    model, x = _tanh_layer()
    grad, hess = _closed_form(x, c)
    kw = dict(component=c, precision="float64")
    np.testing.assert_allclose(tp.input_jacobian(model, x, **kw), grad, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(tp.input_gradient(model, x, **kw), grad, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(tp.input_hessian(model, x, **kw), hess, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(tp.partial_derivative(model, x, index=(0, 1), **kw), hess[:, 0, 1],
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(tp.laplacian(model, x, **kw), np.trace(hess, axis1=1, axis2=2), rtol=1e-6, atol=1e-7)


def test_all_components_and_former_keyword():
    model, x = _tanh_layer()
    full = tp.input_jacobian(model, x, precision="float64")
    np.testing.assert_allclose(tp.input_jacobian(model, x, component="all", precision="float64"), full)
    hess_all = tp.input_hessian(model, x, component="all", precision="float64")
    for c in range(3):
        np.testing.assert_allclose(full[:, c], _closed_form(x, c)[0], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(hess_all[:, c], _closed_form(x, c)[1], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(tp.input_hessian(model, x, index=1, precision="float64"), _closed_form(x, 1)[1],
                               rtol=1e-6, atol=1e-7)


def test_component_errors():
    model, x = _tanh_layer()
    with pytest.raises(tp.InputError, match="not both"):
        tp.input_hessian(model, x, component=0, index=0)
    with pytest.raises(tp.InputError, match="component"):
        tp.input_jacobian(model, x, component=5)
    with pytest.raises(tp.InputError, match="3 components"):
        tp.input_hessian(model, x)
