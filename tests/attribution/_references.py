"""Independent oracles for attribution tests: float64 central differences of a hand-cloned model, a plain
per-step GradientTape loop for integrated gradients, and closed forms. Nothing here imports tfpartials."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tests.references import float64_clone


def output_of(model, x, index):
    """f_i = model(x)[i, index_i] in float64 numpy (flattened per-example output)."""
    out = np.asarray(model(x, training=False), np.float64).reshape(len(x), -1)
    return out[np.arange(len(x)), np.asarray(index)]


def input_gradient_central_difference(model, x, index, eps=1e-6):
    """∂f_i/∂x_i by float64 central differences on a float64 clone (examples are independent)."""
    m64 = float64_clone(model)
    x = np.asarray(x, np.float64)
    flat = x.reshape(len(x), -1)
    grad = np.zeros_like(flat)
    for j in range(flat.shape[1]):
        plus, minus = flat.copy(), flat.copy()
        plus[:, j] += eps
        minus[:, j] -= eps
        fp = output_of(m64, plus.reshape(x.shape), index)
        fm = output_of(m64, minus.reshape(x.shape), index)
        grad[:, j] = (fp - fm) / (2 * eps)
    return grad.reshape(x.shape)


def integrated_gradients_loop(model, x, baseline, index, steps):
    """Trapezoid-rule IG by a Python loop over the path nodes, one tape per node (the textbook recipe)."""
    x = np.asarray(x, np.float32)
    baseline = np.broadcast_to(np.asarray(baseline, np.float32), x.shape)
    alphas = np.linspace(0.0, 1.0, steps)
    total = np.zeros(x.shape, np.float64)
    idx = tf.constant(np.asarray(index), tf.int32)
    for k, a in enumerate(alphas):
        pt = tf.constant(baseline + a * (x - baseline))
        with tf.GradientTape() as tape:
            tape.watch(pt)
            out = tf.reshape(model(pt, training=False), [len(x), -1])
            total_f = tf.reduce_sum(tf.gather(out, idx, axis=1, batch_dims=1))
        g = tape.gradient(total_f, pt).numpy().astype(np.float64)
        w = 0.5 if k in (0, steps - 1) else 1.0
        total += w * g / (steps - 1)
    return (x - baseline) * total


def input_gradient_tape(model, x, index):
    """∂f_i/∂x_i with one eager GradientTape (examples are independent in inference mode)."""
    pt = tf.constant(np.asarray(x, np.float32))
    idx = tf.constant(np.asarray(index), tf.int32)
    with tf.GradientTape() as tape:
        tape.watch(pt)
        out = tf.reshape(model(pt, training=False), [len(pt), -1])
        total_f = tf.reduce_sum(tf.gather(out, idx, axis=1, batch_dims=1))
    return tape.gradient(total_f, pt).numpy()


def smoothgrad_loop(model, x, index, num_samples, noise_std, seed):
    """SmoothGrad of saliency as documented: σ_i = noise_std·(max x_i − min x_i), noise drawn one sample after
    the other from numpy.random.default_rng(seed)."""
    x = np.asarray(x, np.float32)
    flat = x.reshape(len(x), -1)
    span = flat.max(1).astype(np.float64) - flat.min(1)
    sigma = (noise_std * np.where(span > 0, span, 1.0)).reshape((len(x),) + (1,) * (x.ndim - 1))
    rng = np.random.default_rng(seed)
    total = np.zeros(x.shape, np.float64)
    for _ in range(num_samples):
        noisy = x + (rng.standard_normal(x.shape) * sigma).astype(np.float32)
        total += input_gradient_tape(model, noisy, index)
    return total / num_samples
