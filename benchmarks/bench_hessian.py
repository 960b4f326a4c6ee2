"""Dense Hessian and Hessian-vector products of an MLP 8-64-64-1 (tanh, 4,801 parameters, batch 256, MSE).

Baselines in the same run, on identical weights and data:

* the seed article's nested-tape recipe, fixed (a persistent outer tape and ``jacobian`` of the flat gradient,
  which vectorises with pfor) — target: tfpartials at most 0.5x its time;
* ``jax.jit(jax.hessian(f))`` of the same network written in jax.numpy, when jax is installed — target: no
  slower (at most 1.0x);
* one dataset gradient — target: a Hessian-vector product costs at most 2 gradients;
* the matrix's own size — target: peak memory of the dense Hessian at most 2x its size + 0.5 GiB (measured in
  a child process: its peak RSS, VmHWM, above its RSS before the call).

Times are the best of several calls after a warm-up (compiled functions reused, as a user computing several
Hessians of one objective would); first-call times (tracing / XLA compilation included) are reported too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peers, print_rows, row, write  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BENCH = "hessian"
CASE = "MLP 8-64-64-1 tanh, 4,801 params, batch 256, MSE"


def _problem(hidden: int = 64, batch: int = 256, seed: int = 0):
    import keras
    import numpy as np

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(hidden, activation="tanh", name="h1"),
                              keras.layers.Dense(hidden, activation="tanh", name="h2"),
                              keras.layers.Dense(1, name="out")])
    x = rng.normal(size=(batch, 8)).astype("float32")
    y = rng.normal(size=(batch, 1)).astype("float32")
    return model, x, y


def _nested_tapes(model, x, y):
    """The seed's third recipe, fixed: persistent outer tape, jacobian of the flat gradient."""
    import tensorflow as tf

    tv = model.trainable_variables
    xs, ys = tf.constant(x), tf.constant(y)

    def run():
        with tf.GradientTape(persistent=True) as outer:
            with tf.GradientTape() as inner:
                loss = tf.reduce_mean(tf.square(model(xs, training=False) - ys))
            grads = inner.gradient(loss, tv)
            flat = tf.concat([tf.reshape(g, [-1]) for g in grads], 0)
        jac = outer.jacobian(flat, tv)
        return tf.concat([tf.reshape(j, [flat.shape[0], -1]) for j in jac], 1).numpy()

    return run


def _jax_hessian(model, x, y):
    import jax
    import jax.numpy as jnp
    import numpy as np

    weights = [np.asarray(v.numpy()) for v in model.trainable_variables]
    shapes = [w.shape for w in weights]
    offsets = np.cumsum([0] + [w.size for w in weights])

    def loss(theta):
        w1, b1, w2, b2, w3, b3 = [theta[offsets[i]:offsets[i + 1]].reshape(shapes[i]) for i in range(6)]
        h = jnp.tanh(x @ w1 + b1)
        h = jnp.tanh(h @ w2 + b2)
        return jnp.mean((h @ w3 + b3 - y) ** 2)

    theta = jnp.asarray(np.concatenate([w.ravel() for w in weights]))
    fn = jax.jit(jax.hessian(loss))
    return lambda: np.asarray(fn(theta).block_until_ready())


def _interleaved_best(fns: dict, repeat: int) -> dict:
    """Best wall time of each function, calls interleaved so that machine noise hits all alike."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            time.sleep(0.3)  # let the previous library's spinning worker threads go idle
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def _first_call(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


MEMORY_CHILD = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
from bench_hessian import _problem
import tfpartials as tp
from tfpartials.autodiff.gradient import gradients
from tfpartials.autodiff.hessian import hessian
hidden = int(sys.argv[2])
model, x, y = _problem(hidden=hidden)
gradients(model, (x, y), loss="mse", quiet=True)       # TensorFlow initialised
def status(key):  # VmHWM is this process's own peak (ru_maxrss would carry the parent's across exec)
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
before = status("VmRSS")
H = hessian(model, (x, y), loss="mse", quiet=True)
peak = status("VmHWM")
print(json.dumps({"n": H.matrix.shape[0], "matrix": H.matrix.nbytes, "before": before, "peak": peak}))
"""


def _peak_memory(hidden: int) -> dict:
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(Path(__file__).resolve().parent), str(hidden)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> list[dict]:
    import numpy as np
    import tensorflow as tf

    from tfpartials.autodiff.gradient import value_and_gradient
    from tfpartials.autodiff.hessian import hessian
    from tfpartials.autodiff.hvp import hvp_matmat
    from tfpartials.autodiff.problem import prepare

    tf.get_logger().setLevel("ERROR")  # the nested recipe's eager pfor re-traces on every call and says so
    repeat = 3 if quick else 5
    model, x, y = _problem()
    obj, data = prepare(model, (x, y), "mse", batch_size=256)
    n = obj.space.size
    ours = lambda: hessian(obj, data, quiet=True).matrix  # noqa: E731
    nested = _nested_tapes(model, x, y)
    fns = {"tfpartials": ours, "nested": nested}
    first = {}
    first["tfpartials"], H = _first_call(ours)
    first["nested"], H_nested = _first_call(nested)
    has_jax = peers().get("jax", False)
    if has_jax:
        jax_fn = _jax_hessian(model, x, y)
        fns["jax"] = jax_fn
        first["jax"], H_jax = _first_call(jax_fn)
    best = _interleaved_best(fns, repeat)
    scale = float(np.abs(H_nested).max())
    rows = [
        row(BENCH, f"dense Hessian, {CASE}", best["tfpartials"], "s", "nested tapes (fixed recipe)",
            best["nested"], "<= 0.5x nested tapes", best["tfpartials"] <= 0.5 * best["nested"],
            max_abs_diff=float(np.abs(H - H_nested).max() / scale), first_call_s=first["tfpartials"],
            baseline_first_call_s=first["nested"], num_parameters=n),
    ]
    if has_jax:
        rows.append(row(BENCH, f"dense Hessian, {CASE}", best["tfpartials"], "s", "jax.jit(jax.hessian)",
                        best["jax"], "<= 1.0x JAX", best["tfpartials"] <= best["jax"],
                        max_abs_diff=float(np.abs(H - H_jax).max() / scale), first_call_s=first["tfpartials"],
                        baseline_first_call_s=first["jax"]))
    # one Hessian-vector product against one gradient, same objective and data, both compiled and warm
    v = np.random.default_rng(0).normal(size=(n, 1)).astype("float32")
    hv = lambda: hvp_matmat(obj, data, v, quiet=True).numpy()  # noqa: E731
    grad = lambda: value_and_gradient(obj, data, quiet=True)[1].numpy()  # noqa: E731
    hv(), grad()
    t = _interleaved_best({"hvp": hv, "grad": grad}, 20 if quick else 50)
    rows.append(row(BENCH, f"one Hessian-vector product, {CASE}", t["hvp"], "s", "one gradient", t["grad"],
                    "<= 2x a gradient", t["hvp"] <= 2 * t["grad"]))
    # many vectors at once: the vectorised product against a loop of single products
    V = np.random.default_rng(1).normal(size=(n, 64)).astype("float32")
    many = lambda: hvp_matmat(obj, data, V, quiet=True).numpy()  # noqa: E731
    many()
    t_many = _interleaved_best({"many": many}, repeat)["many"]
    rows.append(row(BENCH, f"64 Hessian-vector products at once, {CASE}", t_many, "s", "64 x one product",
                    64 * t["hvp"], None, None))
    for hidden in ([64] if quick else [64, 128]):
        mem = _peak_memory(hidden)
        increase = mem["peak"] - mem["before"]
        limit = 2 * mem["matrix"] + 0.5 * 1024**3
        rows.append(row(BENCH, f"peak memory of the dense Hessian, MLP 8-{hidden}-{hidden}-1 ({mem['n']:,} params)",
                        increase / 1024**2, "MiB", "matrix size", mem["matrix"] / 1024**2,
                        "<= 2x matrix + 512 MiB", increase <= limit))
    return rows


if __name__ == "__main__":
    t0 = time.perf_counter()
    rows = run(quick="--quick" in sys.argv)
    print_rows(rows)
    print(f"wrote {write(BENCH, rows)} in {time.perf_counter() - t0:.0f} s")
