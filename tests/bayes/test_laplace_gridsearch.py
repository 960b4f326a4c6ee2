"""Grid search of the prior precision against an independent numpy reference (multinomial logistic regression).

For one Dense layer ``f = W^T x + b`` the output Jacobian is ``J = I_C (x) a^T`` with ``a = [x, 1]``, the GGN of
the summed cross-entropy is ``sum_i kron(a_i a_i^T, Lam_i)`` with ``Lam_i = diag(p_i) - p_i p_i^T`` (in the flat
order kernel ``(d, c)`` row-major, then bias), and the probit predictive is
``softmax(f / sqrt(1 + pi/8 diag(J Sigma J^T)))``: all written here in numpy, float64.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfpartials as tp


def _softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def logistic():
    rng = np.random.default_rng(3)
    d, C, n = 4, 3, 80
    X = rng.normal(size=(2 * n, d))
    W_true = rng.normal(size=(d, C))
    y = (X @ W_true + rng.gumbel(size=(2 * n, C))).argmax(1)
    model = keras.Sequential([keras.Input((d,), dtype="float64"), keras.layers.Dense(C, dtype="float64", name="out")])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    W, b = 4.0 * W_true, rng.normal(size=C) * 0.1     # over-confident weights: a tempered rule
    model.set_weights([W, b])
    return model, X[:n], y[:n], X[n:], y[n:], W, b


def _reference_probit(Xtr, ytr, Xq, W, b, delta):
    A, Aq = np.c_[Xtr, np.ones(len(Xtr))], np.c_[Xq, np.ones(len(Xq))]
    Wa = np.r_[W, b[None]]
    D1, C = Wa.shape
    p = _softmax(A @ Wa)
    Lam = np.einsum("bc,cd->bcd", p, np.eye(C)) - np.einsum("bc,bd->bcd", p, p)
    H = np.einsum("bd,be,bcf->dcef", A, A, Lam).reshape(D1 * C, D1 * C)
    S = np.linalg.inv(H + delta * np.eye(D1 * C)).reshape(D1, C, D1, C)
    fvar = np.einsum("bd,dcec,be->bc", Aq, S, Aq)
    return _softmax((Aq @ Wa) / np.sqrt(1.0 + np.pi / 8.0 * fvar))


def test_gridsearch_uses_the_probit_predictive_and_picks_the_reference_minimiser(logistic):
    model, X, y, Xv, yv, W, b = logistic
    grid = np.logspace(-2, 3, 26)
    ref = [-np.mean(np.log(_reference_probit(X, y, Xv, W, b, g)[np.arange(len(yv)), yv])) for g in grid]
    i = int(np.argmin(ref))
    assert 0 < i < grid.size - 1, "the reference minimiser should be inside the grid for this test to bite"
    la = tp.Laplace(model, (X, y), likelihood="classification", structure="full")
    best = la.optimize_prior_precision("gridsearch", val_data=(Xv, yv), grid=grid)
    assert best == grid[i]
    # and the predictive at the chosen prior is the reference probit predictive
    np.testing.assert_allclose(la.predictive(Xv).probs, _reference_probit(X, y, Xv, W, b, best), rtol=1e-8,
                               atol=1e-12)
    # link='mc' stays available and is scored with Monte Carlo draws (seeded), a different predictive
    la_mc = tp.Laplace(model, (X, y), likelihood="classification", structure="full")
    la_mc.optimize_prior_precision("gridsearch", val_data=(Xv, yv), grid=grid, link="mc", n_samples=20)
    assert la_mc.prior_precision in grid


# ------------------------------------------------------- last layer of a small CNN: KFAC and full vs numpy
def _last_layer_reference(A, y, Wa, H, delta, Aq):
    """Evidence and probit predictive of N(theta*, (H + delta I)^-1) over the read-out [kernel; bias]."""
    D1, C = Wa.shape
    theta = Wa.reshape(-1)
    p = _softmax(A @ Wa)
    nll = -np.sum(np.log(p[np.arange(len(y)), y]))
    lml = -nll - 0.5 * (delta * theta @ theta + np.linalg.slogdet(H + delta * np.eye(theta.size))[1]
                        - theta.size * np.log(delta))
    S = np.linalg.inv(H + delta * np.eye(theta.size)).reshape(D1, C, D1, C)
    fvar = np.einsum("bd,dcec,be->bc", Aq, S, Aq)
    return lml, _softmax((Aq @ Wa) / np.sqrt(1.0 + np.pi / 8.0 * fvar))


def test_last_layer_kfac_and_full_on_a_cnn_match_numpy():
    rng = np.random.default_rng(5)
    x = rng.uniform(size=(48, 5, 5, 1))
    y = rng.integers(0, 3, size=48)
    model = keras.Sequential([keras.Input((5, 5, 1), dtype="float64"),
                              keras.layers.Conv2D(2, 3, activation="tanh", dtype="float64", name="conv"),
                              keras.layers.Flatten(dtype="float64", name="flat"),
                              keras.layers.Dense(3, dtype="float64", name="out")])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    w = model.get_weights()
    model.set_weights([rng.normal(size=v.shape) for v in w])
    feat = keras.Model(model.inputs, model.get_layer("flat").output)
    W, b = (np.asarray(v) for v in model.get_layer("out").get_weights())
    Wa = np.r_[W, b[None]]
    A = np.c_[np.asarray(feat(x)), np.ones(len(x))]
    Aq = A[:10]
    p = _softmax(A @ Wa)
    C, N = 3, len(x)
    Lam = np.einsum("bc,cd->bcd", p, np.eye(C)) - np.einsum("bc,bd->bcd", p, p)
    H_full = np.einsum("bd,be,bcf->dcef", A, A, Lam).reshape(Wa.size, Wa.size)   # exact last-layer GGN
    H_kfac = N * np.kron(A.T @ A / N, Lam.mean(0))                                # its Kronecker factorisation
    for structure, H in (("full", H_full), ("kfac", H_kfac)):
        la = tp.Laplace(model, (x, y), likelihood="classification", subset="last_layer", structure=structure)
        for delta in (0.5, 10.0):
            lml, probs = _last_layer_reference(A, y, Wa, H, delta, Aq)
            la.prior_precision = delta
            np.testing.assert_allclose(la.log_marginal_likelihood(), lml, rtol=1e-10)
            np.testing.assert_allclose(la.predictive(x[:10]).probs, probs, rtol=1e-8, atol=1e-12)
        grid = np.logspace(-3, 3, 601)
        best = grid[int(np.argmax([_last_layer_reference(A, y, Wa, H, g, Aq[:1])[0] for g in grid]))]
        assert abs(np.log(la.optimize_prior_precision("marglik")) - np.log(best)) <= np.log(grid[1] / grid[0])
