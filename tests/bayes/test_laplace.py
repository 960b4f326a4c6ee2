"""Laplace approximation against closed-form Bayesian linear regression, and on an over-confident classifier.

The references are written here in numpy, independently of the library: for ``y = Phi w + noise`` with
``Phi = [X, 1]``, prior ``w ~ N(0, D^{-1})`` and noise ``N(0, sigma^2)``, the posterior precision is
``A = D + Phi^T Phi / sigma^2``, the MAP ``A^{-1} Phi^T y / sigma^2``, the predictive ``N(phi^T w*, phi^T A^{-1} phi
+ sigma^2)`` and the evidence ``log N(y | 0, sigma^2 I + Phi D^{-1} Phi^T)`` (the Laplace evidence is exact here).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize

import tfpartials as tp
from tfpartials import InputError


def _linear_model(d: int, out: int = 1, bias: bool = True):
    import keras

    return keras.Sequential([keras.Input((d,), dtype="float64"),
                             keras.layers.Dense(out, use_bias=bias, dtype="float64", name="lin")])


def _blr(X, y, prior, sigma, bias=True):
    """MAP, posterior covariance and evidence of Bayesian linear regression (numpy, closed form)."""
    N = X.shape[0]
    Phi = np.hstack([X, np.ones((N, 1))]) if bias else X
    D = np.diag(np.broadcast_to(np.asarray(prior, float), (Phi.shape[1],)))
    A = D + Phi.T @ Phi / sigma**2
    w = np.linalg.solve(A, Phi.T @ y / sigma**2)
    K = sigma**2 * np.eye(N) + Phi @ np.linalg.solve(D, Phi.T)
    _, logdet = np.linalg.slogdet(K)
    evidence = -0.5 * (y.T @ np.linalg.solve(K, y)).item() - 0.5 * logdet - 0.5 * N * np.log(2 * np.pi)
    return w, np.linalg.inv(A), evidence


def _set_map(model, w, d, bias=True):
    model.set_weights([w[:d], w[d]] if bias else [w[:d]])


@pytest.fixture(scope="module")
def regression_data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    y = X @ np.array([[1.0], [-2.0], [0.5]]) + 0.7 + 0.3 * rng.normal(size=(40, 1))
    Xs = rng.normal(size=(6, 3))
    return X, y, Xs


def _check_blr(la, X, y, Xs, prior, sigma, bias=True):
    w, cov, evidence = _blr(X, y, prior, sigma, bias)
    Ps = np.hstack([Xs, np.ones((len(Xs), 1))]) if bias else Xs
    pred = la.predictive(Xs)
    np.testing.assert_allclose(pred.mean[:, 0], (Ps @ w)[:, 0], rtol=1e-8)
    np.testing.assert_allclose(pred.variance[:, 0], np.einsum("bi,ij,bj->b", Ps, cov, Ps) + sigma**2, rtol=1e-8)
    np.testing.assert_allclose(la.log_marginal_likelihood(), evidence, rtol=1e-8)
    np.testing.assert_allclose(np.concatenate([v.reshape(-1) for v in la.posterior_variance.values()]),
                               np.diag(cov), rtol=1e-8)


def test_full_equals_bayesian_linear_regression(regression_data):
    X, y, Xs = regression_data
    prior, sigma = 2.0, 0.5
    w, _, _ = _blr(X, y, prior, sigma)
    model = _linear_model(3)
    _set_map(model, w, 3)
    la = tp.Laplace(model, (X, y), likelihood="regression", structure="full", prior_precision=prior,
                    sigma_noise=sigma)
    _check_blr(la, X, y, Xs, prior, sigma)


def test_full_hessian_with_per_parameter_prior(regression_data):
    X, y, Xs = regression_data
    prior, sigma = np.array([0.5, 2.0, 3.0, 0.1]), 0.8
    w, _, _ = _blr(X, y, prior, sigma)
    model = _linear_model(3)
    _set_map(model, w, 3)
    la = tp.Laplace(model, (X, y), likelihood="regression", structure="full", prior_precision=prior,
                    sigma_noise=sigma, curvature="hessian")   # the Hessian equals the GGN for a linear model
    _check_blr(la, X, y, Xs, prior, sigma)
    # a per-variable dict: the Laplace evidence at weights that are not this prior's MAP, in numpy
    la.prior_precision = {"lin/kernel": 1.0, "lin/bias": 0.1}
    D = np.array([1.0, 1.0, 1.0, 0.1])
    np.testing.assert_array_equal(la.prior_precision, D)
    Phi = np.hstack([X, np.ones((len(X), 1))])
    r = y[:, 0] - Phi @ w[:, 0]
    loglik = -0.5 * r @ r / sigma**2 - len(X) * np.log(sigma * np.sqrt(2 * np.pi))
    _, logdet = np.linalg.slogdet(np.diag(D) + Phi.T @ Phi / sigma**2)
    ref = loglik - 0.5 * (w[:, 0] @ (D * w[:, 0]) + logdet - np.sum(np.log(D)))
    np.testing.assert_allclose(la.log_marginal_likelihood(), ref, rtol=1e-10)

def test_diag_exact_for_orthogonal_features():
    rng = np.random.default_rng(1)
    N = 30
    Q, _ = np.linalg.qr(np.hstack([np.ones((N, 1)), rng.normal(size=(N, 3))]))
    X = Q[:, 1:] * np.array([3.0, 1.5, 0.7])            # columns orthogonal to each other and to the ones
    y = X @ np.array([[0.4], [-1.0], [2.0]]) + 0.3 + 0.2 * rng.normal(size=(N, 1))
    prior, sigma = 1.5, 0.4
    w, _, _ = _blr(X, y, prior, sigma)
    model = _linear_model(3)
    _set_map(model, w, 3)
    la = tp.Laplace(model, (X, y), likelihood="regression", structure="diag", prior_precision=prior,
                    sigma_noise=sigma)
    _check_blr(la, X, y, rng.normal(size=(5, 3)), prior, sigma)


def test_lowrank_exact_when_rank_covers_the_curvature():
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(2, 5)), rng.normal(size=(2, 1))   # Phi^T Phi has rank 2 <= k
    prior, sigma = 0.7, 0.3
    w, _, _ = _blr(X, y, prior, sigma, bias=False)
    model = _linear_model(5, bias=False)
    _set_map(model, w, 5, bias=False)
    la = tp.Laplace(model, (X, y), likelihood="regression", structure="lowrank", rank=3, prior_precision=prior,
                    sigma_noise=sigma)
    _check_blr(la, X, y, rng.normal(size=(4, 5)), prior, sigma, bias=False)


def test_kfac_exact_for_one_dense_output(regression_data):
    X, y, Xs = regression_data
    prior, sigma = 2.0, 0.5
    w, _, _ = _blr(X, y, prior, sigma)
    model = _linear_model(3)
    _set_map(model, w, 3)
    la = tp.Laplace(model, (X, y), likelihood="regression", structure="kfac", prior_precision=prior,
                    sigma_noise=sigma)
    _check_blr(la, X, y, Xs, prior, sigma)


def test_marglik_finds_the_evidence_maximiser(regression_data):
    X, y, _ = regression_data
    sigma, prior0 = 0.5, 2.0
    w, _, _ = _blr(X, y, prior0, sigma)
    model = _linear_model(3)
    _set_map(model, w, 3)
    la = tp.Laplace(model, (X, y), likelihood="regression", structure="full", prior_precision=prior0,
                    sigma_noise=sigma)
    # weights held at the MAP: d/dalpha of -1/2 (alpha |w|^2 + log det(alpha I + H) - P log alpha) = 0
    Phi = np.hstack([X, np.ones((len(X), 1))])
    h = np.linalg.eigvalsh(Phi.T @ Phi / sigma**2)
    P, ww = h.size, float(np.sum(w**2))
    alpha = optimize.brentq(lambda a: -ww - np.sum(1.0 / (a + h)) + P / a, 1e-6, 1e6, xtol=1e-14)
    found = la.optimize_prior_precision("marglik")
    assert isinstance(found, float)
    assert abs(found - alpha) / alpha < 1e-4
    assert la.prior_precision == found


def test_marglik_per_layer_and_sigma(regression_data):
    X, y, _ = regression_data
    model = _linear_model(3)
    w, _, _ = _blr(X, y, 1.0, 0.5)
    _set_map(model, w, 3)
    la = tp.Laplace(model, (X, y), likelihood="regression", structure="diag", prior_precision=[1.0],
                    sigma_noise=1.0)
    before = la.log_marginal_likelihood()
    la.optimize_prior_precision("marglik", optimize_sigma=True)
    assert la.log_marginal_likelihood() > before
    # at the optimum the evidence is stationary in sigma (central difference, independent of the optimiser)
    s, e = la.sigma_noise, 1e-4
    g = (la.log_marginal_likelihood(sigma_noise=s * (1 + e)) - la.log_marginal_likelihood(sigma_noise=s * (1 - e)))
    assert abs(g / (2 * e)) < 1e-3


def test_sample_matches_the_posterior_covariance(regression_data):
    X, y, _ = regression_data
    prior, sigma = 2.0, 0.5
    w, cov, _ = _blr(X, y, prior, sigma)
    model = _linear_model(3)
    _set_map(model, w, 3)
    la = tp.Laplace(model, (X, y), likelihood="regression", structure="full", prior_precision=prior,
                    sigma_noise=sigma)
    s = la.sample(20000, seed=3)
    assert s["lin/kernel"].shape == (20000, 3, 1) and s["lin/bias"].shape == (20000, 1)
    draws = np.hstack([s["lin/kernel"][:, :, 0], s["lin/bias"]])
    np.testing.assert_allclose(draws.mean(0), w[:, 0], atol=4 * np.sqrt(np.diag(cov) / 20000).max())
    np.testing.assert_allclose(np.cov(draws.T), cov, rtol=0.05, atol=0.05 * np.abs(cov).max())
    np.testing.assert_array_equal(la.sample(5, seed=1)["lin/bias"], la.sample(5, seed=1)["lin/bias"])


# ------------------------------------------------------------------------------ over-confident classifier
@pytest.fixture(scope="module")
def overconfident():
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [1.5, 0.0], [0.75, 1.3]])

    def draw(n):
        labels = rng.integers(0, 3, n)
        return (centers[labels] + 0.6 * rng.normal(size=(n, 2))).astype("float32"), labels.astype("int32")

    x, y = draw(30)
    xt, yt = draw(600)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(32, activation="tanh", name="h1"),
                              keras.layers.Dense(32, activation="tanh", name="h2"),
                              keras.layers.Dense(3, name="out")])
    opt = keras.optimizers.Adam(0.01)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    opt.build(model.trainable_variables)

    @tf.function
    def train(steps):   # 600 full-batch Adam steps in one compiled loop
        for _ in tf.range(steps):
            with tf.GradientTape() as tape:
                value = loss(y, model(x, training=True))
            opt.apply(tape.gradient(value, model.trainable_variables), model.trainable_variables)

    train(tf.constant(600))
    model.compile(loss=loss)   # carries its loss, as a loaded model would
    return model, x, y, xt, yt


def test_last_layer_laplace_calibrates_an_overconfident_mlp(overconfident):
    model, x, y, xt, yt = overconfident
    la = tp.Laplace(model, (x, y), likelihood="classification", subset="last_layer", structure="full")
    assert la.space.names == ["out/kernel", "out/bias"]
    la.optimize_prior_precision("marglik")
    map_cal = tp.calibration(la.predict_map(xt), yt)
    la_cal = tp.calibration(la.predictive(xt, link="probit").probs, yt)
    assert map_cal.accuracy < 1.0 and map_cal.nll > 0.3          # the MAP really is over-confident
    assert la_cal.nll < map_cal.nll and la_cal.ece < map_cal.ece
    assert abs(la_cal.accuracy - map_cal.accuracy) <= 0.01
    # Monte Carlo over the linearised logits agrees with the probit approximation to about 0.1
    mc = la.predictive(xt[:50], link="mc", n_samples=2000, seed=0).probs
    np.testing.assert_allclose(mc.sum(1), 1.0, rtol=1e-12)
    assert np.max(np.abs(mc - la.predictive(xt[:50]).probs)) < 0.1
    # the summed GGN from per-example Jacobians equals N times the mean-loss GGNOperator's products (3 random
    # directions), and the exact diagonal of the diag structure equals the dense matrix's diagonal
    V = np.random.default_rng(1).normal(size=(la.n_params, 3))
    GV = len(x) * tp.GGNOperator(model, (x, y), loss=model.loss, wrt=["out"]).matmat(V.astype("float32")).numpy()
    np.testing.assert_allclose(la._posterior.H1 @ V, GV, rtol=1e-3, atol=1e-3 * np.abs(GV).max())
    dg = tp.Laplace(model, (x, y), likelihood="classification", subset="last_layer", structure="diag",
                    prior_precision=la.prior_precision)
    np.testing.assert_allclose(dg._posterior.h, np.diag(la._posterior.H1), rtol=1e-5, atol=1e-7)

def test_gridsearch_picks_the_best_validation_nll(overconfident):
    model, x, y, xt, yt = overconfident
    la = tp.Laplace(model, (x, y), likelihood="classification", subset="out", structure="diag")
    grid = [0.01, 1.0, 100.0]
    best = la.optimize_prior_precision("gridsearch", val_data=(xt[:200], yt[:200]), grid=grid)
    nlls = []
    for g in grid:
        la.prior_precision = g
        nlls.append(tp.calibration(la.predictive(xt[:200]).probs, yt[:200]).nll)
    assert best == grid[int(np.argmin(nlls))]


# ------------------------------------------------------------------------------------------ bad input
def test_errors(regression_data, overconfident):
    X, y, Xs = regression_data
    model = _linear_model(3)
    with pytest.raises(InputError, match="likelihood: expected one of"):
        tp.Laplace(model, (X, y), likelihood="poisson")
    with pytest.raises(InputError, match="needs loss 'mse'"):
        tp.Laplace(model, (X, y), likelihood="regression", loss="mae")
    with pytest.raises(InputError, match="structure: expected one of"):
        tp.Laplace(model, (X, y), likelihood="regression", structure="block")
    with pytest.raises(InputError, match="prior_precision: expected a scalar, 1 per-layer values or 4"):
        tp.Laplace(model, (X, y), likelihood="regression", prior_precision=[1.0, 2.0])
    with pytest.raises(InputError, match="expected finite values > 0"):
        tp.Laplace(model, (X, y), likelihood="regression", prior_precision=-1.0)
    with pytest.raises(InputError, match="unknown layer or variable 'nope'"):
        tp.Laplace(model, (X, y), likelihood="regression", prior_precision={"nope": 1.0})
    with pytest.raises(tp.ResourceError, match=r"structure='full'.*above the memory limit.*subset='last_layer'"):
        tp.Laplace(model, (X, y), likelihood="regression", max_memory=100)
    la = tp.Laplace(model, (X, y), likelihood="regression", structure="lowrank", rank=2)
    with pytest.raises(InputError, match="lowrank' needs a scalar prior"):
        la.log_marginal_likelihood(prior_precision=[1.0, 2.0, 3.0, 4.0])
    la.prior_precision = [1.0]   # one value per layer
    with pytest.raises(InputError, match="lowrank' needs a scalar prior precision; set one first"):
        la.optimize_prior_precision("marglik")
    with pytest.raises(InputError, match="regression uses the Gaussian GLM predictive"):
        la.predictive(Xs, link="probit")
    with pytest.raises(InputError, match="needs val_data"):
        la.optimize_prior_precision("gridsearch")
    mlp, x, yc, _, _ = overconfident
    with pytest.raises(InputError, match="needs a cross-entropy loss"):
        tp.Laplace(mlp, (x, np.eye(3, dtype="float32")[yc]), likelihood="classification", loss="mse")
    with pytest.raises(InputError, match="from_logits=True"), pytest.warns(UserWarning, match="logits"):
        tp.Laplace(mlp, (x, yc), likelihood="classification", from_logits=False, subset="last_layer")
    with pytest.raises(InputError, match="optimize_sigma"):
        tp.Laplace(mlp, (x, yc), subset="last_layer", structure="diag").optimize_prior_precision(optimize_sigma=True)


def test_kfac_posterior_algebra_equals_the_dense_kronecker_blocks(overconfident):
    """Eigenbasis algebra (log det, marginal variances, functional covariance) against the dense matrix
    ``N * blockdiag(kron(A_l, B_l))`` assembled in numpy from the operator's factors."""
    from tfpartials.linalg.kfac import KFACOperator

    model, x, y, xt, _ = overconfident
    prior = {"h1": 0.5, "h2": 2.0, "out": 1.0}
    la = tp.Laplace(model, (x, y), likelihood="classification", structure="kfac", prior_precision=prior)
    op = KFACOperator(model, (x, y), loss=model.loss, quiet=True)
    P = la.n_params
    H = np.zeros((P, P))
    for blk in op.blocks:
        H[np.ix_(blk.indices, blk.indices)] = len(x) * np.kron(blk.A, blk.B)
    D = np.concatenate([np.full(v.size, prior[n.split("/")[0]]) for n, v in la.mean.items()])
    _, logdet = np.linalg.slogdet(H + np.diag(D))
    theta = la.theta
    ref = la.log_likelihood() - 0.5 * (theta @ (D * theta) + logdet - np.sum(np.log(D)))
    np.testing.assert_allclose(la.log_marginal_likelihood(), ref, rtol=1e-8)
    cov = np.linalg.inv(H + np.diag(D))
    np.testing.assert_allclose(np.concatenate([v.reshape(-1) for v in la.posterior_variance.values()]),
                               np.diag(cov), rtol=1e-6)
    J = np.random.default_rng(0).normal(size=(4, 3, P))
    np.testing.assert_allclose(la._posterior.functional_covariance(J, 1.0, la._prior),
                               np.einsum("bcp,pq,bdq->bcd", J, cov, J), rtol=1e-6)


def test_float32_full_ggn_posterior_stays_positive_definite_at_tiny_priors():
    """A GGN is PSD; float32 round-off must not make the posterior precision indefinite at a small prior."""
    from tfpartials.bayes._posterior import DensePosterior

    rng = np.random.default_rng(0)
    J = rng.normal(size=(40, 6)).astype(np.float32)
    H = (J.T @ J).astype(np.float32)
    vals, vecs = np.linalg.eigh(H.astype(np.float64))
    vals[0] = -1e-5 * vals[-1]                               # round-off: a null direction comes out slightly < 0
    H = ((vecs * vals) @ vecs.T).astype(np.float32)
    assert np.linalg.eigvalsh(0.5 * (H + H.T).astype(np.float64)).min() < -1e-6  # indefinite as given
    post = DensePosterior(H, psd=True)
    assert np.linalg.eigvalsh(post.H1).min() >= -1e-12
    prior = np.full(6, 1e-6)
    logdet = post.logdet(1.0, prior)
    assert np.isfinite(logdet)
    np.testing.assert_allclose(logdet, np.linalg.slogdet(post.H1 + np.diag(prior))[1], rtol=1e-8)


def test_glm_jacobians_follow_the_vectorisation_rule_and_agree():
    """Per-example output Jacobians: pfor for built-in layers, the exact loop for a custom one; same numbers."""
    import keras
    import tensorflow as tf

    from tfpartials.autodiff.problem import objective_for
    from tfpartials.bayes import _glm

    class Scale(keras.layers.Layer):
        def call(self, t):
            return 2.0 * t

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(5, 3))
    builtin = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="tanh", name="d")])
    custom = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="tanh", name="d"), Scale()])
    custom.set_weights(builtin.get_weights())
    for model, factor in ((builtin, 1.0), (custom, 2.0)):
        obj = objective_for(model, "mse", precision="float64")
        _, J = _glm.jacobian_function(obj, 2)(obj.space.values(), tf.constant(x))
        W = model.get_layer("d").kernel.numpy().astype(np.float64)
        b = model.get_layer("d").bias.numpy().astype(np.float64)
        d = 1 - np.tanh(x @ W + b) ** 2                                   # (5, 2)
        for i in range(5):
            for c in range(2):
                dk = np.zeros((3, 2))
                dk[:, c] = x[i] * d[i, c]
                db = np.zeros(2)
                db[c] = d[i, c]
                np.testing.assert_allclose(J.numpy()[i, c], factor * np.concatenate([dk.ravel(), db]), rtol=1e-10)
