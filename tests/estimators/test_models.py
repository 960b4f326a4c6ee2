"""Estimators on real model Hessians, against the dense Hessian from nested tapes (tests/references.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tests import models as M
from tests.estimators.spectra import dense_hessian
from tfpartials.estimators import (
    exact_diagonal,
    hutchpp_trace,
    per_layer,
    restrict,
    spectral_density,
    top_eigenvalues,
)

CASES = {"mlp": lambda: M.mlp(hidden=8), "cnn": M.small_cnn}


def _hessian_operator(model, x, y, **kw):
    from tfpartials.linalg.curvature import HessianOperator

    return HessianOperator(model, (x, y), loss="sparse_categorical_crossentropy", from_logits=True, **kw)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    build = CASES[request.param]
    model, x, y = build()
    H = dense_hessian(model, x, y)
    return request.param, model, x, y, H


def test_top3_eigenvalues_match_the_dense_hessian(case):
    name, model, x, y, H = case
    lam = np.linalg.eigvalsh(H)
    op = _hessian_operator(model, x, y, precision="float64", batch_size=8)
    assert op.n == H.shape[0] and op.symmetric
    res = top_eigenvalues(op, k=3, seed=0)
    assert res.converged
    np.testing.assert_allclose(res.eigenvalues, lam[::-1][:3], rtol=1e-4)
    assert res.num_matvecs < H.shape[0]  # cheaper than the dense Hessian
    vec = res.eigenvector_dict(0)
    assert list(vec) == list(op.space.names)
    flat = np.concatenate([v.ravel() for v in vec.values()])
    np.testing.assert_allclose(np.linalg.norm(H @ flat - res.eigenvalues[0] * flat), res.residual_norms[0],
                               rtol=1e-2, atol=1e-8 * abs(lam).max())


def test_top_eigenvalues_in_float32(case):
    name, model, x, y, H = case
    lam = np.linalg.eigvalsh(H)
    res = top_eigenvalues(_hessian_operator(model, x, y), k=2, seed=1)
    np.testing.assert_allclose(res.eigenvalues, lam[::-1][:2], rtol=1e-3)


def test_slq_density_integrates_to_one_and_has_mean_trace_over_n(case):
    name, model, x, y, H = case
    n = H.shape[0]
    op = _hessian_operator(model, x, y, precision="float64")
    d = spectral_density(op, num_probes=6, num_lanczos=min(30, n), seed=0)
    np.testing.assert_allclose(np.trapezoid(d.values, d.grid), 1.0, atol=1e-6)
    first = np.trapezoid(d.grid * d.values, d.grid)
    per_probe = np.sum(d.ritz_weights * d.ritz_values, axis=1)
    np.testing.assert_allclose(first, per_probe.mean(), rtol=1e-6, atol=1e-9)
    se = per_probe.std(ddof=1) / np.sqrt(per_probe.size)
    assert abs(first - np.trace(H) / n) <= 4 * se
    np.testing.assert_allclose(d.ritz_values.max(), np.linalg.eigvalsh(H)[-1], rtol=1e-4)


def test_trace_and_diagonal_of_the_hessian(case):
    name, model, x, y, H = case
    op = _hessian_operator(model, x, y, precision="float64")
    tr = hutchpp_trace(op, num_matvecs=45, seed=0)
    assert abs(tr.value - np.trace(H)) <= 4 * tr.std_error + 1e-9 * abs(np.trace(H))
    dg = exact_diagonal(op)
    np.testing.assert_allclose(dg.values, np.diag(H), rtol=1e-6, atol=1e-10)
    assert list(dg.as_dict()) == list(op.space.names)


def test_per_layer_sharpness_matches_dense_blocks(case):
    name, model, x, y, H = case
    op = _hessian_operator(model, x, y, precision="float64")
    space = op.space
    sharp = per_layer(top_eigenvalues, op, k=1)
    for layer, res in sharp.items():
        idx = np.concatenate([np.arange(space.size)[space.slice_of(v)] for v in space.matching([layer])])
        np.testing.assert_allclose(res.eigenvalues[0], np.linalg.eigvalsh(H[np.ix_(idx, idx)])[-1], rtol=1e-4)
    # the operator's own wrt= gives the same block as restrict()
    last = list(sharp)[-1]
    own = top_eigenvalues(_hessian_operator(model, x, y, precision="float64", wrt=[last]), k=1)
    np.testing.assert_allclose(own.eigenvalues, sharp[last].eigenvalues, rtol=1e-6)
    np.testing.assert_allclose(restrict(op, last).to_dense().numpy(),
                               _hessian_operator(model, x, y, precision="float64", wrt=[last]).to_dense().numpy(),
                               rtol=1e-8, atol=1e-12)


def test_same_seed_same_numbers_on_a_model():
    model, x, y = M.regression_mlp()
    from tfpartials.linalg.curvature import GGNOperator

    op = GGNOperator(model, (x, y), loss="mse")
    a = spectral_density(op, num_probes=2, num_lanczos=8, seed=3)
    b = spectral_density(op, num_probes=2, num_lanczos=8, seed=3)
    c = spectral_density(op, num_probes=2, num_lanczos=8, seed=4)
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.allclose(a.ritz_weights, c.ritz_weights)
    assert np.all(top_eigenvalues(op, k=2).eigenvalues >= -1e-6)  # the GGN is PSD
