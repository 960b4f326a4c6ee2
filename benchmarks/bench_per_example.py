"""Per-example gradients of an MLP 784-256-10 (batch 256, softmax cross-entropy).

Rows (all in one process, on the same weights and data):
* vectorised (one compiled ``tf.vectorized_map`` pass, steady state) vs a Python loop over the examples
  calling a compiled single-example gradient (target >= 10x faster);
* vectorised vs ``torch.func.vmap(torch.func.grad(...))`` on the same weights when torch imports
  (target <= 1.5x torch's time);
* the public call ``per_example_gradients(model, (x, y))`` end to end on a fresh objective (tracing included),
  for information.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_time, peers, print_rows, row, write  # noqa: E402

D_IN, HIDDEN, CLASSES, BATCH = 784, 256, 10, 256


def _setup():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((D_IN,)), keras.layers.Dense(HIDDEN, activation="relu", name="h"),
                              keras.layers.Dense(CLASSES, name="logits")])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, D_IN)).astype("float32")
    y = rng.integers(0, CLASSES, size=BATCH).astype("int32")
    return model, x, y


TORCH_CHILD = r"""
import sys, json, time
import numpy as np, torch
from torch.func import functional_call, grad, vmap
z = np.load(sys.argv[1]); repeat = int(sys.argv[2])
(d, h), k = z["w1"].shape, z["w2"].shape[1]
net = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.ReLU(), torch.nn.Linear(h, k))
params = {"0.weight": torch.tensor(z["w1"].T.copy()), "0.bias": torch.tensor(z["b1"]),
          "2.weight": torch.tensor(z["w2"].T.copy()), "2.bias": torch.tensor(z["b2"])}
x, y = torch.tensor(z["x"]), torch.tensor(z["y"].astype("int64"))
def loss(p, xi, yi):
    return torch.nn.functional.cross_entropy(functional_call(net, p, (xi[None],)), yi[None])
per_example = vmap(grad(loss), in_dims=(None, 0, 0))
g = per_example(params, x, y)
times = []
for _ in range(repeat):
    t0 = time.perf_counter(); per_example(params, x, y); times.append(time.perf_counter() - t0)
np.save(sys.argv[3], g["0.weight"].numpy().transpose(0, 2, 1))
print(json.dumps({"seconds": min(times), "threads": torch.get_num_threads()}))
"""


def _torch_vmap(model, x, y, repeat):
    """torch.func.vmap(grad) in its own process (no thread-pool contention with TensorFlow), same weights."""
    import json
    import subprocess
    import tempfile

    w1, b1, w2, b2 = (v.numpy() for v in model.trainable_variables)
    with tempfile.TemporaryDirectory() as tmp:
        inputs, grads = Path(tmp) / "in.npz", Path(tmp) / "g.npy"
        np.savez(inputs, w1=w1, b1=b1, w2=w2, b2=b2, x=x, y=y)
        out = subprocess.run([sys.executable, "-c", TORCH_CHILD, str(inputs), str(repeat), str(grads)],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])["seconds"], np.load(grads)


def run(quick: bool = False) -> list[dict]:
    import tensorflow as tf

    from tfpartials.autodiff.per_example import PerExampleEngine, per_example_gradients
    from tfpartials.autodiff.problem import prepare

    repeat = 3 if quick else 10
    model, x, y = _setup()
    loss = "sparse_categorical_crossentropy"
    obj, _ = prepare(model, (x, y), loss, None, from_logits=True)
    engine = PerExampleEngine(obj)
    params = obj.space.values()
    xt, yt = tf.constant(x), tf.constant(y)
    ours = engine(params, xt, yt)
    vec = best_time(lambda: engine(params, xt, yt), repeat=repeat)

    @tf.function(reduce_retracing=True)
    def single(params, xi, yi):
        with tf.GradientTape() as tape:
            tape.watch(params)
            value = obj.per_example_loss(params, xi, yi)[0]
        return tape.gradient(value, params)

    def loop():
        return [single(params, xt[i:i + 1], yt[i:i + 1]) for i in range(BATCH)]

    looped = loop()
    np.testing.assert_allclose(looped[7][0].numpy(), ours[0][7].numpy(), rtol=1e-4, atol=1e-6)
    loop_s = best_time(loop, repeat=max(2, repeat // 3))
    rows = [row("per_example", f"MLP {D_IN}-{HIDDEN}-{CLASSES}, batch {BATCH}: vectorised vs Python loop", vec,
                "s", "compiled per-example loop", loop_s, ">= 10x faster than the loop", loop_s / vec >= 10,
                speedup=loop_s / vec)]
    if peers()["torch"]:
        torch_s, torch_g = _torch_vmap(model, x, y, repeat)
        np.testing.assert_allclose(ours[0].numpy(), torch_g, rtol=1e-3, atol=1e-5)
        rows.append(row("per_example", f"MLP {D_IN}-{HIDDEN}-{CLASSES}, batch {BATCH}: vs torch vmap(grad)", vec,
                        "s", "torch.func.vmap(grad)", torch_s, "<= 1.5x torch's time", vec / torch_s <= 1.5))
    t0 = time.perf_counter()
    per_example_gradients(model, (x, y), loss=loss, from_logits=True, quiet=True)
    cold = time.perf_counter() - t0
    rows.append(row("per_example", f"public call end to end incl. tracing, batch {BATCH}", cold, "s", None, None,
                    None, None))
    return rows


if __name__ == "__main__":
    t0 = time.perf_counter()
    rows = run(quick="--quick" in sys.argv)
    print_rows(rows)
    print(f"wrote {write('per_example', rows)} in {time.perf_counter() - t0:.0f} s")
