"""Brute-force oracles for input-space derivatives, independent of tfpartials.

Float64 central differences on a float64 clone of the model (all perturbed inputs evaluated in one batch),
per-example nested GradientTapes written out by hand, and closed forms.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tests.references import float64_clone


def _f64(model):
    return float64_clone(model)


def _flat_model(clone, in_shape):
    def f(xflat):  # (N, n_in) float64 -> (N, n_out) float64
        out = clone(tf.constant(xflat.reshape((-1, *in_shape))), training=False)
        return np.asarray(out, np.float64).reshape(len(xflat), -1)
    return f


def fd_input_jacobian(model, x, eps: float = 1e-6) -> np.ndarray:
    """(B, n_out, n_in) by float64 central differences, every coordinate of every example in one batch."""
    x = np.asarray(x, np.float64)
    B, in_shape = len(x), x.shape[1:]
    xf = x.reshape(B, -1)
    n = xf.shape[1]
    f = _flat_model(_f64(model), in_shape)
    E = np.eye(n) * eps
    plus = (xf[:, None, :] + E[None]).reshape(-1, n)
    minus = (xf[:, None, :] - E[None]).reshape(-1, n)
    d = (f(plus) - f(minus)).reshape(B, n, -1) / (2 * eps)
    return np.transpose(d, (0, 2, 1))


def fd_input_hessian(model, x, component: int, eps: float = 1e-4) -> np.ndarray:
    """(B, n_in, n_in) Hessian of one output component by float64 second central differences."""
    x = np.asarray(x, np.float64)
    B, in_shape = len(x), x.shape[1:]
    xf = x.reshape(B, -1)
    n = xf.shape[1]
    f = _flat_model(_f64(model), in_shape)
    E = np.eye(n) * eps
    pts = []
    for si, sj in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
        pts.append((xf[:, None, None, :] + si * E[None, :, None, :] + sj * E[None, None, :, :]).reshape(-1, n))
    vals = [f(p)[:, component].reshape(B, n, n) for p in pts]
    return (vals[0] - vals[1] - vals[2] + vals[3]) / (4 * eps * eps)


def tape_input_jacobian(model, x) -> np.ndarray:
    """(B, n_out, n_in): one example at a time, ``GradientTape.jacobian`` on a float64 clone."""
    clone = _f64(model)
    rows = []
    for b in range(len(x)):
        xb = tf.constant(np.asarray(x[b:b + 1], np.float64))
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(xb)
            y = tf.reshape(clone(xb, training=False), [-1])
            parts = [y[k] for k in range(int(y.shape[0]))]
        rows.append(np.stack([tape.gradient(p, xb, unconnected_gradients="zero").numpy().ravel() for p in parts]))
        del tape
    return np.stack(rows)


def tape_input_hessian(model, x, component: int) -> np.ndarray:
    """(B, n_in, n_in): one example at a time, reverse-over-reverse nested tapes on a float64 clone."""
    clone = _f64(model)
    out = []
    for b in range(len(x)):
        xb = tf.constant(np.asarray(x[b:b + 1], np.float64))
        with tf.GradientTape(persistent=True) as outer:
            outer.watch(xb)
            with tf.GradientTape() as inner:
                inner.watch(xb)
                y = tf.reshape(clone(xb, training=False), [-1])[component]
            g = tf.reshape(inner.gradient(y, xb), [-1])
            entries = [g[i] for i in range(int(g.shape[0]))]
        out.append(np.stack([outer.gradient(e, xb, unconnected_gradients="zero").numpy().ravel()
                             for e in entries]))
        del outer
    return np.stack(out)


def tape_multi_input_jacobian(model, xs: list, which_input: int, which_output: int) -> np.ndarray:
    """(B, n_out, n_in) of output ``which_output`` w.r.t. input ``which_input`` of a list-input model."""
    rows = []
    for b in range(len(xs[0])):
        parts = [tf.constant(np.asarray(a[b:b + 1])) for a in xs]
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(parts[which_input])
            y = tf.reshape(model(parts, training=False)[which_output], [-1])
            comps = [y[k] for k in range(int(y.shape[0]))]
        rows.append(np.stack([tape.gradient(c, parts[which_input], unconnected_gradients="zero").numpy().ravel()
                              for c in comps]))
        del tape
    return np.stack(rows)
