# %% [markdown]
# # 1. Three GradientTape recipes, and what they become
#
# The usual answer to "how do I get partial derivatives of a trained TensorFlow 2 network?" gives three
# `GradientTape` recipes: the loss gradient of every variable, gradients of single layers, and the Hessian
# by nested tapes. On TensorFlow 2.21 with Keras 3, the first works, the second and third raise, and the
# obvious repair of the third gives a Hessian that is **silently wrong** as soon as the model normalises
# with `LayerNormalization`. This page runs each recipe, shows what happens, and checks every number
# against an independent reference: a closed form or float64 central differences.

# %%
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TFPARTIALS_PROGRESS", "0")

import keras
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf

import tfpartials as tp

keras.utils.set_random_seed(0)
print("TensorFlow", tf.__version__, "| Keras", keras.__version__, "| tfpartials", tp.__version__)

# %% [markdown]
# The model and data of the recipes: a 5-10-1 ReLU network, one example, squared error. We build it in
# float64 so that comparisons can be made to 1e-10.

# %%
model = keras.Sequential([
    keras.Input((5,), dtype="float64"),
    keras.layers.Dense(10, activation="relu", dtype="float64"),
    keras.layers.Dense(1, dtype="float64"),
])
x = np.array([[1.0, 2.0, 3.0, 4.0, 5.0]])
y_true = np.array([[10.0]])


def loss_fn(y_true, y_pred):
    return tf.reduce_mean(tf.square(y_true - y_pred))


# %% [markdown]
# ## Recipe 1: the loss gradient — works
#
# One tape, one call to `tape.gradient`. tfpartials gives the same numbers by name, for any dataset size
# (the mean over examples is counted exactly, batch by batch).

# %%
with tf.GradientTape() as tape:
    loss = loss_fn(y_true, model(x))
grads = tape.gradient(loss, model.trainable_variables)

g = tp.gradients(model, (x, y_true), loss="mse")
names = tp.ParameterSpace(model).names  # "<layer>/<variable>", in the order of trainable_variables
for name, grad in zip(names, grads):
    print(f"{name:14s} max |tape - tfpartials| = {np.max(np.abs(grad.numpy() - g[name])):.1e}")

# closed form for the output bias: d/db (f - y)^2 = 2 (f - y)
residual = model(x).numpy()[0, 0] - y_true[0, 0]
print("dL/d(output bias):", g["dense_1/bias"][0], " closed form 2 (f - y):", 2 * residual)
assert np.isclose(g["dense_1/bias"][0], 2 * residual, rtol=1e-12)
assert all(np.allclose(gr.numpy(), g[name], rtol=1e-12, atol=1e-14) for name, gr in zip(names, grads))

# %% [markdown]
# ## Recipe 2: gradients of single layers — raises
#
# The recipe calls `tape.gradient` twice on one tape. A tape that is not `persistent=True` releases its
# resources after the first call, so the second raises.

# %%
with tf.GradientTape() as tape:
    loss = loss_fn(y_true, model(x))
layer1_kernel = model.layers[0].kernel
layer2_bias = model.layers[1].bias
first = tape.gradient(loss, layer1_kernel)
try:
    tape.gradient(loss, layer2_bias)
    second_call = "no error"
except RuntimeError as err:
    second_call = f"RuntimeError: {err}"
print(second_call)
assert second_call.startswith("RuntimeError")

# %% [markdown]
# With tfpartials a subset of variables is chosen by name, glob or layer, and only those are differentiated:

# %%
part = tp.gradients(model, (x, y_true), loss="mse", wrt=["dense/kernel", "dense_1/bias"])
print({name: value.shape for name, value in part.items()})
assert np.allclose(part["dense/kernel"], first.numpy(), rtol=1e-12)

# %% [markdown]
# ## Recipe 3: the Hessian by nested tapes — raises
#
# The inner tape's gradient is a *list* of tensors, one per variable; `outer_tape.jacobian` wants one
# tensor as its target.

# %%
with tf.GradientTape() as outer_tape:
    with tf.GradientTape() as inner_tape:
        loss = loss_fn(y_true, model(x))
    gradients = inner_tape.gradient(loss, model.trainable_variables)
try:
    outer_tape.jacobian(gradients, model.trainable_variables)
    recipe3 = "no error"
except (AttributeError, TypeError, ValueError) as err:
    recipe3 = f"{type(err).__name__}: {err}"
print(recipe3)
assert recipe3 != "no error"

# %% [markdown]
# The usual repair flattens the gradients into one vector inside the outer tape. This gives the full
# Hessian, which we compare with `tp.hessian` (built from exact Hessian-vector products, chunked under a
# memory budget, with named blocks). The output bias has a closed form: ∂²L/∂b² = 2.


# %%
def nested_tape_hessian(model, x, y, loss_fn):
    variables = model.trainable_variables
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            loss = loss_fn(y, model(x))
        flat = tf.concat([tf.reshape(g, [-1]) for g in inner.gradient(loss, variables)], axis=0)
    blocks = outer.jacobian(flat, variables)
    return tf.concat([tf.reshape(b, [flat.shape[0], -1]) for b in blocks], axis=1).numpy()


H_tape = nested_tape_hessian(model, x, y_true, loss_fn)
H = tp.hessian(model, (x, y_true), loss="mse")
print("n =", H.matrix.shape[0], "| max |tape - tfpartials| =", np.max(np.abs(H_tape - H.matrix)))
print("d2L/db2 of the output bias:", H.block("dense_1/bias", "dense_1/bias").ravel()[0], "(closed form 2)")
assert np.isclose(H.block("dense_1/bias", "dense_1/bias").ravel()[0], 2.0, rtol=1e-12)
assert np.allclose(H_tape, H.matrix, rtol=1e-10, atol=1e-12)

fig, axes = plt.subplots(1, 2, figsize=(9, 4))
lim = np.max(np.abs(H.matrix))
for ax, mat, title in [(axes[0], H.matrix, "tp.hessian"), (axes[1], H_tape - H.matrix, "nested tape − tp.hessian")]:
    im = ax.imshow(mat, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_title(title)
    for off in H.offsets[1:-1]:
        ax.axhline(off - 0.5, color="k", lw=0.5)
        ax.axvline(off - 0.5, color="k", lw=0.5)
fig.colorbar(im, ax=axes, shrink=0.8)
plt.show()

# %% [markdown]
# ## Where the repaired nested tape is wrong: LayerNormalization
#
# Keras' TensorFlow backend computes LayerNormalization's statistics with `tf.nn.moments`, whose variance
# is taken around `stop_gradient(mean)`. First derivatives are unaffected (the gradient through the mean
# vanishes there), but every second derivative loses a term. A tape cannot see this: it differentiates the
# graph it is given. An independent reference can: central differences of the (correct) gradient in
# float64, `Hv ≈ (g(θ + εv) − g(θ − εv)) / 2ε`, accurate to about 1e-9 here.

# %%
ln_model = keras.Sequential([
    keras.Input((6,), dtype="float64"),
    keras.layers.Dense(8, activation="tanh", dtype="float64"),
    keras.layers.LayerNormalization(dtype="float64"),
    keras.layers.Dense(1, dtype="float64"),
])
rng = np.random.default_rng(0)
xs, ys = rng.normal(size=(32, 6)), rng.normal(size=(32, 1))
variables = ln_model.trainable_variables
v = [rng.normal(size=var.shape) for var in variables]


def flat_gradient():
    with tf.GradientTape() as t:
        loss = loss_fn(ys, ln_model(xs))
    return np.concatenate([g.numpy().ravel() for g in t.gradient(loss, variables)])


def central_difference_hvp(eps=1e-5):
    theta = [var.numpy() for var in variables]
    out = []
    for sign in (+1, -1):
        for var, t0, d in zip(variables, theta, v):
            var.assign(t0 + sign * eps * d)
        out.append(flat_gradient())
    for var, t0 in zip(variables, theta):
        var.assign(t0)
    return (out[0] - out[1]) / (2 * eps)


def nested_tape_hvp():
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            loss = loss_fn(ys, ln_model(xs))
        gs = inner.gradient(loss, variables)
        dot = tf.add_n([tf.reduce_sum(g * d) for g, d in zip(gs, v)])
    return np.concatenate([h.numpy().ravel() for h in outer.gradient(dot, variables)])


reference = central_difference_hvp()
names = tp.ParameterSpace(ln_model).names
hv_tp = tp.hvp(ln_model, (xs, ys), dict(zip(names, v)), loss="mse")
estimates = {"nested tape": nested_tape_hvp(),
             "tfpartials": np.concatenate([hv_tp[n].ravel() for n in names])}


def rel_err(a):
    return np.linalg.norm(a - reference) / np.linalg.norm(reference)


errors = {k: rel_err(a) for k, a in estimates.items()}
for k, e in errors.items():
    print(f"{k:12s} relative error of Hv against float64 central differences: {e:.2e}")

# %%
offsets = np.cumsum([0] + [int(np.prod(var.shape)) for var in variables])
per_var = {k: [np.linalg.norm((a - reference)[s:e]) / max(np.linalg.norm(reference[s:e]), 1e-300)
               for s, e in zip(offsets[:-1], offsets[1:])] for k, a in estimates.items()}
fig, ax = plt.subplots(figsize=(8, 3.5))
width = 0.38
pos = np.arange(len(names))
for i, (k, errs) in enumerate(per_var.items()):
    ax.bar(pos + (i - 0.5) * width, np.maximum(errs, 1e-17), width, label=k)
ax.set_yscale("log")
ax.set_xticks(pos, names, rotation=30, ha="right")
ax.set_ylabel("relative error of (Hv) per variable")
ax.axhline(1e-6, color="k", ls=":", lw=1)
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# The nested tape misses the variance's dependence on the mean: its error is of the order of a percent, far
# above the 1e-9 accuracy of the reference, and it is largest on the variables before the normalisation.
# tfpartials traces its derivatives with the moments computed without the `stop_gradient` (scoped to its own
# functions; the user's training is untouched), so it must agree with the reference to round-off. The
# check below fails when a version of tfpartials gets it wrong.

# %%
assert errors["nested tape"] > 1e-4, "the stop_gradient in tf.nn.moments no longer affects nested tapes"
assert errors["tfpartials"] < 1e-6, f"tfpartials HVP through LayerNormalization is off by {errors['tfpartials']:.1e}"

# %% [markdown]
# ## Per-example gradients in a training loop
#
# Clipping each example's gradient before averaging (the step of DP-SGD) needs one gradient per example at
# every step. The tape recipe is a Python loop of B backward passes. `tp.PerExampleGradients` is built once
# and then gives all B in one vectorised pass, as tensors, at the weights of the moment, and it can be called
# inside `tf.function`. Here it drives four clipped steps of the model above on 16 examples. After each step
# its gradients are checked against the loop of tapes.

# %%
rng = np.random.default_rng(1)
xs, ys = rng.normal(size=(16, 5)), rng.normal(size=(16, 1))
pe = tp.PerExampleGradients(model, loss="mse")
optimizer = keras.optimizers.SGD(0.01)


@tf.function
def clipped_step(xb, yb):
    per_example = pe(xb, yb)  # {name: (16, *shape)} tensors
    flat = tf.concat([tf.reshape(g, (16, -1)) for g in per_example.values()], axis=1)
    scale = tf.minimum(tf.constant(1.0, flat.dtype), 1.0 / tf.norm(flat, axis=1))  # each norm <= 1 after
    optimizer.apply([tf.reduce_mean(g * tf.reshape(scale, (-1,) + (1,) * (g.shape.rank - 1)), axis=0)
                     for g in per_example.values()], model.trainable_variables)
    return tf.norm(flat, axis=1)


def loop_of_tapes(xb, yb):
    rows = []
    for i in range(len(xb)):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb[i:i + 1], model(xb[i:i + 1]))
        rows.append(np.concatenate([g.numpy().ravel() for g in tape.gradient(loss, model.trainable_variables)]))
    return np.array(rows)


for step in range(4):
    reference = loop_of_tapes(xs, ys)  # at the weights before this step
    norms = clipped_step(tf.constant(xs), tf.constant(ys)).numpy()
    assert np.allclose(norms, np.linalg.norm(reference, axis=1), rtol=1e-10)
    print(f"step {step}: per-example gradient norms {norms.min():.3f} .. {norms.max():.3f}, "
          f"{int((norms > 1.0).sum())} of 16 clipped")

# %% [markdown]
# ## The one-line equivalents
#
# | recipe | plain TensorFlow 2.21 | tfpartials |
# |---|---|---|
# | loss gradient | works, one batch at a time | `tp.gradients(model, data, loss="mse")` |
# | some layers | `RuntimeError` on the second call | `tp.gradients(model, data, loss="mse", wrt=["dense/*"])` |
# | Hessian | `AttributeError`; repaired: wrong through LayerNormalization | `tp.hessian(model, data, loss="mse")` |
# | Hessian-vector product | nested tapes, same problem | `tp.hvp(model, data, v, loss="mse")` |
# | per-example gradients | a loop of tapes, one backward pass each | `tp.PerExampleGradients(model, loss="mse")(x, y)` |
# | check any of it | — | `tp.check(model, data, loss="mse")` |
