"""Brute-force oracles, independent of the library: numpy closed forms, float64 central differences on
numpy copies of the weights, and nested GradientTapes written out by hand.

Nothing here imports tfpartials.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def per_example_loss_np(loss: str, y, pred):
    """Numpy reference per-example losses (mean over trailing axes)."""
    pred = np.asarray(pred, np.float64)
    if loss == "mse":
        y = np.asarray(y, np.float64).reshape(pred.shape)
        return np.mean((pred - y) ** 2, axis=tuple(range(1, pred.ndim)))
    if loss == "sparse_categorical_crossentropy_logits":
        z = pred - pred.max(axis=-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        return -logp[np.arange(len(y)), np.asarray(y).reshape(-1)]
    raise ValueError(loss)


def float64_clone(model):
    """float64 copy built by hand from the config (independent of tfpartials.float64_copy)."""
    cfg = model.get_config()

    def fix(o):
        if isinstance(o, dict):
            return {k: ("float64" if k == "dtype" and not (isinstance(v, str) and v.startswith("int")) else fix(v))
                    for k, v in o.items()}
        if isinstance(o, list):
            return [fix(v) for v in o]
        return o

    clone = type(model).from_config(fix(cfg))
    for s, d in zip(model.weights, clone.weights):
        d.assign(np.asarray(s.numpy(), dtype=np.float64 if "float" in str(d.dtype) else s.numpy().dtype))
    return clone


def dataset_loss_fn(model, x, y, loss: str):
    """f(theta_list) -> float64 dataset mean loss, evaluated by assigning weights to a float64 clone."""
    clone = float64_clone(model)
    tv = clone.trainable_variables

    def f(values):
        for v, val in zip(tv, values):
            v.assign(val)
        pred = clone(np.asarray(x, np.float64) if np.issubdtype(np.asarray(x).dtype, np.floating) else x,
                     training=False).numpy()
        return float(np.mean(per_example_loss_np(loss, y, pred)))

    return f, [v.numpy().astype(np.float64) for v in tv]


def central_difference_gradient(model, x, y, loss: str, eps: float = 1e-6):
    """Dense float64 central-difference gradient over all trainable variables, as a flat vector."""
    f, theta = dataset_loss_fn(model, x, y, loss)
    flat = np.concatenate([t.ravel() for t in theta])
    shapes = [t.shape for t in theta]
    sizes = [t.size for t in theta]

    def unflat(v):
        out, o = [], 0
        for s, k in zip(shapes, sizes):
            out.append(v[o:o + k].reshape(s))
            o += k
        return out

    g = np.zeros_like(flat)
    for i in range(flat.size):
        e = np.zeros_like(flat)
        e[i] = eps
        g[i] = (f(unflat(flat + e)) - f(unflat(flat - e))) / (2 * eps)
    f(unflat(flat))
    return g


def nested_tape_hessian(model, x, y, loss_fn, dtype=tf.float64):
    """Dense Hessian by reverse-over-reverse nested tapes on a float64 clone, flat (n, n).

    The weights are plain tensors fed through ``stateless_call`` so both tapes see them directly; the
    gradient is flattened inside the outer tape so each row is connected.
    """
    clone = float64_clone(model) if dtype == tf.float64 else model
    tv = [tf.convert_to_tensor(v.value) for v in clone.trainable_variables]
    ntv = [tf.convert_to_tensor(v.value) for v in clone.non_trainable_variables]
    xs = tf.constant(x, dtype) if np.issubdtype(np.asarray(x).dtype, np.floating) else tf.constant(x)
    with tf.GradientTape(persistent=True) as outer:
        outer.watch(tv)
        with tf.GradientTape() as inner:
            inner.watch(tv)
            pred, _ = clone.stateless_call(tv, ntv, xs, training=False)
            loss = loss_fn(y, pred)
        grads = inner.gradient(loss, tv)
        flat = tf.concat([tf.reshape(g, [-1]) for g in grads], 0)
        entries = [flat[i] for i in range(int(flat.shape[0]))]
    rows = []
    for e in entries:
        gi = outer.gradient(e, tv, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        rows.append(tf.concat([tf.reshape(g, [-1]) for g in gi], 0))
    return tf.stack(rows).numpy()


def keras_mean_loss(name: str, from_logits: bool = False):
    """A plain batch-mean Keras loss function (y_true, y_pred) -> scalar, for nested-tape references."""
    if name == "mse":
        return lambda yt, yp: tf.reduce_mean(tf.square(yp - tf.cast(yt, yp.dtype)))
    if name == "scce":
        if from_logits:  # the log_softmax form: TF's fused sparse cross-entropy has no second derivative
            return lambda yt, yp: -tf.reduce_mean(tf.gather(tf.nn.log_softmax(yp), tf.cast(
                tf.reshape(yt, [-1]), tf.int32), batch_dims=1))
        return lambda yt, yp: tf.reduce_mean(
            keras.losses.sparse_categorical_crossentropy(yt, yp, from_logits=False))
    raise ValueError(name)


def per_example_gradients_loop(model, x, y, loss_fn):
    """Flat float64 per-example gradients (N, n) of ``loss_fn(y_i, f(x_i)) + sum(model.losses)``.

    One GradientTape per example on a float64 clone (no vectorisation), variables in
    ``model.trainable_variables`` order.
    """
    clone = float64_clone(model)
    tv = clone.trainable_variables
    floating = np.issubdtype(np.asarray(x).dtype, np.floating)
    rows = []
    for i in range(len(x)):
        xi = tf.constant(np.asarray(x[i:i + 1], np.float64)) if floating else tf.constant(x[i:i + 1])
        with tf.GradientTape() as tape:
            pred = clone(xi, training=False)
            loss = loss_fn(y[i:i + 1], pred)
            for extra in clone.losses:
                loss = loss + tf.cast(extra, tf.float64)
        grads = tape.gradient(loss, tv, unconnected_gradients="zero")
        rows.append(np.concatenate([tf.convert_to_tensor(g).numpy().ravel() for g in grads]))
    return np.stack(rows)


def jacobi_singular_values(a):
    """Singular values of ``a`` (ascending) by one-sided Jacobi (Hestenes) rotations in float64.

    Unlike forming ``a.T @ a`` (or LAPACK's bidiagonal route), one-sided Jacobi keeps high *relative* accuracy
    for matrices whose columns are badly scaled but otherwise well conditioned (Demmel & Veselic, "Jacobi's
    method is more accurate than QR", SIAM J. Matrix Anal. Appl. 13, 1992).
    """
    u = np.array(a, dtype=np.float64, copy=True)
    n = u.shape[1]
    for _ in range(100):
        off = 0.0
        for p in range(n - 1):
            for q in range(p + 1, n):
                alpha, beta, gamma = u[:, p] @ u[:, p], u[:, q] @ u[:, q], u[:, p] @ u[:, q]
                if gamma == 0 or abs(gamma) <= 1e-17 * np.sqrt(alpha * beta):
                    continue
                off = max(off, abs(gamma) / np.sqrt(alpha * beta))
                zeta = (beta - alpha) / (2 * gamma)
                t = (1.0 if zeta >= 0 else -1.0) / (abs(zeta) + np.sqrt(1 + zeta * zeta))
                c = 1 / np.sqrt(1 + t * t)
                s = c * t
                up = u[:, p].copy()
                u[:, p] = c * up - s * u[:, q]
                u[:, q] = s * up + c * u[:, q]
        if off <= 1e-16:
            break
    return np.sort(np.linalg.norm(u, axis=0))


def spd_eigenvalues(h):
    """Eigenvalues (ascending) of a symmetric positive definite matrix with high relative accuracy:
    Cholesky ``h = L L^T`` then one-sided Jacobi on ``L^T`` (eigenvalues are its squared singular values).
    Raises ``numpy.linalg.LinAlgError`` if ``h`` is not positive definite.
    """
    lower = np.linalg.cholesky(np.asarray(h, np.float64))
    return jacobi_singular_values(lower.T) ** 2


def nested_tape_hvp(model, x, y, loss_fn, v, dtype=tf.float64):
    """Hessian-vector product H v by reverse-over-reverse nested tapes (the gradient of g . v), flat (n,)."""
    clone = float64_clone(model) if dtype == tf.float64 else model
    tv = clone.trainable_variables
    xs = tf.constant(x, dtype) if np.issubdtype(np.asarray(x).dtype, np.floating) else tf.constant(x)
    parts, start = [], 0
    for var in tv:
        size = int(np.prod(var.shape))
        parts.append(tf.constant(np.reshape(np.asarray(v, np.float64)[start:start + size], var.shape), dtype))
        start += size
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            loss = loss_fn(y, clone(xs, training=False))
        grads = inner.gradient(loss, tv)
        dot = tf.add_n([tf.reduce_sum(tf.convert_to_tensor(g) * p) for g, p in zip(grads, parts)])
    hv = outer.gradient(dot, tv)
    return np.concatenate([np.zeros(int(np.prod(var.shape))) if h is None else tf.convert_to_tensor(h).numpy().ravel()
                           for h, var in zip(hv, tv)])


def output_jacobians_loop(model, x):
    """Per-example Jacobians of the (flattened) outputs w.r.t. all trainable variables, float64, (N, C, n).

    One GradientTape gradient per example and output unit on a float64 clone (no vectorisation).
    """
    clone = float64_clone(model)
    tv = clone.trainable_variables
    floating = np.issubdtype(np.asarray(x).dtype, np.floating)
    out = []
    for i in range(len(x)):
        xi = tf.constant(np.asarray(x[i:i + 1], np.float64)) if floating else tf.constant(x[i:i + 1])
        with tf.GradientTape(persistent=True) as tape:
            units = tf.unstack(tf.reshape(clone(xi, training=False), [-1]))
        rows = []
        for unit in units:
            grads = tape.gradient(unit, tv)
            rows.append(np.concatenate([np.zeros(int(np.prod(v.shape))) if g is None else
                                        tf.convert_to_tensor(g).numpy().ravel() for g, v in zip(grads, tv)]))
        del tape
        out.append(np.stack(rows))
    return np.stack(out)
