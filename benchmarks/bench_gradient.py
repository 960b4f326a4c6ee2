"""Dataset gradient: time per example, and peak memory constant in the dataset size (10k vs 100k examples).

Each dataset size runs in its own process so that its peak RSS (ru_maxrss) is its own. The data is streamed
from a generator through tf.data, so nothing of size N is ever held in memory by the benchmark itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_rows, row, write  # noqa: E402

CHILD = r"""
import os, sys, time, json
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np, tensorflow as tf, keras
import tfpartials as tp
n = int(sys.argv[1])
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, activation="tanh"), keras.layers.Dense(1)])
def gen():
    rng = np.random.default_rng(0)
    for start in range(0, n, 1000):
        k = min(1000, n - start)
        yield rng.normal(size=(k, 32)).astype("float32"), rng.normal(size=(k, 1)).astype("float32")
sig = (tf.TensorSpec((None, 32), tf.float32), tf.TensorSpec((None, 1), tf.float32))
ds = tf.data.Dataset.from_generator(gen, output_signature=sig)
t0 = time.perf_counter()
g = tp.gradients(model, ds, loss="mse", batch_size=512, quiet=True)
dt = time.perf_counter() - t0
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]  # own peak, not inherited
print(json.dumps({"n": n, "seconds": dt, "peak_rss_mib": int(hwm) / 1024}))
"""


def _child(n: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(n)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> list[dict]:
    small, large = (2_000, 20_000) if quick else (10_000, 100_000)
    a, b = _child(small), _child(large)
    growth = b["peak_rss_mib"] / a["peak_rss_mib"]
    return [
        row("gradient", f"peak RSS, {large // 1000}k vs {small // 1000}k examples (streamed)", b["peak_rss_mib"],
            "MiB", f"{small // 1000}k examples", a["peak_rss_mib"], "constant memory (<=1.15x)", growth <= 1.15),
        row("gradient", f"time per 1k examples, MLP 32-64-1, {large // 1000}k examples",
            1000 * b["seconds"] / b["n"], "s", None, None, None, None),
    ]


if __name__ == "__main__":
    t0 = time.perf_counter()
    rows = run(quick="--quick" in sys.argv)
    print_rows(rows)
    print(f"wrote {write('gradient', rows)} in {time.perf_counter() - t0:.0f} s")
