"""Small float64 problems with closed forms for the influence tests (ridge, L2 logistic regression, digits)."""

from __future__ import annotations

import numpy as np


def _dense_model(d: int, c: float, out: int = 1, name: str = "lin"):
    import keras

    return keras.Sequential([keras.Input((d,), dtype="float64"),
                             keras.layers.Dense(out, name=name, dtype="float64",
                                                kernel_regularizer=keras.regularizers.L2(c))])


def _augment(x):
    return np.hstack([x, np.ones((x.shape[0], 1))])


def ridge_fit(x, y, c, n_total=None):
    """argmin (1/n_total) sum (x w + b - y)^2 + c |w|^2 in closed form (n_total defaults to len(x))."""
    n_total = len(x) if n_total is None else n_total
    A = _augment(x)
    D = np.diag([1.0] * x.shape[1] + [0.0])
    return np.linalg.solve(A.T @ A / n_total + c * D, A.T @ y / n_total)  # (d + 1, 1): kernel rows, then bias


def ridge_problem(n=40, n_test=6, d=8, c=0.05, seed=0):
    """(model at the exact ridge minimiser, x, y, x_test, y_test, c) in float64.

    Feature scales decay (3 ... 0.01), so the curvature has a few large eigenvalues, the regime in which the
    top-eigenspace (arnoldi) approximation is meant to work.
    """
    rng = np.random.default_rng(seed)
    scales = np.array([3.0, 2.0, 1.0, 0.5, 0.1, 0.05, 0.02, 0.01])[:d]
    x = rng.normal(size=(n + n_test, d)) * scales
    y = x @ rng.normal(size=(d, 1)) + 0.5 * rng.normal(size=(n + n_test, 1)) + 0.3
    model = _dense_model(d, c)
    theta = ridge_fit(x[:n], y[:n], c)
    model.get_layer("lin").kernel.assign(theta[:-1])
    model.get_layer("lin").bias.assign(theta[-1:, 0])
    return model, x[:n], y[:n], x[n:], y[n:], c


def logistic_fit(x, y, c, w0=None, n_total=None):
    """argmin (1/n_total) sum BCE(y, sigmoid(x w + b)) + c |w|^2 by Newton's method to machine precision."""
    n_total = len(x) if n_total is None else n_total
    A = _augment(x)
    D = np.diag([1.0] * x.shape[1] + [0.0])
    w = np.zeros((A.shape[1], 1)) if w0 is None else w0.copy()
    for _ in range(100):
        p = 1 / (1 + np.exp(-(A @ w)))
        g = A.T @ (p - y) / n_total + 2 * c * D @ w
        H = (A * (p * (1 - p))).T @ A / n_total + 2 * c * D
        step = np.linalg.solve(H, g)
        w -= step
        if np.abs(step).max() < 1e-13:
            break
    return w


def logistic_problem(n=80, n_test=10, d=4, c=0.01, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + n_test, d))
    logits = x @ np.array([[1.5], [-1.0], [0.5], [0.0]])[:d] + 0.2
    y = (rng.random((n + n_test, 1)) < 1 / (1 + np.exp(-logits))).astype(np.float64)
    return x[:n], y[:n], x[n:], y[n:], c


def logistic_model(w, d, c):
    model = _dense_model(d, c, name="logit")
    model.get_layer("logit").kernel.assign(w[:-1])
    model.get_layer("logit").bias.assign(w[-1:, 0])
    return model


def softmax_fit(x, labels, c, k=10, iters=300):
    """argmin (1/N) sum CE(label, softmax(x W + b)) + c |W|^2 by L-BFGS (scipy), float64."""
    from scipy.optimize import minimize

    n, d = x.shape
    Y = np.eye(k)[labels]

    def f(theta):
        W, b = theta[:d * k].reshape(d, k), theta[d * k:]
        z = x @ W + b
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        P = np.exp(logp)
        value = -np.sum(Y * logp) / n + c * np.sum(W * W)
        G = (P - Y) / n
        return value, np.concatenate([(x.T @ G + 2 * c * W).ravel(), G.sum(0)])

    res = minimize(f, np.zeros(d * k + k), jac=True, method="L-BFGS-B", options={"maxiter": iters, "gtol": 1e-8})
    return res.x[:d * k].reshape(d, k), res.x[d * k:]


def flipped_digits(n=400, frac=0.05, c=1e-3, seed=0):
    """(model, x, labels, flipped indices): softmax regression on sklearn's digits with ``frac`` labels flipped."""
    from sklearn.datasets import load_digits

    data = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.target))[:n]
    x = data.data[order] / 16.0
    labels = data.target[order].copy()
    flipped = rng.choice(n, size=int(round(frac * n)), replace=False)
    labels[flipped] = (labels[flipped] + rng.integers(1, 10, size=flipped.size)) % 10
    W, b = softmax_fit(x, labels, c)
    model = _dense_model(x.shape[1], c, out=10, name="logits")
    model.get_layer("logits").kernel.assign(W)
    model.get_layer("logits").bias.assign(b)
    return model, x, labels.astype(np.int64), np.sort(flipped)
