"""Per-example input Hessians against a closed form, float64 second differences and nested tapes."""

from __future__ import annotations

import numpy as np
import pytest

from tests import models as M
from tests.inputs import _models as IM
from tests.inputs import _references as R
from tfpartials._checks import InputError, ResourceError
from tfpartials.inputs import input_hessian


def test_quadratic_output_has_the_analytic_constant_hessian():
    model, W = IM.quadratic_model()
    a, c, d = W[:, 0].astype(np.float64), W[:, 1].astype(np.float64), W[:, 2].astype(np.float64)
    expected = np.outer(a, c) + np.outer(c, a) + 2 * np.outer(d, d)  # q = (a.x)(c.x) + (d.x)^2 + lower order
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32") * 3
    H = input_hessian(model, x)
    assert H.shape == (5, 4, 4)
    for b in range(5):
        np.testing.assert_allclose(H[b], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("builder,component", [(M.mlp, 1), (M.small_cnn, 2)], ids=["mlp", "cnn"])
def test_hessian_matches_second_differences_and_nested_tapes(builder, component):
    model, x, _ = builder()
    x = x[:3]
    B, n = len(x), int(np.prod(x.shape[1:]))
    tape = R.tape_input_hessian(model, x, component)
    fd = R.fd_input_hessian(model, x, component)
    np.testing.assert_allclose(tape, fd, rtol=1e-5, atol=1e-6)
    H64 = input_hessian(model, x, index=component, precision="float64")
    assert H64.shape == (B, *x.shape[1:], *x.shape[1:])
    np.testing.assert_allclose(H64.reshape(B, n, n), tape, rtol=1e-9, atol=1e-11)
    H32 = input_hessian(model, x, index=component).reshape(B, n, n)
    np.testing.assert_allclose(H32, tape, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(H32, np.swapaxes(H32, 1, 2), rtol=1e-5, atol=1e-6)


def test_all_components_chunked_and_per_example():
    model, x, _ = M.mlp()
    x = x[:7]
    H = input_hessian(model, x, index="all")
    assert H.shape == (7, 3, 5, 5)
    np.testing.assert_allclose(H[:, 2], input_hessian(model, x, index=2), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(input_hessian(model, x, index="all", batch_size=2, max_memory="40KB"), H,
                               rtol=1e-4, atol=1e-6)
    other = x.copy()
    other[1:] += 1.0
    np.testing.assert_allclose(input_hessian(model, other, index="all")[0], H[0], rtol=1e-6, atol=1e-7)


def test_batchnorm_inference_hessian_is_per_example(bn_model):
    model, x, _ = bn_model
    x = x[:4]
    H = input_hessian(model, x)
    np.testing.assert_allclose(H.reshape(4, 4, 4), R.tape_input_hessian(model, x, 0), rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError, match="training=True is refused"):
        input_hessian(model, x, training=True)


def test_hessian_bad_inputs():
    model, x, _ = M.mlp()
    with pytest.raises(InputError, match="has 3 components.*component=INDEX"):
        input_hessian(model, x)
    with pytest.raises(InputError, match="component 3 out of range"):
        input_hessian(model, x, index=3)
    with pytest.raises(InputError, match=r"component \(0, 1\) out of range"):
        input_hessian(model, x, index=(0, 1))
    with pytest.raises(InputError, match="component: expected an index or 'all'"):
        input_hessian(model, x, index="every")
    with pytest.raises(ResourceError, match="input Hessian.*above the memory limit"):
        input_hessian(model, x, index="all", max_memory="1KB")
