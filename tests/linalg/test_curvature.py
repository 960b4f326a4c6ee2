"""Gauss-Newton and Fisher operators against closed forms and brute-force per-example loops (float64)."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

from tests import models as M
from tests import references as R
from tfpartials._checks import InputError, ResourceError
from tfpartials.autodiff.hvp import FallbackWarning
from tfpartials.autodiff.problem import prepare
from tfpartials.linalg.curvature import FisherOperator, GGNOperator, HessianOperator


def _augmented(x):
    return np.c_[np.asarray(x, np.float64), np.ones(len(x))]


def test_linear_models_ggn_equals_hessian_equals_closed_form():
    model, x, y = M.linear_regression()
    X = _augmented(x)
    closed = 2 * X.T @ X / len(x)
    for op in (GGNOperator(model, (x, y), "mse", batch_size=10, precision="float64"),
               HessianOperator(model, (x, y), "mse", batch_size=10, precision="float64", method="loop")):
        np.testing.assert_allclose(op.to_dense().numpy(), closed, rtol=1e-12, atol=1e-13)
    model, x, y = M.logistic_regression()
    X = _augmented(x)
    W, b = model.get_layer("logit").kernel.numpy(), model.get_layer("logit").bias.numpy()
    p = 1 / (1 + np.exp(-(X[:, :-1] @ W + b)))[:, 0]
    closed = X.T @ np.diag(p * (1 - p)) @ X / len(x)
    G = GGNOperator(model, (x, y), "binary_crossentropy", from_logits=True, precision="float64", method="reverse")
    H = HessianOperator(model, (x, y), "binary_crossentropy", from_logits=True, precision="float64", method="loop")
    assert G.psd and not H.psd
    np.testing.assert_allclose(G.to_dense().numpy(), closed, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(H.to_dense().numpy(), closed, rtol=1e-10, atol=1e-13)


def test_ggn_includes_the_regulariser_hessian():
    model, x, y = M.linear_regression()
    reg = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, name="lin",
                                                                  kernel_regularizer=keras.regularizers.L2(0.3))])
    reg.set_weights(model.get_weights())
    X = _augmented(x)
    expected = 2 * X.T @ X / len(x) + np.diag([0.6] * 4 + [0.0])
    for method in ("forward", "reverse"):
        G = GGNOperator(reg, (x, y), "mse", precision="float64", method=method)
        np.testing.assert_allclose(G.to_dense().numpy(), expected, rtol=1e-7, atol=1e-12)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("method", ["forward", "reverse", "loop"])
def test_ggn_of_softmax_mlp_equals_per_example_jacobian_oracle(method):
    model, x, y = M.mlp()
    J = R.output_jacobians_loop(model, x)                       # (N, 3, n)
    p = _softmax(R.float64_clone(model)(x.astype(np.float64)).numpy())
    H_out = np.einsum("ic,cd->icd", p, np.eye(3)) - np.einsum("ic,id->icd", p, p)   # diag(p) - p p^T
    expected = np.einsum("ica,icd,idb->ab", J, H_out, J) / len(x)
    G = GGNOperator(model, (x, y), "sparse_categorical_crossentropy", from_logits=True, batch_size=8,
                    precision="float64", method=method)
    np.testing.assert_allclose(G.to_dense().numpy(), expected, rtol=1e-9, atol=1e-12)


def test_ggn_of_batchnorm_model_and_cnn_fallback():
    model, x, y = M.batchnorm_dropout_model()
    J = R.output_jacobians_loop(model, x)[:, 0, :]              # (N, n): one output, mse: H_out = 2
    G = GGNOperator(model, (x, y), "mse", batch_size=6, precision="float64")
    np.testing.assert_allclose(G.to_dense().numpy(), 2 * J.T @ J / len(x), rtol=1e-9, atol=1e-12)
    cnn, xc, yc = M.small_cnn()
    with warnings.catch_warnings():  # vectorised through the convolutions (tfpartials' pfor rules): no fallback
        warnings.simplefilter("error", FallbackWarning)
        Gc = GGNOperator(cnn, (xc, yc), "sparse_categorical_crossentropy", from_logits=True, precision="float64")
        dense = Gc.to_dense().numpy()
    loop = GGNOperator(cnn, (xc, yc), "sparse_categorical_crossentropy", from_logits=True, precision="float64",
                       method="loop").to_dense().numpy()
    np.testing.assert_allclose(dense, loop, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("builder,loss,logits,ref_loss", [
    (M.mlp, "sparse_categorical_crossentropy", True, "scce"),
    (M.batchnorm_dropout_model, "mse", None, "mse"),
])
def test_empirical_fisher_is_the_mean_of_per_example_gradient_outer_products(builder, loss, logits, ref_loss):
    model, x, y = builder()
    Gs = R.per_example_gradients_loop(model, x, y, R.keras_mean_loss(ref_loss, from_logits=bool(logits)))
    F = FisherOperator(model, (x, y), loss, from_logits=logits, kind="empirical", batch_size=7, precision="float64")
    np.testing.assert_allclose(F.to_dense().numpy(), Gs.T @ Gs / len(x), rtol=1e-9, atol=1e-12)
    loop = FisherOperator(model, (x, y), loss, from_logits=logits, batch_size=7, precision="float64", method="loop")
    v = np.random.default_rng(0).normal(size=F.n)
    np.testing.assert_allclose((loop @ v).numpy(), Gs.T @ (Gs @ v) / len(x), rtol=1e-9, atol=1e-12)


def test_mc_fisher_same_seed_same_numbers_and_unbiased_for_logistic_regression():
    model, x, y = M.logistic_regression()
    kw = dict(loss="binary_crossentropy", from_logits=True, kind="mc", precision="float64", method="loop")
    a = FisherOperator(model, (x, y), seed=7, **kw).to_dense().numpy()
    b = FisherOperator(model, (x, y), seed=7, **kw).to_dense().numpy()
    c = FisherOperator(model, (x, y), seed=8, **kw).to_dense().numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    X = _augmented(x)
    W, bias = model.get_layer("logit").kernel.numpy(), model.get_layer("logit").bias.numpy()
    p = 1 / (1 + np.exp(-(X[:, :-1] @ W + bias)))[:, 0]
    true_fisher = X.T @ np.diag(p * (1 - p)) @ X / len(x)       # = GGN = Hessian for logistic regression
    many = FisherOperator(model, (x, y), seed=0, num_samples=400, batch_size=4096, **kw).to_dense().numpy()
    np.testing.assert_allclose(many, true_fisher, rtol=0, atol=0.05 * np.abs(true_fisher).max())


def test_mc_fisher_of_softmax_mlp_approaches_the_ggn():
    model, x, y = M.mlp()
    kw = dict(loss="sparse_categorical_crossentropy", from_logits=True, precision="float64")
    G = GGNOperator(model, (x, y), **kw, method="loop").to_dense().numpy()
    F = FisherOperator(model, (x, y), **kw, kind="mc", seed=0, num_samples=300, batch_size=4096,
                       method="loop").to_dense().numpy()
    assert np.abs(F - G).max() < 0.06 * np.abs(G).max()


def test_objective_and_tags():
    model, x, y = M.regression_mlp()
    obj, d = prepare(model, (x, y), "mse", precision="float64")
    v = np.random.default_rng(1).normal(size=obj.space.size)
    a = HessianOperator(obj, d, method="loop") @ v
    b = HessianOperator(model, (x, y), "mse", precision="float64", method="loop") @ v
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12)
    assert not GGNOperator(model, (x, y), "msle").psd                  # not convex in the outputs
    act = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activity_regularizer="l2", name="d")])
    assert not GGNOperator(act, (x, np.zeros((len(x), 2), "float32")), "mse").psd
    assert GGNOperator(act, (x, np.zeros((len(x), 2), "float32")), "mse", include_regularization=False).psd


def test_errors():
    model, x, y = M.regression_mlp()
    with pytest.raises(InputError, match="kind: expected one of 'empirical', 'mc', got 'true'"):
        FisherOperator(model, (x, y), "mse", kind="true")
    with pytest.raises(InputError, match="Monte-Carlo Fisher needs a likelihood; loss 'huber'"):
        FisherOperator(model, (x, y), "huber", kind="mc")
    with pytest.raises(InputError, match="num_samples: expected a positive integer, got 0"):
        FisherOperator(model, (x, y), "mse", kind="mc", num_samples=0)
    with pytest.raises(InputError, match="method: expected one of"):
        GGNOperator(model, (x, y), "mse", method="fast")
    wide = keras.Sequential([keras.Input((200,)), keras.layers.Dense(1000), keras.layers.Dense(1)])
    op = HessianOperator(wide, (np.ones((2, 200), "float32"), np.ones((2, 1), "float32")), "mse")
    with pytest.raises(ResourceError, match=r"dense Hessian matrix of 202,001 parameters.*spectrum"):
        op.to_dense()


def test_one_in_memory_batch_products_skip_the_data_pass(monkeypatch):
    """An operator on one in-memory batch computes each product as one kernel call on tensors made once; its
    products are those of a nested-tape float64 Hessian, and equal the ones through the data pass."""
    from tfpartials.linalg import curvature

    model, x, y = M.mlp()
    loss_fn = R.keras_mean_loss("scce", from_logits=True)
    kw = {"loss": "sparse_categorical_crossentropy", "from_logits": True, "precision": "float64"}
    H = HessianOperator(model, (x, y), batch_size=len(x), **kw)
    v = np.random.default_rng(0).standard_normal(H.n)
    want = R.nested_tape_hessian(model, x, y, loss_fn) @ v
    np.testing.assert_allclose(H.matvec(v).numpy(), want, rtol=1e-9, atol=1e-12)  # first product: settles it
    passes = []
    real = curvature.accumulate
    monkeypatch.setattr(curvature, "accumulate", lambda *a, **k: passes.append(1) or real(*a, **k))
    fast = H.matvec(v).numpy()
    assert not passes and H.num_matvecs == 2
    np.testing.assert_allclose(fast, want, rtol=1e-9, atol=1e-12)
    # a progress bar, several batches and the GGN keep (and agree with) the data pass
    shown = HessianOperator(model, (x, y), batch_size=len(x), quiet=False, **kw)
    np.testing.assert_array_equal(shown.matvec(v).numpy(), fast)
    split = HessianOperator(model, (x, y), batch_size=7, **kw)
    np.testing.assert_allclose(split.matvec(v).numpy(), fast, rtol=1e-10, atol=1e-13)
    assert len(passes) == 2
    G1 = GGNOperator(model, (x, y), batch_size=len(x), **kw)
    G7 = GGNOperator(model, (x, y), batch_size=7, **kw)
    np.testing.assert_allclose(G1.matvec(v).numpy(), G7.matvec(v).numpy(), rtol=1e-10, atol=1e-13)
