"""Mixed partials, Laplacian and divergence against closed forms (float64 custom layers) and dense Hessians."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tests import models as M
from tests.inputs import _models as IM
from tfpartials._checks import InputError
from tfpartials.inputs import divergence, input_hessian, laplacian, partial_derivative


def _analytic_u0(x, counts):
    """d^(a+b+c) / dx0^a dx1^b dx2^c of sin(x0) exp(x1)."""
    a, b, c = counts
    if c:
        return np.zeros(len(x))
    return np.sin(x[:, 0] + a * np.pi / 2) * np.exp(x[:, 1])


def test_every_mixed_partial_up_to_order_3_matches_closed_form():
    model = IM.sinexp_model()
    x = np.random.default_rng(0).normal(size=(6, 3))
    indices = [m for k in (1, 2, 3) for m in itertools.combinations_with_replacement(range(3), k)]
    indices += [(1, 0), (1, 0, 0), (0, 1, 0)]  # order does not matter
    for index in indices:
        counts = [index.count(i) for i in range(3)]
        got = partial_derivative(model, x, index=index, component=0)
        assert got.shape == (6,) and got.dtype == np.float64
        np.testing.assert_allclose(got, _analytic_u0(x, counts), rtol=1e-12, atol=1e-12, err_msg=str(index))
    # second component v = x0^2 x1 + x1^3: d^3 v / dx0^2 dx1 = 2, d^3 v / dx1^3 = 6
    both = partial_derivative(model, x, index=(0, 1, 0), component="all")
    np.testing.assert_allclose(both[:, 1], 2.0, rtol=1e-12)
    np.testing.assert_allclose(partial_derivative(model, x, index=(1, 1, 1), component=1), 6.0, rtol=1e-12)
    np.testing.assert_allclose(partial_derivative(model, x, index=(), component=0),
                               np.sin(x[:, 0]) * np.exp(x[:, 1]), rtol=1e-12)


def test_laplacian_closed_form():
    model = IM.sinexp_model()
    x = np.random.default_rng(1).normal(size=(5, 3))
    lap = laplacian(model, x, component="all")
    assert lap.shape == (5, 2)
    np.testing.assert_allclose(lap[:, 0], 0.0, atol=1e-12)  # sin(x0) e^x1 is harmonic
    np.testing.assert_allclose(lap[:, 1], 8 * x[:, 1], rtol=1e-12)  # 2 x1 + 6 x1
    np.testing.assert_allclose(laplacian(model, x, component=1, batch_size=2), 8 * x[:, 1], rtol=1e-12)


def test_laplacian_and_partials_equal_dense_hessian_entries():
    model, x, _ = M.small_cnn()
    x = x[:4]
    H = input_hessian(model, x, index="all").reshape(4, 3, 36, 36)
    lap = laplacian(model, x, component="all")
    np.testing.assert_allclose(lap, np.trace(H, axis1=2, axis2=3), rtol=1e-4, atol=1e-5)
    p = partial_derivative(model, x, index=((1, 2, 0), (3, 3, 0)), component=1)
    np.testing.assert_allclose(p, H[:, 1, 1 * 6 + 2, 3 * 6 + 3], rtol=1e-4, atol=1e-6)


def test_divergence_closed_form():
    model = IM.swirl_model()
    x = np.random.default_rng(2).normal(size=(6, 2))
    np.testing.assert_allclose(divergence(model, x), x[:, 1] + np.cos(x[:, 1]), rtol=1e-12)


def test_partials_bad_inputs():
    model = IM.sinexp_model()
    x = np.zeros((2, 3))
    with pytest.raises(InputError, match="index entry 3 out of range"):
        partial_derivative(model, x, index=(0, 3), component=0)
    with pytest.raises(InputError, match="has 2 components"):
        partial_derivative(model, x, index=(0,))
    with pytest.raises(InputError, match="component 2 out of range"):
        laplacian(model, x, component=2)
    with pytest.raises(InputError, match="order 9 is above"):
        partial_derivative(model, x, index=(0,) * 9, component=0)
    with pytest.raises(TypeError, match="tuple of input coordinates"):
        partial_derivative(model, x, index="01", component=0)
    with pytest.raises(InputError, match="divergence needs as many outputs as inputs"):
        divergence(model, x)
    bn, xb, _ = M.batchnorm_dropout_model()
    for f in (laplacian, divergence):
        with pytest.raises(InputError, match="training=True is refused"):
            f(bn, xb, training=True)
    with pytest.raises(InputError, match="training=True is refused"):
        partial_derivative(bn, xb, index=(0,), training=True)
