"""Derivatives with respect to inputs: per-example Jacobians, forward vs reverse mode, chunking, Laplacian.

Rows (one process, same weights and data; steady state unless said otherwise):
* per-example Jacobian of an MLP 784-256-10 at batch 256: ``input_jacobian`` vs a Python loop over the
  examples calling a compiled single-example ``GradientTape.jacobian`` (target >= 10x faster); vs TensorFlow's
  own ``batch_jacobian`` compiled (information); vs ``torch.func.vmap(jacrev)`` when torch imports (information);
* forward vs reverse mode on a wide-output model (8 inputs, 2048 outputs) and on the wide-input MLP; the
  target is that ``mode="auto"`` picks the faster one;
* chunked (a memory budget forcing about 8 chunks) vs unchunked (target within 1.5x);
* Laplacian (nested forward mode, no Hessian stored) vs the trace of the dense per-example Hessian, and the
  per-example Hessian vs a Python loop of compiled nested tapes (information).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_time, peers, print_rows, row, write  # noqa: E402

BENCH = "inputs"
D_IN, HIDDEN, CLASSES, BATCH = 784, 256, 10, 256


def _mlp(d_in, hidden, d_out, seed=0, activation="tanh"):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((d_in,)), keras.layers.Dense(hidden, activation=activation, name="h"),
                             keras.layers.Dense(d_out, name="out")])


def _loop_jacobian(model):
    import tensorflow as tf

    @tf.function
    def single(xi):
        with tf.GradientTape() as tape:
            tape.watch(xi)
            y = model(xi, training=False)
        return tape.jacobian(y, xi)

    def run(x):
        xt = tf.constant(x)
        return np.stack([single(xt[i:i + 1]).numpy()[0, :, 0] for i in range(len(x))])
    return run


def _batch_jacobian(model):
    import tensorflow as tf

    @tf.function
    def bj(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = model(x, training=False)
        return tape.batch_jacobian(y, x)

    return lambda x: bj(tf.constant(x)).numpy()


TORCH_CHILD = r"""
import sys, json, time
import numpy as np, torch
from torch.func import jacrev, vmap
z = np.load(sys.argv[1]); repeat = int(sys.argv[2])
(d, h), k = z["w1"].shape, z["w2"].shape[1]
net = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.Tanh(), torch.nn.Linear(h, k))
with torch.no_grad():
    net[0].weight.copy_(torch.tensor(z["w1"].T)); net[0].bias.copy_(torch.tensor(z["b1"]))
    net[2].weight.copy_(torch.tensor(z["w2"].T)); net[2].bias.copy_(torch.tensor(z["b2"]))
x = torch.tensor(z["x"])
f = vmap(jacrev(lambda xi: net(xi[None])[0]))
J = f(x)
times = []
for _ in range(repeat):
    t0 = time.perf_counter(); f(x); times.append(time.perf_counter() - t0)
np.save(sys.argv[3], J.detach().numpy())
print(json.dumps({"seconds": min(times)}))
"""


def _torch_jacobian(model, x, repeat):
    """torch.func.vmap(jacrev) in its own process (no thread-pool contention with TensorFlow), same weights."""
    import json
    import subprocess
    import tempfile

    w1, b1, w2, b2 = (v.numpy() for v in model.trainable_variables)
    with tempfile.TemporaryDirectory() as tmp:
        inputs, out = Path(tmp) / "in.npz", Path(tmp) / "J.npy"
        np.savez(inputs, w1=w1, b1=b1, w2=w2, b2=b2, x=x)
        res = subprocess.run([sys.executable, "-c", TORCH_CHILD, str(inputs), str(repeat), str(out)],
                             capture_output=True, text=True, check=True)
        return json.loads(res.stdout.strip().splitlines()[-1])["seconds"], np.load(out)


def _per_example_rows(repeat: int) -> list[dict]:
    from tfpartials.inputs import input_jacobian

    model = _mlp(D_IN, HIDDEN, CLASSES)
    x = np.random.default_rng(0).normal(size=(BATCH, D_IN)).astype("float32")
    ours = input_jacobian(model, x, quiet=True)
    t_ours = best_time(lambda: input_jacobian(model, x, quiet=True), repeat=3 * repeat)  # cheap: more repeats
    loop = _loop_jacobian(model)
    ref = loop(x)
    err = float(np.max(np.abs(ours - ref)))
    t_loop = best_time(lambda: loop(x), repeat=max(1, repeat // 3))
    case = f"MLP {D_IN}-{HIDDEN}-{CLASSES}, batch {BATCH}"
    rows = [row(BENCH, f"per-example Jacobian, {case}: vs Python loop", t_ours, "s", "compiled per-example loop",
                t_loop, ">= 10x faster than the loop", t_loop / t_ours >= 10, speedup=t_loop / t_ours,
                max_abs_difference=err)]
    bj = _batch_jacobian(model)
    bj(x)
    t_bj = best_time(lambda: bj(x), repeat=3 * repeat)
    rows.append(row(BENCH, f"per-example Jacobian, {case}: vs tf batch_jacobian", t_ours, "s",
                    "tf.GradientTape.batch_jacobian (compiled)", t_bj, None, None))
    if peers()["torch"]:
        t_torch, J_torch = _torch_jacobian(model, x, repeat)
        rows.append(row(BENCH, f"per-example Jacobian, {case}: vs torch vmap(jacrev)", t_ours, "s",
                        "torch.func.vmap(jacrev)", t_torch, None, None,
                        max_abs_difference=float(np.max(np.abs(J_torch - ours)))))
    return rows


def _mode_rows(repeat: int) -> list[dict]:
    from tfpartials.inputs import input_jacobian

    rows = []
    for label, (d_in, hidden, d_out, batch) in {"wide output (8 -> 2048)": (8, 256, 2048, 64),
                                                 f"wide input ({D_IN} -> {CLASSES})": (D_IN, HIDDEN, CLASSES, 64)
                                                 }.items():
        model = _mlp(d_in, hidden, d_out, seed=1)
        x = np.random.default_rng(1).normal(size=(batch, d_in)).astype("float32")
        times, results = {}, {}
        for mode in ("forward", "reverse", "auto"):
            results[mode] = input_jacobian(model, x, mode=mode, quiet=True)
            times[mode] = best_time(lambda m=mode, f=model, z=x: input_jacobian(f, z, mode=m, quiet=True),
                                    repeat=repeat)
        agree = float(np.max(np.abs(results["forward"] - results["reverse"])))
        faster = "forward" if times["forward"] < times["reverse"] else "reverse"
        expected = "forward" if d_in < d_out else "reverse"
        other = "reverse" if faster == "forward" else "forward"
        rows.append(row(BENCH, f"{label}, batch {batch}: {faster} vs {other} mode", times[faster], "s",
                        f"{other} mode", times[other], "auto picks the faster mode", faster == expected,
                        auto_seconds=times["auto"], max_abs_difference=agree))
    return rows


def _chunk_rows(repeat: int) -> list[dict]:
    from tfpartials._memory import plan_chunks
    from tfpartials.inputs import input_jacobian
    from tfpartials.inputs._model_fn import get_function
    from tfpartials.inputs._sweep import row_bytes

    model = _mlp(D_IN, HIDDEN, CLASSES)
    x = np.random.default_rng(2).normal(size=(BATCH, D_IN)).astype("float32")
    fn = get_function(model)
    prep = fn.prepare(x)
    result = BATCH * D_IN * CLASSES * 4
    per_row = row_bytes(fn, prep, 3)
    budget = result + per_row * (BATCH * CLASSES // 8)  # room for about 1/8 of the rows at once
    chunks = plan_chunks(BATCH * CLASSES, per_row, budget=budget, fixed=result).num_chunks
    full = input_jacobian(model, x, quiet=True)
    chunked = input_jacobian(model, x, max_memory=budget, quiet=True)
    t_full = best_time(lambda: input_jacobian(model, x, quiet=True), repeat=3 * repeat)
    t_chunked = best_time(lambda: input_jacobian(model, x, max_memory=budget, quiet=True), repeat=3 * repeat)
    return [row(BENCH, f"Jacobian MLP {D_IN}-{HIDDEN}-{CLASSES}, batch {BATCH}: {chunks} chunks vs one", t_chunked,
                "s", "unchunked", t_full, "within 1.5x of unchunked", t_chunked / t_full <= 1.5,
                max_abs_difference=float(np.max(np.abs(full - chunked))))]


def _second_order_rows(repeat: int) -> list[dict]:
    import tensorflow as tf

    from tfpartials.inputs import input_hessian, laplacian

    d_in, batch = 32, 256
    model = _mlp(d_in, 64, 1, seed=3)
    x = np.random.default_rng(3).normal(size=(batch, d_in)).astype("float32")
    lap = laplacian(model, x, quiet=True)
    H = input_hessian(model, x, quiet=True)
    t_lap = best_time(lambda: laplacian(model, x, quiet=True), repeat=repeat)
    t_hess = best_time(lambda: input_hessian(model, x, quiet=True), repeat=repeat)
    rows = [row(BENCH, f"Laplacian MLP {d_in}-64-1, batch {batch}: vs trace of dense Hessian", t_lap, "s",
                "input_hessian + trace", t_hess, None, None,
                max_abs_difference=float(np.max(np.abs(lap - np.trace(H, axis1=1, axis2=2)))))]

    @tf.function
    def single(xi):
        with tf.GradientTape() as outer:
            outer.watch(xi)
            with tf.GradientTape() as inner:
                inner.watch(xi)
                y = model(xi, training=False)[0, 0]
            g = inner.gradient(y, xi)
        return outer.jacobian(g, xi)

    xt = tf.constant(x)
    single(xt[:1])
    t_loop = best_time(lambda: [single(xt[i:i + 1]) for i in range(batch)], repeat=max(1, repeat // 3))
    rows.append(row(BENCH, f"per-example Hessian MLP {d_in}-64-1, batch {batch}: vs Python loop", t_hess, "s",
                    "compiled per-example nested tapes", t_loop, None, None, speedup=t_loop / t_hess))
    return rows


def run(quick: bool = False) -> list[dict]:
    repeat = 3 if quick else 7
    return _per_example_rows(repeat) + _mode_rows(repeat) + _chunk_rows(repeat) + _second_order_rows(repeat)


if __name__ == "__main__":
    rows = run(quick="--quick" in sys.argv)
    print_rows(rows)
    print(f"wrote {write(BENCH, rows)}")
