"""One contract, every operator class: A @ v == to_dense() @ v, linearity, symmetry, scipy view, algebra."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tests import models as M
from tfpartials.estimators.blocks import RestrictedOperator
from tfpartials.linalg.curvature import FisherOperator, GGNOperator, HessianOperator
from tfpartials.linalg.dense import DenseOperator
from tfpartials.linalg.kfac import EKFACOperator, KFACOperator
from tfpartials.linalg.operator import LinearOperator, ProductOperator, ScaledOperator, SumOperator

_RNG = np.random.default_rng(0)
_S = _RNG.normal(size=(6, 6))
_SYM = _S + _S.T
_NONSYM = _RNG.normal(size=(6, 6))


def _curvature(cls, **kw):
    model, x, y = M.regression_mlp(n=13)  # 26 parameters, batches of 5: a padded last batch
    return cls(model, (x, y), loss="mse", batch_size=5, precision="float64", **kw)


def _attention():
    model, x, y = M.attention_model(n=7)  # MultiHeadAttention projections, LayerNormalization, Dense
    return model, (x, y)


BUILDERS = {
    "dense_symmetric": lambda: DenseOperator(_SYM),
    "dense_nonsymmetric": lambda: DenseOperator(_NONSYM),
    "sum": lambda: SumOperator(DenseOperator(_SYM), DenseOperator(np.diag(np.arange(6.0)))),
    "difference": lambda: DenseOperator(_SYM) - DenseOperator(_NONSYM),
    "scaled": lambda: ScaledOperator(DenseOperator(_SYM), -2.5),
    "product": lambda: ProductOperator(DenseOperator(_SYM), DenseOperator(_NONSYM)),
    "square": lambda: (lambda A: A @ A)(DenseOperator(_SYM)),
    "hessian": lambda: _curvature(HessianOperator),
    "ggn": lambda: _curvature(GGNOperator),
    "fisher_empirical": lambda: _curvature(FisherOperator, kind="empirical"),
    "fisher_mc": lambda: _curvature(FisherOperator, kind="mc", seed=3),
    "hessian_plus_ggn": lambda: _get("hessian") + 0.5 * _get("ggn"),
    "kfac": lambda: _curvature(KFACOperator, quiet=True),
    "ekfac": lambda: _curvature(EKFACOperator, quiet=True),
    "kfac_attention": lambda: KFACOperator(*_attention(), loss="mse", batch_size=4, precision="float64", quiet=True),
    "kfac_inverse": lambda: _get("kfac").inverse(0.1),
    "restricted_hessian": lambda: RestrictedOperator(_get("hessian"), np.array([0, 3, 7, 8, 25])),
    "restricted_nonsymmetric": lambda: RestrictedOperator(DenseOperator(_NONSYM), np.array([5, 1, 2])),
}
_CACHE: dict[str, LinearOperator] = {}


def _get(name: str) -> LinearOperator:
    if name not in _CACHE:  # built once: the compiled products are reused by every check
        _CACHE[name] = BUILDERS[name]()
    return _CACHE[name]


@pytest.fixture(params=list(BUILDERS))
def op(request) -> LinearOperator:
    return _get(request.param)


def _tol(op):
    return dict(rtol=1e-9, atol=1e-11) if op.dtype.name == "float64" else dict(rtol=1e-5, atol=1e-6)


def test_matvec_and_matmat_equal_dense(op):
    rng = np.random.default_rng(1)
    A = op.to_dense().numpy()
    assert A.shape == op.shape and op.to_dense().dtype == op.dtype
    v = rng.normal(size=op.n)
    V = rng.normal(size=(op.n, 3))
    np.testing.assert_allclose((op @ v).numpy(), A @ v, **_tol(op))
    np.testing.assert_allclose((op @ V).numpy(), A @ V, **_tol(op))
    np.testing.assert_allclose(op.matmat(V).numpy()[:, 1], op.matvec(V[:, 1]).numpy(), **_tol(op))


def test_linearity(op):
    rng = np.random.default_rng(2)
    u, w = rng.normal(size=op.n), rng.normal(size=op.n)
    lhs = (op @ (2.0 * u - 3.0 * w)).numpy()
    rhs = 2.0 * (op @ u).numpy() - 3.0 * (op @ w).numpy()
    np.testing.assert_allclose(lhs, rhs, **_tol(op))


def test_symmetry_tag_is_truthful(op):
    A = op.to_dense().numpy()
    scale = max(1.0, np.abs(A).max())
    if op.symmetric:
        np.testing.assert_allclose(A, A.T, rtol=0, atol=1e-10 * scale)
        rng = np.random.default_rng(3)
        u, w = rng.normal(size=op.n), rng.normal(size=op.n)
        assert np.isclose(u @ (op @ w).numpy(), w @ (op @ u).numpy(), rtol=1e-9, atol=1e-10 * scale)
    else:
        assert not np.allclose(A, A.T)
    if op.psd:
        assert np.linalg.eigvalsh((A + A.T) / 2).min() >= -1e-10 * scale


def test_to_scipy_agrees(op):
    rng = np.random.default_rng(4)
    S = op.to_scipy()
    A = op.to_dense().numpy()
    v, V = rng.normal(size=op.n), rng.normal(size=(op.n, 2))
    assert S.shape == op.shape
    np.testing.assert_allclose(S.matvec(v), A @ v, **_tol(op))
    np.testing.assert_allclose(S.matmat(V), A @ V, **_tol(op))
    if op.symmetric:
        np.testing.assert_allclose(S.rmatvec(v), A.T @ v, **_tol(op))


def test_dict_vectors_and_bad_shapes(op):
    with pytest.raises(ValueError, match=rf"expected a vector of shape \({op.n},\)"):
        op.matvec(np.ones(op.n + 1))
    if op.space is None:
        return
    rng = np.random.default_rng(5)
    v = rng.normal(size=op.n)
    as_dict = {name: v[op.space.slice_of(name)].reshape(op.space.shape_of(name)) for name in op.space.names}
    np.testing.assert_allclose((op @ as_dict).numpy(), (op @ v).numpy(), **_tol(op))


def test_num_matvecs_counts_columns():
    op = DenseOperator(_SYM)
    op @ np.ones(6)
    op @ np.ones((6, 4))
    assert op.num_matvecs == 5


def test_curvature_operators_are_tagged():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h, g, f = _curvature(HessianOperator), _curvature(GGNOperator), _curvature(FisherOperator)
    assert (h.symmetric, h.psd) == (True, False)
    assert (g.symmetric, g.psd) == (True, True)      # mse is convex in the outputs
    assert (f.symmetric, f.psd) == (True, True)
    assert h.space.names == ["h1/kernel", "h1/bias", "out/kernel", "out/bias"] and h.n == 26
    assert "HessianOperator(n=26" in repr(h) and "kind='empirical'" in repr(f)


def test_restriction_is_the_principal_block_of_its_parent():
    for name, parent in (("restricted_hessian", "hessian"), ("restricted_nonsymmetric", None)):
        op = _get(name)
        full = (_get(parent).to_dense().numpy() if parent else _NONSYM)
        np.testing.assert_allclose(op.to_dense().numpy(), full[np.ix_(op.indices, op.indices)], **_tol(op))
