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
    """Dense Hessian by reverse-over-reverse nested tapes on a float64 clone, flat (n, n)."""
    clone = float64_clone(model) if dtype == tf.float64 else model
    tv = clone.trainable_variables
    xs = tf.constant(x, dtype) if np.issubdtype(np.asarray(x).dtype, np.floating) else tf.constant(x)
    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape() as inner:
            loss = loss_fn(y, clone(xs, training=False))
        grads = inner.gradient(loss, tv)
        flat = tf.concat([tf.reshape(g, [-1]) for g in grads], 0)
    rows = []
    for i in range(int(flat.shape[0])):
        gi = outer.gradient(flat[i], tv, unconnected_gradients="zero")
        rows.append(tf.concat([tf.reshape(g, [-1]) for g in gi], 0))
    return tf.stack(rows).numpy()


def keras_mean_loss(name: str, from_logits: bool = False):
    """A plain batch-mean Keras loss function (y_true, y_pred) -> scalar, for nested-tape references."""
    if name == "mse":
        return lambda yt, yp: tf.reduce_mean(tf.square(yp - tf.cast(yt, yp.dtype)))
    if name == "scce":
        return lambda yt, yp: tf.reduce_mean(
            keras.losses.sparse_categorical_crossentropy(yt, yp, from_logits=from_logits))
    raise ValueError(name)
