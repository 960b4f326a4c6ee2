"""Convolutions under pfor: many-column HVPs and per-example gradients on real CNNs, loop vs vectorised.

For each model (MobileNetV2 alpha 0.35 on 32x32, the ResNet-like ``resnet_small`` of bench_real.py) and 64
random examples: the first call (tracing included) and the steady time (median) of ``HessianOperator.matmat``
with 1, 16 and 64 columns in the compiled loop over the columns (``method="loop"``) and vectorised
(``method="forward"``, with tfpartials' pfor rules for convolutions), the dataset gradient's time (for the
HVP/gradient ratio), and per-example gradients of the 64 examples looped vs vectorised. Loop and vectorised
runs alternate in one process, so the shared machine's load hits both alike.

    python benchmarks/bench_conv_pfor.py [--models mobilenetv2 resnet] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_rows, row, write  # noqa: E402
from bench_real import mobilenetv2, resnet_small  # noqa: E402

MODELS = {"mobilenetv2": mobilenetv2, "resnet": resnet_small}
MODES = {"loop": "loop", "vectorised": "forward"}


def _time(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(name: str, repeat: int, columns: list[int], n: int = 64) -> list[dict]:
    import keras

    import tfpartials as tp

    keras.utils.set_random_seed(0)
    model = MODELS[name]()
    rng = np.random.default_rng(0)
    x = rng.random((n, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, n).astype("int32")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=name == "resnet")  # MobileNetV2 ends in softmax
    rows = []
    warnings.simplefilter("error", tp.FallbackWarning)  # a silent fallback would make the comparison meaningless

    tp.gradients(model, (x, y), loss=loss, batch_size=n, quiet=True)
    grad = statistics.median(_time(lambda: tp.gradients(model, (x, y), loss=loss, batch_size=n, quiet=True))
                             for _ in range(repeat))
    rows.append(row("conv_pfor", f"{name}/gradient", grad, "s", params=model.count_params()))
    print(f"{name}: gradient {grad:.3f} s", flush=True)

    ops = {m: tp.HessianOperator(model, (x, y), loss=loss, batch_size=n, method=meth, quiet=True)
           for m, meth in MODES.items()}
    size = ops["loop"].shape[0]
    for k in columns:
        V = rng.normal(size=(size, k)).astype("float32")
        first = {m: _time(lambda m=m, V=V: ops[m].matmat(V)) for m in MODES}
        steady = {m: [] for m in MODES}
        for _ in range(repeat):
            for m in MODES:
                steady[m].append(_time(lambda m=m, V=V: ops[m].matmat(V)))
        a, b = ops["loop"].matmat(V).numpy(), ops["vectorised"].matmat(V).numpy()
        err = float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30))
        for m in MODES:
            med = statistics.median(steady[m])
            base = statistics.median(steady["loop"])
            rows.append(row("conv_pfor", f"{name}/hvp/{k}/{m}/first", first[m], "s"))
            rows.append(row("conv_pfor", f"{name}/hvp/{k}/{m}/steady", med, "s", baseline="loop",
                            baseline_value=base, per_gradient=med / grad, relative_difference=err))
            print(f"{name}: HVP k={k:<3} {m:<10} first {first[m]:8.2f} s  steady {med:8.3f} s "
                  f"({med / grad:.1f} gradients)  rel.diff loop/vec {err:.1e}", flush=True)

    def per_example(vectorize):
        return tp.per_example_gradients(model, (x, y), loss=loss, batch_size=n, quiet=True, vectorize=vectorize)

    flags = {"loop": False, "vectorised": True}
    first = {m: _time(lambda m=m: per_example(flags[m])) for m in flags}
    steady = {m: [] for m in flags}
    for _ in range(repeat):
        for m in flags:
            steady[m].append(_time(lambda m=m: per_example(flags[m])))
    a, b = per_example(False), per_example(True)
    err = max(float(np.max(np.abs(a[k] - b[k])) / max(np.max(np.abs(a[k])), 1e-30)) for k in a)
    for m in flags:
        med = statistics.median(steady[m])
        rows.append(row("conv_pfor", f"{name}/per_example/{n}/{m}/first", first[m], "s"))
        rows.append(row("conv_pfor", f"{name}/per_example/{n}/{m}/steady", med, "s", baseline="loop",
                        baseline_value=statistics.median(steady["loop"]), relative_difference=err))
        print(f"{name}: per-example x{n} {m:<10} first {first[m]:8.2f} s  steady {med:8.3f} s  "
              f"rel.diff {err:.1e}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["resnet", "mobilenetv2"])
    p.add_argument("--columns", nargs="*", type=int, default=[1, 16, 64], help="HVP column counts (none: skip)")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    rows = []
    for name in args.models:
        rows += bench(name, args.repeat, args.columns)
    print_rows(rows)
    print(write("conv_pfor_" + "_".join(args.models), rows))


if __name__ == "__main__":
    main()
