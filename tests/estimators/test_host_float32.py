"""Estimators on a float32 operator above a million parameters keep their host arrays in float32.

The reference is a diagonal operator whose spectrum, trace and per-block traces are known in closed form.
"""

import numpy as np
import tensorflow as tf

from tfpartials.estimators import layerwise_trace, top_eigenvalues
from tfpartials.estimators._probes import HOST_FLOAT32_MIN, draw_probes, host_dtype
from tfpartials.estimators.lanczos import lanczos
from tfpartials.linalg.operator import LinearOperator

N = HOST_FLOAT32_MIN + 6


class Diagonal(LinearOperator):
    def __init__(self, d, dtype=tf.float32):
        super().__init__(d.size, dtype, symmetric=True)
        self.d = tf.constant(d[:, None], dtype=dtype)

    def _matmat(self, V):
        return self.d * V


def _spectrum():
    d = np.random.default_rng(0).uniform(0.0, 1.0, N)
    d[:3] = [9.0, 7.0, 5.0]
    return d


def test_large_float32_operators_use_float32_host_arrays_small_ones_float64():
    assert host_dtype(Diagonal(np.ones(N))) is np.float32
    assert host_dtype(Diagonal(np.ones(N), tf.float64)) is np.float64
    assert host_dtype(Diagonal(np.ones(10))) is np.float64
    z = draw_probes(N, 2, "rademacher", np.random.default_rng(0), dtype=np.float32)
    assert z.dtype == np.float32 and z.shape == (N, 2) and set(np.unique(z)) == {-1.0, 1.0}


def test_top_eigenvalues_and_lanczos_in_float32_find_the_known_spectrum():
    op = Diagonal(_spectrum())
    res = top_eigenvalues(op, k=3, tol=1e-4, quiet=True)
    np.testing.assert_allclose(res.eigenvalues, [9.0, 7.0, 5.0], rtol=1e-4)
    # the eigenvectors are the first three coordinate vectors
    np.testing.assert_allclose(np.abs(res.eigenvectors[:3, :3]), np.eye(3), atol=1e-3)
    ritz, _ = lanczos(op, 12, quiet=True).ritz()
    assert abs(ritz[-1] - 9.0) < 1e-3


def test_layerwise_trace_in_float32_is_exact_on_a_diagonal():
    d = _spectrum()
    est = layerwise_trace(Diagonal(d), blocks={"a": np.arange(0, 10), "b": np.arange(10, N)}, max_matvecs=2,
                          min_matvecs=2, quiet=True)
    # Rademacher samples of a diagonal are exact: z_i^2 d_i = d_i
    np.testing.assert_allclose(est.value, d.sum(), rtol=1e-6)
    np.testing.assert_allclose([b.value for b in est.blocks], [d[:10].sum(), d[10:].sum()], rtol=1e-6)
