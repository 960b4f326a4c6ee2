"""HVP throughput over a fixed dataset with 1 vs 2 logical CPU devices (MirroredStrategy).

Logical devices must be configured before TensorFlow starts, so each device count runs in its own process.
On a 2-core machine two logical devices share the same cores: this measures the overhead of the distributed
code path honestly; it is not expected to be faster.
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
devices, n = int(sys.argv[1]), int(sys.argv[2])
from tfpartials.distribute import make_strategy
strategy = make_strategy(devices)
import numpy as np, keras
import tfpartials as tp
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(128, activation="tanh"),
                          keras.layers.Dense(128, activation="tanh"), keras.layers.Dense(1)])
rng = np.random.default_rng(0)
x = rng.normal(size=(n, 32)).astype("float32"); y = rng.normal(size=(n, 1)).astype("float32")
op = tp.HessianOperator(model, (x, y), loss="mse", batch_size=512, strategy=strategy)
v = rng.normal(size=op.n).astype("float32")
op @ v  # trace
best = 1e9
for _ in range(3):
    t0 = time.perf_counter(); op @ v; best = min(best, time.perf_counter() - t0)
print(json.dumps({"devices": devices, "seconds": best, "examples_per_s": n / best}))
"""


def _child(devices: int, n: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(devices), str(n)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> list[dict]:
    n = 4096 if quick else 16384
    one, two = _child(1, n), _child(2, n)
    return [row("distribute", f"HVP throughput, 2 vs 1 logical CPU devices ({n} examples)",
                two["examples_per_s"], "ex/s", "1 device", one["examples_per_s"],
                "honest number (2 cores shared)", None)]


if __name__ == "__main__":
    t0 = time.perf_counter()
    rows = run(quick="--quick" in sys.argv)
    print_rows(rows)
    print(f"wrote {write('distribute', rows)} in {time.perf_counter() - t0:.0f} s")
