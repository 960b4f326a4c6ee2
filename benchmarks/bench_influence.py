"""Influence functions: time, peak memory and quality per method; constant memory in the training-set size.

Rows (each method runs in its own process, so that its peak RSS, VmHWM, is its own):
* flipped digits: an MLP 64-16-10 (L2 1e-4) trained on 1,000 of scikit-learn's digits with 5% of the labels
  flipped; self-influence by every method; the share of flipped examples among the top 10% by self-influence
  (target >= 50%; random: 10%), wall time and peak RSS;
* 100k examples: influence of a 100,000-example training set (MLP 16-16-1, mse, streamed from a generator
  through tf.data) on 8 test examples by every method; peak RSS against the same run on 10,000 examples
  (target: constant memory, <= 1.15x; the 8 x N scores themselves are 6 MiB at 100k).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_rows, row, write  # noqa: E402

METHODS = ("exact", "cg", "lissa", "arnoldi", "ekfac", "tracin")
# iteration caps keep the run short: cg and lissa self-influence is one solve per training example
OPTIONS = {"cg": {"tol": 1e-3, "max_iterations": 50}, "lissa": {"tol": 1e-3, "max_iterations": 50},
           "arnoldi": {"rank": 30}}
LARGE_OPTIONS = {"cg": {"tol": 1e-3, "max_iterations": 20}, "lissa": {"tol": 1e-3, "max_iterations": 20},
                 "arnoldi": {"rank": 10}}

DIGITS_CHILD = r"""
import os, sys, time, json, warnings
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
warnings.simplefilter("ignore")
import numpy as np, keras
import tfpartials as tp
root, method, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
model = tp.load_model(os.path.join(root, "digits_mlp.keras"))
z = np.load(os.path.join(root, "digits.npz"))
t0 = time.perf_counter()
s = tp.self_influence(model, (z["x"], z["y"]), loss="sparse_categorical_crossentropy", from_logits=True,
                      method=method, damping=1e-3, quiet=True, **options)
dt = time.perf_counter() - t0
found = float(np.isin(z["flipped"], s.top(len(z["x"]) // 10)).mean())
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(json.dumps({"seconds": dt, "peak_rss_mib": int(hwm) / 1024, "found": found}))
"""

LARGE_CHILD = r"""
import os, sys, time, json, warnings
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
warnings.simplefilter("ignore")
import numpy as np, tensorflow as tf, keras
import tfpartials as tp
n, method, options = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(1)])
def gen():
    rng = np.random.default_rng(0)
    for start in range(0, n, 1000):
        k = min(1000, n - start)
        x = rng.normal(size=(k, 16)).astype("float32")
        yield x, np.sin(x[:, :1]).astype("float32") + 0.1 * rng.normal(size=(k, 1)).astype("float32")
sig = (tf.TensorSpec((None, 16), tf.float32), tf.TensorSpec((None, 1), tf.float32))
train = tf.data.Dataset.from_generator(gen, output_signature=sig)
rng = np.random.default_rng(1)
xt = rng.normal(size=(8, 16)).astype("float32"); yt = np.sin(xt[:, :1]).astype("float32")
t0 = time.perf_counter()
res = tp.influence(model, train, (xt, yt), loss="mse", method=method, damping=1e-2, batch_size=1024, quiet=True,
                   **options)
dt = time.perf_counter() - t0
assert res.scores.shape == (8, n) and np.isfinite(res.scores).all()
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(json.dumps({"n": n, "seconds": dt, "peak_rss_mib": int(hwm) / 1024}))
"""


def _child(script: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "child failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _flipped_digits(root: Path, n: int = 1000, frac: float = 0.05, seed: int = 0) -> None:
    """Train the MLP on digits with flipped labels (in this process) and save model and data for the children."""
    import keras
    from sklearn.datasets import load_digits

    data = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.target))[:n]
    x = (data.data[order] / 16.0).astype("float32")
    y = data.target[order].astype("int32")
    flipped = rng.choice(n, size=int(round(frac * n)), replace=False)
    y[flipped] = (y[flipped] + rng.integers(1, 10, size=flipped.size)) % 10
    keras.utils.set_random_seed(seed)
    l2 = keras.regularizers.L2(1e-4)
    model = keras.Sequential([keras.Input((64,)),
                              keras.layers.Dense(16, activation="tanh", kernel_regularizer=l2, name="hidden"),
                              keras.layers.Dense(10, kernel_regularizer=l2, name="logits")])
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=n, epochs=600, verbose=0)
    model.save(root / "digits_mlp.keras")
    np.savez(root / "digits.npz", x=x, y=y, flipped=np.sort(flipped))


def run(quick: bool = False) -> list[dict]:
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _flipped_digits(root, n=500 if quick else 1000)
        for method in METHODS:
            try:
                r = _child(DIGITS_CHILD, str(root), method, json.dumps(OPTIONS.get(method, {})))
            except RuntimeError as exc:
                print(f"digits {method}: failed: {exc}", file=sys.stderr)
                continue
            opts = ", ".join(f"{k}={v}" for k, v in OPTIONS.get(method, {}).items())
            rows.append(row("influence", f"flipped digits (MLP 64-16-10, 1k examples): {method}"
                            f"{' (' + opts + ')' if opts else ''} self-influence, "
                            "flipped found in top 10%", r["found"], "fraction", "random", 0.10, ">= 0.5",
                            r["found"] >= 0.5, seconds=r["seconds"], peak_rss_mib=r["peak_rss_mib"]))
            rows.append(row("influence", f"flipped digits: {method} time", r["seconds"], "s", None, None, None, None))
            rows.append(row("influence", f"flipped digits: {method} peak RSS", r["peak_rss_mib"], "MiB", None, None,
                            None, None))
    small, large = (5_000, 20_000) if quick else (10_000, 100_000)
    for method in METHODS:
        options = json.dumps(LARGE_OPTIONS.get(method, {}))
        try:
            a, b = _child(LARGE_CHILD, str(small), method, options), _child(LARGE_CHILD, str(large), method, options)
        except RuntimeError as exc:
            print(f"large {method}: failed: {exc}", file=sys.stderr)
            continue
        growth = b["peak_rss_mib"] / a["peak_rss_mib"]
        rows.append(row("influence", f"{method}: peak RSS, {large // 1000}k vs {small // 1000}k training examples "
                        "(8 test)", b["peak_rss_mib"], "MiB", f"{small // 1000}k examples", a["peak_rss_mib"],
                        "constant memory (<=1.15x)", growth <= 1.15))
        rows.append(row("influence", f"{method}: time, {large // 1000}k training examples x 8 test (MLP 16-16-1)",
                        b["seconds"], "s", f"{small // 1000}k examples", a["seconds"], None, None))
    return rows


if __name__ == "__main__":
    t0 = time.perf_counter()
    rows = run(quick="--quick" in sys.argv)
    print_rows(rows)
    print(f"wrote {write('influence', rows)} in {time.perf_counter() - t0:.0f} s")
