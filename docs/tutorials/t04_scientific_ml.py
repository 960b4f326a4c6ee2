# %% [markdown]
# # 4. Derivatives for scientific ML
#
# Physics-informed networks, sensitivity studies and surrogate models need derivatives of a network's
# *output with respect to its inputs*: ∂u/∂x, ∂²u/∂x², mixed partials, Laplacians. tfpartials computes each
# per example in one vectorised pass (nested forward-mode accumulators; no Hessian is formed for a single
# partial). Part 1 checks every one against a closed form on "networks" whose function is known exactly;
# part 2 trains a small physics-informed network and compares its derivatives with the analytic solution.

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
PI = np.pi

# %% [markdown]
# ## 1. Exact solutions as Keras models
#
# The heat equation `u_t = u_xx` on [0, 1] has the solution `u(x, t) = exp(−π² t) sin(π x)`, and
# `w(x, y) = sin(π x) sin(π y)` satisfies `Δw = −2π² w`. We wrap both as float64 Keras models.


# %%
class HeatSolution(keras.layers.Layer):
    def call(self, inputs):
        x, t = inputs[:, :1], inputs[:, 1:2]
        return keras.ops.exp(-PI**2 * t) * keras.ops.sin(PI * x)


class SineProduct(keras.layers.Layer):
    def call(self, inputs):
        return keras.ops.sin(PI * inputs[:, :1]) * keras.ops.sin(PI * inputs[:, 1:2])


heat = keras.Sequential([keras.Input((2,), dtype="float64"), HeatSolution(dtype="float64")])
sines = keras.Sequential([keras.Input((2,), dtype="float64"), SineProduct(dtype="float64")])

rng = np.random.default_rng(0)
pts = np.column_stack([rng.uniform(0, 1, 200), rng.uniform(0, 0.2, 200)])
x, t = pts[:, 0], pts[:, 1]
decay, s, c = np.exp(-PI**2 * t), np.sin(PI * x), np.cos(PI * x)

exact = {  # multi-index over the inputs (0 = x, 1 = t) -> closed form
    (0,): PI * decay * c,
    (1,): -PI**2 * decay * s,
    (0, 0): -PI**2 * decay * s,
    (0, 1): -PI**3 * decay * c,
    (0, 0, 1): PI**4 * decay * s,
}
rows = []
for index, value in exact.items():
    got = tp.partial_derivative(heat, pts, index=index)
    err = np.max(np.abs(got - value)) / np.max(np.abs(value))
    rows.append((index, err))
    print(f"d^{len(index)} u / d{''.join('xt'[i] for i in index)}: max rel. error vs closed form {err:.1e}")
    assert err < 1e-12

u_t = tp.partial_derivative(heat, pts, index=(1,))
u_xx = tp.partial_derivative(heat, pts, index=(0, 0))
print("heat equation residual max |u_t - u_xx| =", np.max(np.abs(u_t - u_xx)))
assert np.max(np.abs(u_t - u_xx)) < 1e-10

lap = tp.laplacian(sines, pts)
w = sines(pts).numpy()[:, 0]
print("Laplacian of sin(πx) sin(πy): max |Δw + 2π² w| =", np.max(np.abs(lap + 2 * PI**2 * w)))
assert np.max(np.abs(lap + 2 * PI**2 * w)) < 1e-10

J = tp.input_jacobian(heat, pts)                 # (B, out, in)
H = tp.input_hessian(heat, pts)                  # (B, in, in) for a single output unit
assert np.allclose(J[:, 0, 0], exact[(0,)], rtol=1e-12) and np.allclose(H[:, 0, 1], exact[(0, 1)], rtol=1e-12)
print("Jacobian", J.shape, "Hessian", H.shape, ": both match the closed forms")

# %% [markdown]
# ## 2. A physics-informed network for −u'' = π² sin(π x)
#
# With u(0) = u(1) = 0 the solution is u = sin(π x). The network is trained on the residual of the equation
# at collocation points plus the boundary values (Raissi et al. 2019). Training needs derivatives *inside*
# the loss, so it uses nested tapes (fine here: tanh layers, no normalisation); tfpartials then evaluates
# the trained network's derivatives.

# %%
pinn = keras.Sequential([keras.Input((1,), dtype="float64"),
                         keras.layers.Dense(24, activation="tanh", dtype="float64"),
                         keras.layers.Dense(24, activation="tanh", dtype="float64"),
                         keras.layers.Dense(1, dtype="float64")])
colloc = tf.constant(np.linspace(0, 1, 64)[:, None])
boundary = tf.constant([[0.0], [1.0]], tf.float64)
optimizer = keras.optimizers.Adam(5e-3)


@tf.function
def train_step():
    with tf.GradientTape() as tape:
        with tf.GradientTape() as t2:
            t2.watch(colloc)
            with tf.GradientTape() as t1:
                t1.watch(colloc)
                u = pinn(colloc)
            du = t1.gradient(u, colloc)
        d2u = t2.gradient(du, colloc)
        residual = -d2u - PI**2 * tf.sin(PI * colloc)
        loss = tf.reduce_mean(residual**2) + 100.0 * tf.reduce_mean(pinn(boundary) ** 2)
    grads = tape.gradient(loss, pinn.trainable_variables)
    optimizer.apply_gradients(zip(grads, pinn.trainable_variables))
    return loss


losses = [float(train_step()) for _ in range(2500)]
print(f"PDE loss: start {losses[0]:.2e}, end {losses[-1]:.2e}")

# %%
xs = np.linspace(0, 1, 201)[:, None]
u = pinn(xs).numpy()[:, 0]
du = tp.partial_derivative(pinn, xs, index=(0,))
d2u = tp.laplacian(pinn, xs)                  # in 1-D the Laplacian is u''
fd_step = 1e-4                                # independent check of tfpartials on the trained network
fd2 = (pinn(xs + fd_step).numpy() - 2 * pinn(xs).numpy() + pinn(xs - fd_step).numpy())[:, 0] / fd_step**2
print("max |tfpartials u'' - central differences| =", np.max(np.abs(d2u - fd2)))
assert np.max(np.abs(d2u - fd2)) < 1e-4

errors = {"u": np.max(np.abs(u - np.sin(PI * xs[:, 0]))),
          "u'": np.max(np.abs(du - PI * np.cos(PI * xs[:, 0]))) / PI,
          "u''": np.max(np.abs(d2u + PI**2 * np.sin(PI * xs[:, 0]))) / PI**2}
for k, e in errors.items():
    print(f"max error of {k:3s} vs analytic (relative to its scale): {e:.2e}")
assert errors["u"] < 0.05 and errors["u''"] < 0.1

fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
for ax, net, ref, title in [(axes[0], u, np.sin(PI * xs[:, 0]), "u"),
                            (axes[1], du, PI * np.cos(PI * xs[:, 0]), "∂u/∂x"),
                            (axes[2], d2u, -PI**2 * np.sin(PI * xs[:, 0]), "∂²u/∂x²")]:
    ax.plot(xs[:, 0], ref, "k", lw=3, alpha=0.3, label="analytic")
    ax.plot(xs[:, 0], net, "C0", label="network (tfpartials)")
    ax.set_title(title)
axes[0].legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# Derivatives of the trained network agree with central differences (the library is exact) and approach the
# analytic solution as far as the training allowed: the error in u'' is what a physics-informed loss
# controls, and what these functions let you measure after training.
#
# | quantity | call |
# |---|---|
# | ∂u/∂xᵢ for all i | `tp.input_gradient(model, x)` / `tp.input_jacobian(model, x)` |
# | any mixed partial | `tp.partial_derivative(model, x, index=(0, 0, 1))` |
# | Hessian in the inputs | `tp.input_hessian(model, x)` |
# | Laplacian, divergence | `tp.laplacian(model, x)`, `tp.divergence(model, x)` |
