"""Real-size models: MobileNetV2 (alpha 0.35, 32x32), a ~1M-parameter ResNet-like CNN and the soundness audit's
transformer block, timed on the main operations and on the whole ``tfpartials report``.

Rows per model (seconds, the first call's tracing reported apart from the steady-state call where it matters):
dataset gradient, one HVP, 64 HVPs at once, the top Hessian eigenvalue (Lanczos, tol 1e-3), the trace with
per-layer traces from shared probes (to 5% relative standard error or 60 matvecs), per-example gradients, IG
(32 steps, 4 inputs), and ``tfpartials report`` end to end as a user runs it (a fresh process; wall time and the
number of lines it writes to stderr). Ratios are to the dataset gradient of the same model in the same run
(HVP/gradient is the issue's target ratio <= 2.5; gradient and HVP are timed in alternation, five times each,
and their medians compared).

    python benchmarks/bench_real.py [--models mobilenetv2,resnet,transformer] [--no-report] [--examples 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_rows, row, write  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def mobilenetv2():
    import keras

    return keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10)


def resnet_small():
    """Conv stem, three stages of one basic residual block each (48, 96, 192 channels, batch norm), ~1M params."""
    import keras
    from keras import layers as L

    inp = keras.Input((32, 32, 3))
    h = L.Conv2D(48, 3, padding="same", use_bias=False, name="stem")(inp)
    h = L.ReLU()(L.BatchNormalization(name="stem_bn")(h))
    for i, c in enumerate((48, 96, 192)):
        stride = 1 if i == 0 else 2
        r = L.Conv2D(c, 3, strides=stride, padding="same", use_bias=False, name=f"s{i}_conv1")(h)
        r = L.ReLU()(L.BatchNormalization(name=f"s{i}_bn1")(r))
        r = L.Conv2D(c, 3, padding="same", use_bias=False, name=f"s{i}_conv2")(r)
        r = L.BatchNormalization(name=f"s{i}_bn2")(r)
        if stride != 1 or h.shape[-1] != c:
            h = L.Conv2D(c, 1, strides=stride, use_bias=False, name=f"s{i}_proj")(h)
        h = L.ReLU()(L.Add()([h, r]))
    h = L.GlobalAveragePooling2D()(h)
    return keras.Model(inp, L.Dense(10, name="head")(h), name="resnet_small")


def transformer():
    sys.path.insert(0, str(ROOT))
    from tests.soundness.catalogue import _transformer

    return _transformer()


MODELS = {"mobilenetv2": (mobilenetv2, "image", False), "resnet": (resnet_small, "image", True),
          "transformer": (transformer, "tokens", True)}


REPEATS = 5  # interleaved gradient / HVP pairs; the rows give their medians


def _data(kind: str, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    if kind == "tokens":
        return rng.integers(0, 11, (n, 6)).astype("int32"), rng.integers(0, 3, n).astype("int32")
    return rng.random((n, 32, 32, 3)).astype("float32"), rng.integers(0, 10, n).astype("int32")


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_model(name: str, examples: int, report: bool, report_examples: int | None) -> list[dict]:
    import tensorflow as tf

    import tfpartials as tp
    from tfpartials.estimators import layerwise_trace, top_eigenvalues
    from tfpartials.linalg.curvature import HessianOperator

    build, kind, logits = MODELS[name]
    model = build()
    x, y = _data(kind, examples)
    loss = "sparse_categorical_crossentropy"
    kw = {"from_logits": logits}
    n = int(sum(int(np.prod(v.shape)) for v in model.trainable_variables))
    case = f"{name} ({n:,} params, {examples} examples)"
    rows = []
    gradient = lambda: tp.gradients(model, (x, y), loss, quiet=True, **kw)  # noqa: E731
    first_grad, _ = _timed(gradient)
    op = HessianOperator(model, (x, y), loss=loss, **kw)
    rng = np.random.default_rng(0)
    v1 = tf.constant(rng.standard_normal((n, 1)), op.dtype)
    first, _ = _timed(lambda: op.matmat(v1).numpy())
    # gradient and HVP alternate, REPEATS times each: the shared machine's speed drifts (up to 2x within a
    # session), and a ratio of two single timings taken seconds apart carries that drift
    grads, hvps = [], []
    for _ in range(REPEATS):
        grads.append(_timed(gradient)[0])
        hvps.append(_timed(lambda: op.matmat(v1).numpy())[0])
    grad, one = statistics.median(grads), statistics.median(hvps)
    rows.append(row("real: gradient", case, grad, "s", first_call_s=round(first_grad, 3), repeats=grads))
    rows.append(row("real: HVP", case, one, "s", "gradient", grad, target="<= 2.5x gradient",
                    meets_target=one / grad <= 2.5, first_call_s=round(first, 3), repeats=hvps,
                    ratio_per_repeat=[round(h / g, 3) for g, h in zip(grads, hvps)]))
    v64 = tf.constant(rng.standard_normal((n, 64)), op.dtype)
    first, _ = _timed(lambda: op.matmat(v64).numpy())
    many, _ = _timed(lambda: op.matmat(v64).numpy())
    rows.append(row("real: 64 HVPs at once", case, many, "s", "64 single HVPs", 64 * one,
                    first_call_s=round(first, 3), per_hvp_vs_gradient=round(many / 64 / grad, 3)))

    from tfpartials.linalg.operator import LinearOperator

    class OneAtATime(LinearOperator):  # as the report: one compiled width for every estimator
        def __init__(self, parent):
            super().__init__(parent.n, parent.dtype, symmetric=True, psd=False, space=parent.space)
            self.parent = parent

        def _matmat(self, V):
            return tf.concat([self.parent.matmat(V[:, j:j + 1]) for j in range(int(V.shape[1]))], axis=1)

    single = OneAtATime(op)
    t, eig = _timed(lambda: top_eigenvalues(single, k=1, tol=1e-3, max_matvecs=120, quiet=True))
    rows.append(row("real: top eigenvalue (tol 1e-3)", case, t, "s", "gradient", grad,
                    num_matvecs=int(eig.num_matvecs), converged=bool(eig.converged),
                    estimate=float(eig.eigenvalues[0])))
    t, tr = _timed(lambda: layerwise_trace(single, rel_tol=0.05, max_matvecs=60, block_size=8, quiet=True))
    rows.append(row("real: trace + per-layer (shared probes)", case, t, "s", "gradient", grad,
                    num_matvecs=int(tr.num_matvecs), stopped=tr.stopped, estimate=float(tr.value),
                    std_error=float(tr.std_error), layers=len(tr.blocks)))
    first, _ = _timed(lambda: tp.per_example_gradients(model, (x, y), loss, quiet=True, **kw))
    t, _ = _timed(lambda: tp.per_example_gradients(model, (x, y), loss, quiet=True, **kw))
    rows.append(row("real: per-example gradients", case, t, "s", "gradient", grad, first_call_s=round(first, 3)))
    if kind != "tokens":
        ig = tp.IntegratedGradients(model, steps=32)
        first, _ = _timed(lambda: ig.attribute(x[:4]))
        t, _ = _timed(lambda: ig.attribute(x[:4]))
        rows.append(row("real: integrated gradients (4 inputs, 32 steps)", case, t, "s", "gradient", grad,
                        first_call_s=round(first, 3)))
    if report:
        rows.append(report_row(name, model, kind, report_examples or examples, logits))
    return rows


def report_row(name: str, model, kind: str, examples: int, logits: bool) -> dict:
    """``tfpartials report`` in a fresh process, as a user runs it: wall time, sections ok, stderr lines."""
    import json

    with tempfile.TemporaryDirectory() as d:
        model.compile(loss="sparse_categorical_crossentropy")
        model.save(Path(d) / "m.keras")
        x, y = _data(kind, examples, seed=1)
        np.savez(Path(d) / "d.npz", x=x, y=y)
        cmd = [sys.executable, "-m", "tfpartials", "report", str(Path(d) / "m.keras"), "--data",
               str(Path(d) / "d.npz"), "--out", str(Path(d) / "rep")] + (["--from-logits"] if logits else [])
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        status, timing = {}, {}
        if proc.returncode == 0:
            res = json.loads((Path(d) / "rep" / "results.json").read_text())
            status = {k: s["status"] for k, s in res["sections"].items()}
            timing = res["provenance"]["timing"]["seconds"]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    n = int(sum(int(np.prod(v.shape)) for v in model.trainable_variables))
    return row("real: tfpartials report", f"{name} ({n:,} params, {examples} examples)", wall, "s",
               target="<= 60 s (MobileNetV2), <= 120 s (1M CNN, 256 examples)", exit_code=proc.returncode,
               stderr_lines=len(lines), sections=status, section_seconds=timing,
               stderr_tail=lines[-3:] if proc.returncode else None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mobilenetv2,resnet,transformer")
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    rows = []
    for name in args.models.split(","):
        report_examples = 256 if name == "resnet" else None
        if args.report_only:
            build, kind, logits = MODELS[name]
            rows.append(report_row(name, build(), kind, report_examples or args.examples, logits))
        else:
            rows.extend(bench_model(name, args.examples, not args.no_report, report_examples))
        print_rows(rows[-8:])
        # after every model, so a crash keeps what was measured; a report-only run does not replace a full one
        path = write("real_report" if args.report_only else "real", rows)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
