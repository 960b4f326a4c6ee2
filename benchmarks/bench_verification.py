"""Derivative checks: cost of tfpartials.check_gradients and what it can resolve, against plain loops and peers.

An MLP 32-64-10 (2,730 parameters) with softmax cross-entropy on 1,024 examples (256 with --quick).

* Fast mode (4 seeded directions per variable, 16 directional derivatives, 32 float64 dataset evaluations)
  against the textbook loop that evaluates the same 32 perturbed losses one compiled call at a time.
* Full mode on a small MLP (5-6-3, 57 parameters: 114 evaluations) against the same per-coordinate loop.
* Accuracy: the largest relative error of float32 and float64 autodiff against float64 differences (the
  tolerances are 1e-3 and 1e-6), and the error of a float32 finite difference (what a float32-only check sees).
* Peers on identical weights: ``torch.autograd.gradcheck(fast_mode=True)`` and ``jax.test_util.check_grads``
  (both in float64, reverse mode, first order) when installed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_time, peers, print_rows, row, write  # noqa: E402

BENCH = "verification"


def _problem(n: int, d: int = 32, hidden: int = 64, classes: int = 10, seed: int = 0):
    import keras
    import numpy as np

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(hidden, activation="tanh", name="h"),
                              keras.layers.Dense(classes, name="logits")])
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign((rng.normal(size=v.shape) * 0.3).astype("float32"))
    x = rng.normal(size=(n, d)).astype("float32")
    y = rng.integers(0, classes, size=n).astype("int32")
    return model, x, y


def _naive_differences(model, x, y, directions, h):
    """One compiled float64 loss call per perturbation: the loop people write by hand."""
    import keras
    import numpy as np
    import tensorflow as tf

    from tfpartials.io.precision import float64_copy

    clone = float64_copy(model)
    variables = clone.trainable_variables
    shapes = [tuple(v.shape) for v in variables]
    sizes = [int(np.prod(s)) for s in shapes]
    xs, ys = tf.constant(x.astype(np.float64)), tf.constant(y)

    @tf.function
    def loss(theta):
        parts = tf.split(theta, sizes)
        values = [tf.reshape(p, s) for p, s in zip(parts, shapes)]
        out, _ = clone.stateless_call(values, [], xs, training=False)
        return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(ys, out, from_logits=True))

    theta = np.concatenate([v.numpy().ravel() for v in variables])
    return np.array([(loss(tf.constant(theta + h * d)) - loss(tf.constant(theta - h * d))).numpy() / (2 * h)
                     for d in directions])


def _fast_mode_rows(quick: bool) -> list[dict]:
    import numpy as np

    from tfpartials.autodiff.gradient import gradients
    from tfpartials.params import ParameterSpace
    from tfpartials.verification.checks import check_gradients
    from tfpartials.verification.finite_differences import variable_directions

    n = 256 if quick else 1024
    model, x, y = _problem(n)
    space = ParameterSpace(model)
    dirs = variable_directions(space.names, space.sizes, 4, 0)
    rows_ = []
    for name in space.names:
        sl = space.slice_of(name)
        for d in dirs[name]:
            full = np.zeros(space.size)
            full[sl] = d
            rows_.append(full)
    result = {}

    def ours():
        result["r"] = check_gradients(model, (x, y), loss="sparse_categorical_crossentropy", from_logits=True,
                                      full=False, directions=4, seed=0)

    def by_hand():
        gradients(model, (x, y), loss="sparse_categorical_crossentropy", from_logits=True)
        _naive_differences(model, x, y, rows_, 6e-6)

    t_ours = best_time(ours, repeat=3, warmup=0)
    t_naive = best_time(by_hand, repeat=3, warmup=0)
    r = result["r"]
    return [
        row(BENCH, f"fast mode, 4 dirs/variable, MLP 32-64-10, {n} ex", t_ours, "s",
            "tp.gradients + per-evaluation loop (32 evals)", t_naive, "<= 1.5x the check by hand (ours also "
            "builds the float64 copy)", t_ours <= 1.5 * t_naive),
        row(BENCH, "fast mode float32 autodiff: max rel error", r.max_rel_error, "rel", None, None,
            "< rtol 1e-3", r.max_rel_error < 1e-3),
    ]


def _full_mode_rows() -> list[dict]:
    import numpy as np

    from tfpartials.autodiff.gradient import gradients
    from tfpartials.params import ParameterSpace
    from tfpartials.verification.checks import check_gradients

    model, x, y = _problem(64, d=5, hidden=6, classes=3, seed=1)
    space = ParameterSpace(model)
    out = {}

    def ours(precision):
        out[precision] = check_gradients(model, (x, y), loss="sparse_categorical_crossentropy", from_logits=True,
                                         full=True, precision=precision)

    eye = np.eye(space.size)

    def by_hand():
        gradients(model, (x, y), loss="sparse_categorical_crossentropy", from_logits=True)
        _naive_differences(model, x, y, eye, 6e-6)

    t_ours = best_time(lambda: ours(None), repeat=3, warmup=0)
    t_naive = best_time(by_hand, repeat=3, warmup=0)
    ours("float64")
    return [
        row(BENCH, f"full mode, every coordinate ({space.size} params)", t_ours, "s",
            f"tp.gradients + per-evaluation loop ({2 * space.size} evals)", t_naive, "<= 1x the check by hand",
            t_ours <= t_naive),
        row(BENCH, "full mode float64 autodiff: max rel error", out["float64"].max_rel_error, "rel", None, None,
            "< rtol 1e-6", out["float64"].max_rel_error < 1e-6),
    ]


def _float32_difference_row() -> list[dict]:
    """What a float32-only finite difference can resolve: its error against the float64 reference."""
    import keras
    import numpy as np
    import tensorflow as tf

    from tfpartials.autodiff.gradient import gradients

    model, x, y = _problem(256, seed=2)
    g = gradients(model, (x, y), loss="sparse_categorical_crossentropy", from_logits=True, precision="float64")
    flat = np.concatenate([a.ravel() for a in g.values()])
    rng = np.random.default_rng(0)
    d = rng.standard_normal(flat.size)
    d /= np.linalg.norm(d)
    variables = model.trainable_variables
    shapes = [tuple(v.shape) for v in variables]
    sizes = [int(np.prod(s)) for s in shapes]
    theta = np.concatenate([v.numpy().ravel() for v in variables]).astype(np.float32)

    def loss(t):
        values = [tf.reshape(p, s) for p, s in zip(tf.split(tf.constant(t, tf.float32), sizes), shapes)]
        out, _ = model.stateless_call(values, [], x, training=False)
        return float(tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, out, from_logits=True)))

    h = float(np.finfo(np.float32).eps) ** (1 / 3)
    fd32 = (loss(theta + h * d) - loss(theta - h * d)) / (2 * h)
    exact = float(flat @ d)
    err32 = abs(fd32 - exact) / abs(exact)
    from tfpartials.autodiff.problem import prepare
    from tfpartials.verification.finite_differences import FiniteDifferenceObjective, step_size

    obj, data = prepare(model, (x, y), "sparse_categorical_crossentropy", from_logits=True)
    fd = FiniteDifferenceObjective(obj, data)
    err64 = abs(float(fd.directional(d[None], step_size(np.max(np.abs(fd.theta))))[0]) - exact) / abs(exact)
    return [row(BENCH, "central difference rel error: float32 (1 dir)", err32, "rel",
                "the float64 difference the checks use", err64, "ratio > 100 (why the reference is float64)",
                err32 > 100 * err64)]


def _peer_rows(quick: bool) -> list[dict]:
    import numpy as np

    have = peers()
    out = []
    n = 256 if quick else 1024
    model, x, y = _problem(n)
    W1, b1 = (v.numpy().astype(np.float64) for v in model.get_layer("h").trainable_variables)
    W2, b2 = (v.numpy().astype(np.float64) for v in model.get_layer("logits").trainable_variables)
    from tfpartials.verification.checks import check_gradients

    t_ours = best_time(lambda: check_gradients(model, (x, y), loss="sparse_categorical_crossentropy",
                                               from_logits=True, full=False, precision="float64"),
                       repeat=3, warmup=0)
    if have.get("torch"):
        import torch

        xt, yt = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.long)
        params = [torch.tensor(a, requires_grad=True) for a in (W1, b1, W2, b2)]

        def f(w1, c1, w2, c2):
            return torch.nn.functional.cross_entropy(torch.tanh(xt @ w1 + c1) @ w2 + c2, yt)

        t_torch = best_time(lambda: torch.autograd.gradcheck(f, params, fast_mode=True), repeat=3, warmup=1)
        out.append(row(BENCH, "float64 fast check vs torch gradcheck(fast_mode)", t_ours, "s",
                       "torch.autograd.gradcheck", t_torch, "informative (torch: 1 direction in total)", None))
    if have.get("jax"):
        import jax
        import jax.numpy as jnp
        from jax.test_util import check_grads

        jax.config.update("jax_enable_x64", True)
        xj, yj = jnp.asarray(x, jnp.float64), jnp.asarray(y)

        def g(w1, c1, w2, c2):
            logits = jnp.tanh(xj @ w1 + c1) @ w2 + c2
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(yj)), yj])

        args = tuple(jnp.asarray(a) for a in (W1, b1, W2, b2))
        t_jax = best_time(lambda: check_grads(g, args, order=1, modes=["rev"]), repeat=3, warmup=1)
        out.append(row(BENCH, "float64 fast check vs jax check_grads(rev)", t_ours, "s",
                       "jax.test_util.check_grads", t_jax, "informative (jax: 1 direction in total)", None))
    return out


def run(quick: bool = False) -> list[dict]:
    rows = []
    rows += _fast_mode_rows(quick)
    rows += _full_mode_rows()
    rows += _float32_difference_row()
    rows += _peer_rows(quick)
    return rows


if __name__ == "__main__":
    start = time.time()
    result = run(quick="--quick" in sys.argv)
    print_rows(result)
    print(f"wrote {write(BENCH, result)} in {time.time() - start:.0f} s")
