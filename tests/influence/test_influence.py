"""Influence scores against closed forms written here in numpy, against leave-one-out refits, and on flipped digits.

Definition under test: scores[j, i] = (1/N) grad l(test_j)^T (H + lambda I)^{-1} grad l(train_i), the predicted
change of test loss j when training example i is left out (its term deleted from (1/N) sum l + R) and the model
refit; positive = i helped.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from scipy.stats import spearmanr

import tfpartials as tp
from tests.influence.problems import (
    flipped_digits,
    logistic_fit,
    logistic_model,
    logistic_problem,
    ridge_fit,
    ridge_problem,
)


def _spearman(a, b) -> float:
    return float(spearmanr(np.ravel(a), np.ravel(b)).statistic)


@pytest.fixture(scope="module")
def ridge():
    """The ridge problem and its closed-form influence (numpy, float64), with exact LOO refits."""
    model, x, y, xt, yt, c = ridge_problem()
    n, d = x.shape
    A, At = np.hstack([x, np.ones((n, 1))]), np.hstack([xt, np.ones((len(xt), 1))])
    theta = ridge_fit(x, y, c)
    r, rt = A @ theta - y, At @ theta - yt
    g, gt = 2 * r * A, 2 * rt * At                      # grad of (a.theta - y)^2, kernel entries then bias
    H = 2 * A.T @ A / n + 2 * c * np.diag([1.0] * d + [0.0])   # Hessian of (1/N) sum l + c |w|^2
    damping = 0.01
    closed = gt @ np.linalg.solve(H + damping * np.eye(d + 1), g.T) / n
    loo = np.zeros((len(xt), n))
    for i in range(n):  # refit of (1/N) sum_{k != i} l_k + c |w|^2 in closed form
        keep = np.arange(n) != i
        th = ridge_fit(x[keep], y[keep], c, n_total=n)
        loo[:, i] = ((At @ th - yt) ** 2 - rt ** 2)[:, 0]
    self_closed = np.sum(g * np.linalg.solve(H + damping * np.eye(d + 1), g.T).T, axis=1) / n
    return dict(model=model, x=x, y=y, xt=xt, yt=yt, closed=closed, loo=loo, damping=damping,
                self_closed=self_closed, g=g, gt=gt)


@pytest.fixture(scope="module")
def exact(ridge):
    return tp.influence(ridge["model"], (ridge["x"], ridge["y"]), (ridge["xt"], ridge["yt"]), loss="mse",
                        method="exact", damping=ridge["damping"], quiet=True)


def test_exact_equals_closed_form_and_tracks_leave_one_out(ridge, exact):
    assert exact.scores.shape == (6, 40)
    np.testing.assert_allclose(exact.scores, ridge["closed"], rtol=1e-6, atol=1e-9)
    rho = _spearman(exact.scores, ridge["loo"])
    print(f"\nridge: Spearman(exact influence, exact leave-one-out refit) = {rho:.4f}")
    assert rho >= 0.95
    # sign: removing a point that pulls the fit towards a test point raises that test loss
    assert np.sign(exact.scores[ridge["loo"] > 1e-3]).min() == 1.0
    assert "positive = i helped" in exact.definition


def test_hessian_curvature_equals_ggn_for_a_linear_model(ridge, exact):
    res = tp.influence(ridge["model"], (ridge["x"], ridge["y"]), (ridge["xt"], ridge["yt"]), loss="mse",
                       method="exact", curvature="hessian", damping=ridge["damping"], quiet=True)
    np.testing.assert_allclose(res.scores, ridge["closed"], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("method,options", [("cg", {}), ("lissa", {"tol": 1e-4}), ("arnoldi", {"rank": 6}),
                                            ("ekfac", {})])
def test_iterative_methods_rank_like_exact(ridge, exact, method, options):
    res = tp.influence(ridge["model"], (ridge["x"], ridge["y"]), (ridge["xt"], ridge["yt"]), loss="mse",
                       method=method, damping=ridge["damping"], quiet=True, **options)
    rho = _spearman(res.scores, exact.scores)
    print(f"\nridge: Spearman({method}, exact) = {rho:.4f}")
    assert rho >= 0.95
    if method == "cg":  # converged CG is the exact solve
        np.testing.assert_allclose(res.scores, ridge["closed"], rtol=1e-5, atol=1e-8)


def test_tracin_is_the_scaled_gradient_dot_product(ridge):
    res = tp.influence(ridge["model"], (ridge["x"], ridge["y"]), (ridge["xt"], ridge["yt"]), loss="mse",
                       method="tracin", quiet=True)
    np.testing.assert_allclose(res.scores, ridge["gt"] @ ridge["g"].T / 40, rtol=1e-9)
    assert "identity" in res.info["note"]


def test_projection_is_unbiased_and_seeded(ridge, exact):
    kw = dict(loss="mse", method="exact", damping=ridge["damping"], quiet=True, projection_dim=4000)
    a = tp.influence(ridge["model"], (ridge["x"], ridge["y"]), (ridge["xt"], ridge["yt"]), seed=3, **kw)
    b = tp.influence(ridge["model"], (ridge["x"], ridge["y"]), (ridge["xt"], ridge["yt"]), seed=3, **kw)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert _spearman(a.scores, exact.scores) >= 0.9


def test_test_batches_and_chunks_do_not_change_the_scores(ridge, exact):
    res = tp.influence(ridge["model"], (ridge["x"], ridge["y"]), (ridge["xt"], ridge["yt"]), loss="mse",
                       method="exact", damping=ridge["damping"], quiet=True, batch_size=7, max_memory=2600)
    assert res.info["test_batches"] > 1
    np.testing.assert_allclose(res.scores, exact.scores, rtol=1e-10, atol=1e-12)


def test_top_and_self_influence(ridge, exact):
    top = exact.top(3)
    for j in range(6):
        order = np.argsort(-ridge["closed"][j])
        assert top.helpful[j].tolist() == order[:3].tolist()
        assert top.harmful[j].tolist() == order[::-1][:3].tolist()
    np.testing.assert_allclose(top.helpful_scores, np.sort(ridge["closed"], axis=1)[:, ::-1][:, :3], rtol=1e-6)
    s = tp.self_influence(ridge["model"], (ridge["x"], ridge["y"]), loss="mse", method="cg",
                          damping=ridge["damping"], quiet=True)
    np.testing.assert_allclose(s.scores, ridge["self_closed"], rtol=1e-5, atol=1e-10)
    assert s.top(2).tolist() == np.argsort(-ridge["self_closed"])[:2].tolist()


def test_logistic_regression_against_leave_one_out_retraining():
    """L2 logistic regression, every refit by Newton's method to machine precision (warm start)."""
    x, y, xt, yt, c = logistic_problem()
    n, d = x.shape
    w = logistic_fit(x, y, c)
    model = logistic_model(w, d, c)
    refit = logistic_model(w, d, c)  # one model object, new weights per refit

    def fit(xx, yy):
        v = logistic_fit(xx, yy, c, w0=w, n_total=n)  # (1/N) sum_{k != i} l_k + c |w|^2
        refit.get_layer("logit").kernel.assign(v[:-1])
        refit.get_layer("logit").bias.assign(v[-1:, 0])
        return refit

    res = tp.leave_one_out_check(fit, (x, y), (xt, yt), np.arange(0, n, 2), loss="binary_crossentropy",
                                 from_logits=True, model=model, damping=0.0, quiet=True)
    print(f"\nlogistic regression: Spearman(predicted, actual leave-one-out) = {res.spearman:.4f}, "
          f"Pearson {res.pearson:.4f}")
    assert res.spearman >= 0.9
    assert res.predicted.shape == res.actual.shape == (n // 2,)
    slope = float(res.predicted @ res.actual / (res.predicted @ res.predicted))  # scale right, not only ranks
    assert 0.8 <= slope <= 1.25 and res.pearson >= 0.95


def test_self_influence_finds_flipped_digit_labels():
    model, x, labels, flipped = flipped_digits(n=200)
    s = tp.self_influence(model, (x, labels), loss="sparse_categorical_crossentropy", from_logits=True,
                          method="arnoldi", rank=20, damping=1e-3, quiet=True, batch_size=200)
    found = np.isin(flipped, s.top(len(x) // 10)).mean()
    print(f"\ndigits, 5% labels flipped: top 10% by self-influence hold {found:.0%} of the flipped examples")
    assert found >= 0.5


def test_errors(ridge):
    from tfpartials.influence._solvers import batched_cg

    data, test = (ridge["x"], ridge["y"]), (ridge["xt"], ridge["yt"])
    model = ridge["model"]
    with pytest.raises(ValueError, match="method: expected one of"):
        tp.influence(model, data, test, loss="mse", method="newton")
    with pytest.raises(ValueError, match="curvature: expected one of"):
        tp.influence(model, data, test, loss="mse", curvature="fisher")
    with pytest.raises(ValueError, match="damping: expected a finite number >= 0"):
        tp.influence(model, data, test, loss="mse", damping=-1.0)
    with pytest.raises(ValueError, match="projection_dim: expected a positive integer"):
        tp.influence(model, data, test, loss="mse", projection_dim=0)
    with pytest.raises(ValueError, match="rank: expected 1 <= rank < 9"):
        tp.influence(model, data, test, loss="mse", method="arnoldi", rank=9, quiet=True)
    with pytest.raises(ValueError, match="influence scores .* above the memory limit"):
        tp.influence(model, data, test, loss="mse", max_memory=100)
    with pytest.raises(ValueError, match="indices: expected values in"):
        tp.leave_one_out_check(lambda a, b: model, data, test, [0, 1, 99], loss="mse", model=model)
    with pytest.raises(ValueError, match="at least 3"):
        tp.leave_one_out_check(lambda a, b: model, data, test, [0, 1], loss="mse", model=model)
    with pytest.raises(TypeError, match="expected it to return a Keras model"):
        tp.leave_one_out_check(lambda a, b: None, data, test, [0, 1, 2], loss="mse")
    with pytest.raises(ValueError, match=r"scores: expected shape \(6, 40\)"):
        tp.leave_one_out_check(lambda a, b: model, data, test, [0, 1, 2], loss="mse", model=model,
                               scores=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="not positive definite"):
        batched_cg(lambda X: np.diag([1.0, -1.0]) @ X, np.array([[0.0], [1.0]]), 1e-8, 10)


def test_callable_module_and_doctests():
    import tfpartials.influence as module

    assert callable(module) and tp.influence is not None
    for name in ("tfpartials.influence.influence", "tfpartials.influence.loo"):
        mod = __import__(name, fromlist=["_"])
        assert doctest.testmod(mod, optionflags=doctest.ELLIPSIS).failed == 0
