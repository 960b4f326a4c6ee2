# %% [markdown]
# # 7. Curvature of a real network
#
# How curved is the loss of a convolutional network where training left it? This tutorial measures the
# Hessian of a residual CNN with BatchNormalization — top eigenvalue, trace with an error bar, the trace of
# every layer — and writes the HTML report, checking each number by a second, independent route.
#
# **Which network.** The same code runs unchanged on `keras.applications.MobileNetV2(input_shape=(32, 32, 3),
# alpha=0.35, weights=None, classes=10)` (409k parameters, 156 layers). There, one Hessian-vector product on 32
# images costs 0.35 s, but compiling it costs about 15 s for each new block width, and an estimator session
# uses several; that is fine for a report, too slow for a page rebuilt on every docs build. So this page uses a
# compact ResNet-style network (convolutions, BatchNormalization, a residual connection, global pooling) that
# exercises the same code paths in seconds.

# %%
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TFPARTIALS_PROGRESS", "0")

import keras
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display
from sklearn.datasets import load_digits

import tfpartials as tp

keras.utils.set_random_seed(0)

# %% [markdown]
# scikit-learn's digits, upsampled to 16×16; a residual CNN trained for a few epochs on 1,000 images.

# %%
digits = load_digits()
images = np.kron(digits.images / 16.0, np.ones((2, 2)))[..., None].astype("float32")  # (1797, 16, 16, 1)
labels = digits.target.astype("int32")


def conv_bn(h, filters, name):
    h = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=name)(h)
    return keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(h)


inputs = keras.Input((16, 16, 1))
h = keras.layers.ReLU()(conv_bn(inputs, 16, "stem"))
r = keras.layers.ReLU()(conv_bn(h, 16, "res_a"))
h = keras.layers.ReLU()(keras.layers.Add()([h, conv_bn(r, 16, "res_b")]))
h = keras.layers.MaxPooling2D(2)(h)
h = keras.layers.ReLU()(conv_bn(h, 32, "head"))
h = keras.layers.GlobalAveragePooling2D()(h)
outputs = keras.layers.Dense(10, name="logits")(h)
model = keras.Model(inputs, outputs)
model.compile(optimizer=keras.optimizers.Adam(3e-3),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
model.fit(images[:1000], labels[:1000], epochs=4, batch_size=50, verbose=0)
print(f"{model.count_params()} parameters; held-out accuracy "
      f"{model.evaluate(images[1000:], labels[1000:], verbose=0)[1]:.3f}")

# %% [markdown]
# The Hessian of the mean cross-entropy over 128 training images, as an operator: nothing of size P² is ever
# formed, every estimator below only multiplies it with vectors (one forward-over-reverse pass each).
# `training=False` (the default) uses BatchNormalization's moving statistics, so examples do not interact.

# %%
data = (images[:128], labels[:128])
H = tp.HessianOperator(model, data)   # the loss compiled with the model; from_logits taken from it
print(H.shape, H.space.names[:4], "...")

# %% [markdown]
# ## Top eigenvalue, checked by power iteration
#
# Lanczos (`tp.top_eigenvalues`) stops when the Ritz residual is below 1% of the eigenvalue; the residual bounds
# the distance to a true eigenvalue. Power iteration — PyHessian's method, a different algorithm — must land
# on the same value.

# %%
top = tp.top_eigenvalues(H, k=1, tol=1e-2, seed=0)
power = tp.power_iteration(H, tol=1e-5, max_matvecs=300, seed=1)
lam = top.eigenvalues[0]
print(f"Lanczos:         {lam:.4f} (residual {top.residual_norms[0]:.2e}, {top.num_matvecs} matvecs)")
print(f"power iteration: {power.eigenvalues[0]:.4f} ({power.num_matvecs} matvecs)")
assert top.converged
assert abs(power.eigenvalues[0] - lam) <= max(top.residual_norms[0], 1e-2 * lam), (power.eigenvalues, lam)

# %% [markdown]
# ## Trace with an error bar
#
# Hutch++ spends a third of its products on a sketch of the top eigenspace (traced exactly) and the rest on
# Hutchinson's estimator of the remainder; the result carries its standard error.

# %%
trace = tp.hutchpp_trace(H, num_matvecs=45, seed=0)
print(f"tr(H) = {trace.value:.2f} ± {trace.std_error:.2f} ({trace.num_matvecs} matvecs)")

# %% [markdown]
# ## Per-layer traces
#
# `tp.per_layer` runs any estimator on each layer's diagonal block of the operator. The trace of a matrix is
# the sum of its diagonal blocks' traces, so the per-layer estimates — each from its own random probes — must
# add up to the whole within their combined error bars. For the read-out layer (330 parameters) we also build
# the block densely with `tp.hessian(..., wrt="logits")` and compare the estimate with its exact trace.

# %%
layers = tp.per_layer(tp.hutchpp_trace, H, num_matvecs=15, seed=2)
for name, est in layers.items():
    print(f"  {name:10s} {est.value:10.3f} ± {est.std_error:.3f}")
total = sum(e.value for e in layers.values())
total_se = np.sqrt(sum(e.std_error**2 for e in layers.values()) + trace.std_error**2)
print(f"sum of layers {total:.2f} vs whole {trace.value:.2f}: difference {abs(total - trace.value):.2f}, "
      f"combined standard error {total_se:.2f}")
assert abs(total - trace.value) <= 4 * total_se + 1e-3 * abs(trace.value)

dense_logits = tp.hessian(model, data, wrt="logits").matrix
exact_logits = float(np.trace(dense_logits))
est = layers["logits"]
print(f"read-out block: estimate {est.value:.4f} ± {est.std_error:.4f}, exact {exact_logits:.4f}")
assert abs(est.value - exact_logits) <= 4 * est.std_error + 1e-3 * abs(exact_logits)

fig, ax = plt.subplots(figsize=(7, 3.2))
names = list(layers)
ax.bar(names, [layers[n].value for n in names], yerr=[2 * layers[n].std_error for n in names], capsize=3)
ax.set(ylabel="trace of the layer's Hessian block", title="Per-layer Hessian traces (± 2 standard errors)")
ax.tick_params(axis="x", rotation=45)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The report
#
# `tp.build_report` puts all of this (and gradients, per-example statistics, attributions, ...) in one HTML
# page sized to a time budget; here only the gradient and curvature sections, on the same 128 probe images.
# `tfpartials report MODEL --data D --out DIR` does the same from the command line. Its top eigenvalue (Lanczos
# at tolerance 1e-3) must agree with ours.

# %%
out = Path(tempfile.mkdtemp()) / "report"
results = tp.build_report(model, data, out_dir=out, time_budget=20, quiet=True, probe_examples=128, top_k=1,
                          skip=["per-example", "attributions", "uncertainty", "influence", "sensitivity", "check"])
report_top = results["summary"]["top_eigenvalue"]
assert results["sections"]["curvature"]["results"]["num_probe_examples"] == 128
print(f"report: top eigenvalue {report_top:.4f}; files: {sorted(p.name for p in out.iterdir())}")
assert abs(report_top - lam) <= max(top.residual_norms[0], 1e-2 * lam)
for png in ("curvature_layers.png", "spectrum.png"):
    if (out / png).exists():
        display(Image(filename=str(out / png)))
