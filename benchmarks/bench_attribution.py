"""Integrated gradients, 64 steps, on the bundled digits CNN for 256 held-out images.

Compares tfpartials' chunked evaluation (all path points of many images per compiled call, planned from the
memory budget, traced once) with the textbook recipe, one Python loop over the 64 steps (eager tape per step,
and the same loop around a compiled gradient), and with unchunked evaluation (all 16,384 path points in one
call) and fixed chunk sizes. The results of every variant agree to float32 round-off (a row checks it).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_time, print_rows, row, write  # noqa: E402

BENCH = "attribution"


def _loop_eager(model, x, index, steps):
    import numpy as np
    import tensorflow as tf

    from tfpartials.attribution import path_nodes

    alphas, weights = path_nodes(steps, "riemann_trapezoid")
    idx = tf.constant(index, tf.int32)
    xt = tf.constant(x)
    total = tf.zeros_like(xt)
    for a, w in zip(alphas.astype(np.float32), weights.astype(np.float32)):
        pt = a * xt
        with tf.GradientTape() as tape:
            tape.watch(pt)
            f = tf.reduce_sum(tf.gather(model(pt, training=False), idx, axis=1, batch_dims=1))
        total += w * tape.gradient(f, pt)
    return (xt * total).numpy()


def _loop_compiled(model, steps):
    import numpy as np
    import tensorflow as tf

    from tfpartials.attribution import path_nodes

    alphas, weights = path_nodes(steps, "riemann_trapezoid")

    @tf.function
    def grad(pt, idx):
        with tf.GradientTape() as tape:
            tape.watch(pt)
            f = tf.reduce_sum(tf.gather(model(pt, training=False), idx, axis=1, batch_dims=1))
        return tape.gradient(f, pt)

    def run(x, index):
        idx = tf.constant(index, tf.int32)
        xt = tf.constant(x)
        total = tf.zeros_like(xt)
        for a, w in zip(alphas.astype(np.float32), weights.astype(np.float32)):
            total += w * grad(a * xt, idx)
        return (xt * total).numpy()

    return run


def run(quick: bool = False) -> list[dict]:
    import numpy as np

    from tfpartials.attribution import IntegratedGradients
    from tfpartials.examples import digits_cnn

    steps, n = 64, 256
    repeat = 1 if quick else 3
    model, x, _ = digits_cnn()
    x = x[:n]
    rows: list[dict] = []
    planned = IntegratedGradients(model, steps=steps)
    index = planned.targets(x)
    t0 = time.perf_counter()
    reference = planned.attribute(x, target=index)
    first_call = time.perf_counter() - t0
    t_planned = best_time(lambda: planned.attribute(x, target=index), repeat=repeat, warmup=0)
    per_call, nodes = planned.plan(n)

    t_eager = best_time(lambda: _loop_eager(model, x, index, steps), repeat=repeat, warmup=1)
    compiled_loop = _loop_compiled(model, steps)
    t_loop = best_time(lambda: compiled_loop(x, index), repeat=repeat, warmup=1)
    loop_result = compiled_loop(x, index)

    unchunked = IntegratedGradients(model, steps=steps, internal_batch_size=n * steps)
    t_unchunked = best_time(lambda: unchunked.attribute(x, target=index), repeat=repeat, warmup=1)

    case = f"IG {steps} steps, digits CNN, {n} images"
    rows.append(row(BENCH, f"{case}: chunked (planned: {per_call} images x {nodes} steps per call)", t_planned,
                    "s", "Python loop over steps, eager tape", t_eager, "<= 0.5x the eager loop",
                    t_planned <= 0.5 * t_eager))
    rows.append(row(BENCH, f"{case}: chunked vs loop around a compiled gradient", t_planned, "s",
                    "Python loop over steps, tf.function gradient", t_loop, "<= 1.0x the compiled loop",
                    t_planned <= t_loop))
    rows.append(row(BENCH, f"{case}: chunked vs unchunked (one call, {n * steps} points)", t_planned, "s",
                    "unchunked", t_unchunked, "<= 1.1x unchunked (bounded memory at no cost)",
                    t_planned <= 1.1 * t_unchunked))
    for size in ((256, 4096) if quick else (64, 256, 1024, 4096)):
        fixed = IntegratedGradients(model, steps=steps, internal_batch_size=size)
        t = best_time(lambda fixed=fixed: fixed.attribute(x, target=index), repeat=repeat, warmup=1)
        rows.append(row(BENCH, f"{case}: internal_batch_size={size}", t, "s", "unchunked", t_unchunked))
        assert fixed.trace_counts["integrated_gradients"] == 1, "chunking retraced"
    rows.append(row(BENCH, f"{case}: first call incl. tracing", first_call, "s", "later calls", t_planned))
    diff = float(np.max(np.abs(reference - loop_result)) / np.max(np.abs(loop_result)))
    rows.append(row(BENCH, f"{case}: max |chunked - loop| / max |loop|", diff, "rel", target="< 1e-4",
                    meets_target=diff < 1e-4))
    _, delta = planned.attribute(x, target=index, return_delta=True)
    change = reference.reshape(n, -1).sum(1) - delta
    worst = float(np.max(np.abs(delta) / np.abs(change)))
    rows.append(row(BENCH, f"{case}: max completeness |delta| / |f(x) - f(0)|", worst, "rel",
                    target="< 0.01", meets_target=worst < 0.01))
    return rows


if __name__ == "__main__":
    t0 = time.perf_counter()
    rows = run(quick="--quick" in sys.argv)
    print_rows(rows)
    print(f"wrote {write(BENCH, rows)} in {time.perf_counter() - t0:.0f} s")
