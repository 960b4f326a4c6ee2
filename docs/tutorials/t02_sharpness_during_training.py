# %% [markdown]
# # 2. Sharpness during training
#
# The top eigenvalue of the loss Hessian (the *sharpness*) and its trace say how curved the loss is where
# the optimiser stands. Gradient descent with step size η is stable on a quadratic only while the sharpness
# stays below 2/η; in practice the sharpness rises during training (progressive sharpening) towards that
# bound (Cohen et al. 2021). `tp.CurvatureMonitor` measures both on a fixed probe batch after every epoch,
# without touching the model or the optimiser, and writes them to the `logs` dict and to TensorBoard.

# %%
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TFPARTIALS_PROGRESS", "0")

import keras
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf

import tfpartials as tp

keras.utils.set_random_seed(0)

# %% [markdown]
# A small regression problem, generated: y = sin(3 x₁) + x₂² + noise, fitted by a tanh network with plain SGD.

# %%
rng = np.random.default_rng(0)
x = rng.uniform(-1, 1, size=(512, 2)).astype("float32")
y = (np.sin(3 * x[:, :1]) + x[:, 1:] ** 2 + 0.05 * rng.normal(size=(512, 1))).astype("float32")
probe = (x[:128], y[:128])

model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(16, activation="tanh"),
                          keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(1)])
learning_rate = 0.1
model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="mse")

log_dir = Path(tempfile.mkdtemp(prefix="tfpartials-sharpness-"))
monitor = tp.CurvatureMonitor(probe, every_n_epochs=1, top_k=1, trace_matvecs=30, seed=0, log_dir=str(log_dir))
history = model.fit(x, y, epochs=25, batch_size=64, verbose=0, callbacks=[monitor])
h = history.history
print("logged keys:", sorted(k for k in h if k.startswith("hessian")))
print(f"final loss {h['loss'][-1]:.4f}, top eigenvalue {h['hessian/top_eigenvalue'][-1]:.3f}, "
      f"trace {h['hessian/trace'][-1]:.2f} ± {h['hessian/trace_std_error'][-1]:.2f}")

# %% [markdown]
# ## The same numbers from TensorBoard
#
# `tensorboard --logdir DIR` shows them under *Scalars*; here we read the event files back, which is what
# TensorBoard does.


# %%
def read_scalars(directory):
    out = {}
    for path in sorted(Path(directory).rglob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                number = tf.make_ndarray(value.tensor) if value.HasField("tensor") else value.simple_value
                out.setdefault(value.tag, []).append((event.step, float(number)))
    return {tag: np.array(sorted(points)) for tag, points in out.items()}


scalars = read_scalars(log_dir)
print("TensorBoard tags:", sorted(scalars))
top = scalars["hessian/top_eigenvalue"]
assert np.allclose(top[:, 1], h["hessian/top_eigenvalue"], rtol=1e-6)

fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
axes[0].plot(h["loss"])
axes[0].set(title="training loss", xlabel="epoch", yscale="log")
axes[1].plot(top[:, 0], top[:, 1], "o-", label="top eigenvalue")
axes[1].axhline(2 / learning_rate, color="k", ls=":", label="2/η (stability bound of GD)")
axes[1].set(title="sharpness", xlabel="optimizer step")
axes[1].legend()
tr = scalars["hessian/trace"]
se = scalars["hessian/trace_std_error"]
axes[2].errorbar(tr[:, 0], tr[:, 1], yerr=se[:, 1], fmt="o-", capsize=2)
axes[2].set(title="Hessian trace (Hutch++, ± 1 s.e.)", xlabel="optimizer step")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Checked against the dense Hessian
#
# The monitor uses Lanczos and Hutch++ on Hessian-vector products. On this 337-parameter model the whole
# Hessian of the probe loss fits in memory, so we build it independently — nested tapes on a float64 copy
# of the final weights (no normalisation layer, so the nested tape is right here) — and compare its largest
# eigenvalue and its trace with what the monitor logged last.

# %%
model64 = keras.Sequential([keras.Input((2,), dtype="float64"),
                            keras.layers.Dense(16, activation="tanh", dtype="float64"),
                            keras.layers.Dense(16, activation="tanh", dtype="float64"),
                            keras.layers.Dense(1, dtype="float64")])
model64.set_weights([w.astype("float64") for w in model.get_weights()])
xp, yp = probe[0].astype("float64"), probe[1].astype("float64")
variables = model64.trainable_variables
with tf.GradientTape() as outer:
    with tf.GradientTape() as inner:
        loss = tf.reduce_mean(tf.square(yp - model64(xp)))
    flat = tf.concat([tf.reshape(g, [-1]) for g in inner.gradient(loss, variables)], axis=0)
blocks = outer.jacobian(flat, variables)
H = tf.concat([tf.reshape(b, [flat.shape[0], -1]) for b in blocks], axis=1).numpy()
eigs = np.linalg.eigvalsh((H + H.T) / 2)

lam, trace_est = monitor.last_eigenvalues.eigenvalues[0], monitor.last_trace
print(f"top eigenvalue: monitor {lam:.6f}   dense {eigs[-1]:.6f}   rel. diff {abs(lam - eigs[-1]) / eigs[-1]:.1e}")
print(f"trace: monitor {trace_est.value:.3f} ± {trace_est.std_error:.3f}   dense {np.trace(H):.3f}")
assert abs(lam - eigs[-1]) <= 1e-3 * abs(eigs[-1])
assert abs(trace_est.value - np.trace(H)) <= 3 * trace_est.std_error + 1e-3 * abs(np.trace(H))

fig, ax = plt.subplots(figsize=(6, 3))
ax.hist(eigs, bins=80, log=True)
ax.axvline(lam, color="r", ls="--", label="monitor: top eigenvalue")
ax.set(title="all 337 eigenvalues of the probe Hessian (dense)", xlabel="eigenvalue")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# Most eigenvalues sit near zero and a few outliers carry the curvature: the typical Hessian spectrum of a
# trained network (Sagun et al. 2017; Ghorbani et al. 2019). To record the same during your own training:
#
# ```python
# model.fit(x, y, callbacks=[tp.CurvatureMonitor((x_probe, y_probe), log_dir="logs/curvature"),
#                            tp.GradientMonitor((x_probe, y_probe), log_dir="logs/curvature")])
# ```
#
# Each call costs about `k + 10` to 30 Hessian-vector products for the eigenvalue plus `trace_matvecs` for
# the trace, one product about two gradients of the probe batch: keep the probe batch small.
