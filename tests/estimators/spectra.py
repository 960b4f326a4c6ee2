"""Dense symmetric test matrices with known spectra (a seeded random orthogonal basis, eigenvalues chosen)."""

from __future__ import annotations

import numpy as np

N = 120


def spectrum(kind: str, n: int = N) -> np.ndarray:
    i = np.arange(n, dtype=np.float64)
    if kind == "fast":  # geometric decay: a low-rank-dominated PSD matrix (Hutch++'s good case)
        return 10.0 * 0.7 ** i
    if kind == "slow":  # power-law decay
        return 5.0 / np.sqrt(i + 1.0)
    if kind == "flat":  # evenly spread, no decay
        return np.linspace(2.0, 1.0, n)
    if kind == "indefinite":  # both signs, like the Hessian of a non-convex loss
        return np.concatenate([[7.0, 4.5, 3.0], np.linspace(1.0, -1.0, n - 5), [-2.5, -5.0]])
    raise ValueError(kind)


def matrix(kind: str, n: int = N, seed: int = 123) -> tuple[np.ndarray, np.ndarray]:
    """(A, eigenvalues) with A = Q diag(lam) Q^T, Q Haar-random from ``seed``."""
    lam = spectrum(kind, n)
    Q, R = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    Q = Q * np.sign(np.diag(R))
    A = (Q * lam) @ Q.T
    return (A + A.T) / 2, lam


KINDS = ["fast", "slow", "flat", "indefinite"]


def scce_logits(y_true, logits):
    """Mean sparse softmax cross-entropy from logits, written with log_softmax so that nested tapes can take
    its second derivative (TensorFlow's fused sparse cross-entropy op has no second derivative)."""
    import tensorflow as tf

    logp = tf.nn.log_softmax(logits)
    picked = tf.gather(logp, tf.reshape(tf.cast(y_true, tf.int32), [-1]), axis=1, batch_dims=1)
    return -tf.reduce_mean(picked)


def dense_hessian(model, x, y, loss_fn=scce_logits) -> np.ndarray:
    """Dense float64 loss Hessian by reverse-over-reverse nested tapes on a float64 clone, symmetrised.

    The tapes watch the clone's underlying ``tf.Variable`` objects (``v.value``): TensorFlow cannot make the
    zero gradient of an unconnected Keras 3 variable (whose dtype is a string). The gradient entries are sliced
    inside the outer tape; slicing after it would disconnect them (and give an all-zero "Hessian").
    """
    import tensorflow as tf

    from tests.references import float64_clone

    clone = float64_clone(model)
    tv = [v.value for v in clone.trainable_variables]
    xs = tf.constant(np.asarray(x, np.float64))
    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape() as inner:
            loss = loss_fn(y, clone(xs, training=False))
        flat = tf.concat([tf.reshape(g, [-1]) for g in inner.gradient(loss, tv)], 0)
        entries = tf.unstack(flat)  # sliced while the outer tape records, so each entry stays connected
    rows = [tf.concat([tf.reshape(g, [-1]) for g in outer.gradient(e, tv, unconnected_gradients="zero")], 0)
            for e in entries]
    H = tf.stack(rows).numpy()
    return (H + H.T) / 2
