# %% [markdown]
# # 3. Sensitivity analysis of a tabular regressor
#
# Which inputs does a model's prediction depend on? Three answers at three scales:
#
# * **local gradients** ∂f/∂xᵢ at one input: how the prediction moves for a small change of one feature;
# * **integrated gradients** along a path from a baseline: how much of f(x) − f(baseline) each feature
#   accounts for (the attributions add up to that difference: *completeness*);
# * **global DGSM** νᵢ = E[(∂f/∂xᵢ)²] over the input distribution (Sobol & Kucherenko 2009), with bootstrap
#   intervals and, for uniform or normal inputs, upper bounds on the Sobol total indices.
#
# First we check DGSM against its closed form on the Ishigami function, then analyse a network trained on
# scikit-learn's diabetes table.

# %%
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TFPARTIALS_PROGRESS", "0")

import keras
import matplotlib.pyplot as plt
import numpy as np

import tfpartials as tp

PI = np.pi

# %% [markdown]
# ## DGSM of the Ishigami function, against closed forms
#
# `f(x) = sin x₁ + a sin² x₂ + b x₃⁴ sin x₁` with a = 7, b = 0.1 and xᵢ uniform on [−π, π]. Its derivatives
# give νᵢ in closed form (written out below, from E[xᵏ] = πᵏ/(k+1) for even k), and its
# Sobol total indices are known (Ishigami & Homma 1990).


# %%
class Ishigami(keras.layers.Layer):
    def call(self, x):
        s1 = keras.ops.sin(x[:, 0:1])
        return s1 + 7.0 * keras.ops.sin(x[:, 1:2]) ** 2 + 0.1 * x[:, 2:3] ** 4 * s1


ishigami = keras.Sequential([keras.Input((3,), dtype="float64"), Ishigami(dtype="float64")])
a, b = 7.0, 0.1
nu_exact = np.array([0.5 * (1 + 2 * b * PI**4 / 5 + b**2 * PI**8 / 9),   # E[cos² x1 (1 + b x3⁴)²]
                     a**2 / 2,                                           # E[(a sin 2x2)²]
                     16 * b**2 * PI**6 / 7 * 0.5])                       # E[(4b x3³ sin x1)²]
D = a**2 / 8 + b * PI**4 / 5 + b**2 * PI**8 / 18 + 0.5
V13 = 8 * b**2 * PI**8 / 225
total_exact = np.array([0.5 * (1 + b * PI**4 / 5) ** 2 + V13, a**2 / 8, V13]) / D

sample = np.random.default_rng(0).uniform(-PI, PI, size=(20000, 3))
res = tp.sensitivity(ishigami, sample, bounds=(-PI, PI), distribution="uniform", n_bootstrap=200, seed=0)
for i, name in enumerate(res.names):
    lo, hi = res.dgsm_interval[i]
    print(f"{name}: DGSM {res.dgsm[i]:8.3f}  95% interval [{lo:8.3f}, {hi:8.3f}]  exact {nu_exact[i]:8.3f} | "
          f"Sobol total {total_exact[i]:.3f} <= bound {res.sobol_bound[i]:.3f}")
inside = (res.dgsm_interval[:, 0] <= nu_exact) & (nu_exact <= res.dgsm_interval[:, 1])
assert np.all(np.abs(res.dgsm - nu_exact) <= 0.05 * nu_exact), "DGSM differs from its closed form"
assert inside.sum() >= 2, "the bootstrap intervals miss the exact values"
assert np.all(total_exact <= res.sobol_bound * 1.02), "a DGSM bound on a Sobol total index does not hold"

# %% [markdown]
# ## A network trained on the diabetes table
#
# `tp.diabetes_mlp()` trains (once, then cached) a small MLP on scikit-learn's bundled diabetes data: ten
# standardised features of 442 patients, target the disease progression after one year.

# %%
model, x, y, names = tp.diabetes_mlp()
print("held-out rows:", x.shape, "| features:", ", ".join(names))
patient = x[:1]

grad = tp.input_gradient(model, patient)[0]
ig = tp.IntegratedGradients(model, baseline="zeros", steps=64).attribute(patient)[0]
f_x, f_0 = model(patient).numpy()[0, 0], model(np.zeros_like(patient)).numpy()[0, 0]
print(f"f(x) = {f_x:.4f}, f(mean patient) = {f_0:.4f}; sum of IG attributions = {ig.sum():.4f}")
assert abs(ig.sum() - (f_x - f_0)) <= 0.01 * abs(f_x - f_0) + 1e-4, "integrated gradients are not complete"

# the local gradient is exact: compare with float64 central differences of the model
h = 1e-3
fd = np.array([(model(patient + h * e).numpy() - model(patient - h * e).numpy())[0, 0] / (2 * h)
               for e in np.eye(10, dtype="float32")[:, None, :]])
print("max |gradient - central differences| =", np.max(np.abs(grad - fd)))
assert np.allclose(grad, fd, atol=5e-3)

# %%
glob = tp.sensitivity(model, x, feature_names=names, distribution="normal", variances=1.0, seed=0)
order = np.argsort(glob.dgsm)[::-1]
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
pos = np.arange(len(names))
axes[0].barh(pos, grad[order], color="C0")
axes[0].set_title("local gradient ∂f/∂xᵢ (one patient)")
axes[1].barh(pos, ig[order], color="C1")
axes[1].set_title("integrated gradients (same patient)")
err = np.abs(glob.dgsm_interval[order] - glob.dgsm[order, None]).T
axes[2].barh(pos, glob.dgsm[order], xerr=err, color="C2", capsize=3)
axes[2].set_title("global DGSM E[(∂f/∂xᵢ)²], 95% interval")
axes[0].set_yticks(pos, [names[i] for i in order])
axes[0].invert_yaxis()
fig.tight_layout()
plt.show()
for i in order[:4]:
    print(f"{names[i]:4s} DGSM {glob.dgsm[i]:.4f}  share {glob.share[i]:.2f}  "
          f"Sobol total index <= {glob.sobol_bound[i]:.2f}")

# %% [markdown]
# The local gradient and the integrated gradients describe one patient; DGSM ranks the features over the
# whole held-out sample. With standardised features treated as normal with unit variance, `νᵢ / D` bounds
# the share of the output variance that involves feature i: a small bound proves a feature unimportant,
# whatever the network does. The same on the command line: `tfpartials sensitivity MODEL --data X`.
