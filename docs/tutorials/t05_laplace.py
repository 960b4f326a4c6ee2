# %% [markdown]
# # 5. Uncertainty with the Laplace approximation
#
# A network trained long on little data is over-confident: its softmax probabilities are higher than the rate
# at which it is right. The Laplace approximation (MacKay 1992; Daxberger et al. 2021) puts a Gaussian over the weights at the
# trained optimum, `N(θ*, (H + P₀)⁻¹)` with `H` the Gauss–Newton matrix of the summed negative log-likelihood
# and `P₀` the prior precision. The linearised predictive with the probit approximation turns it into softer
# probabilities without retraining. We first check the machinery where it is exact — Bayesian linear
# regression — and then calibrate an over-confident digits classifier, measuring calibration on held-out data.

# %%
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TFPARTIALS_PROGRESS", "0")

import keras
import numpy as np
from IPython.display import Image, display
from sklearn.datasets import load_digits

import tfpartials as tp

keras.utils.set_random_seed(0)

# %% [markdown]
# ## The exact case: Bayesian linear regression
#
# For `y = Xw + ε`, `ε ~ N(0, σ²)`, prior `w ~ N(0, α⁻¹I)`, the posterior precision is `P = XᵀX/σ² + αI`, the
# posterior mean (the MAP) is `w* = P⁻¹Xᵀy/σ²`, the predictive variance at `x` is `xᵀP⁻¹x + σ²`, and the log
# evidence is `log N(y; 0, σ²I + XXᵀ/α)`. The model is linear in its weights, so the Laplace approximation is
# exact: a one-layer Keras model set to `w*` must reproduce all of it, and maximising the evidence over `α`
# must find the maximiser of the closed form.

# %%
rng = np.random.default_rng(0)
X = rng.normal(size=(40, 3))
y = X @ np.array([[1.0], [-2.0], [0.5]]) + 0.3 * rng.normal(size=(40, 1))
alpha, sigma = 2.0, 0.3
P = X.T @ X / sigma**2 + alpha * np.eye(3)
w_map = np.linalg.solve(P, X.T @ y / sigma**2)
linear = keras.Sequential([keras.Input((3,), dtype="float64"),
                           keras.layers.Dense(1, use_bias=False, dtype="float64")])
linear.set_weights([w_map])


def log_evidence(a):
    """Closed-form log N(y; 0, σ²I + XXᵀ/a)."""
    cov = sigma**2 * np.eye(len(X)) + X @ X.T / a
    return -0.5 * (y.T @ np.linalg.solve(cov, y)).item() - 0.5 * np.linalg.slogdet(2 * np.pi * cov)[1]


la_lin = tp.Laplace(linear, (X, y), likelihood="regression", structure="full", prior_precision=alpha,
                    sigma_noise=sigma)
x_new = rng.normal(size=(5, 3))
var_exact = np.einsum("bi,ij,bj->b", x_new, np.linalg.inv(P), x_new) + sigma**2
var = la_lin.predictive(x_new).variance[:, 0]
logev = la_lin.log_marginal_likelihood()
print(f"predictive variance: max relative error {np.max(np.abs(var - var_exact) / var_exact):.1e}")
print(f"log evidence: Laplace {logev:.10f}   closed form {log_evidence(alpha):.10f}")
assert np.allclose(var, var_exact, rtol=1e-8)
assert np.isclose(logev, log_evidence(alpha), rtol=1e-8)

# %% [markdown]
# `optimize_prior_precision("marglik")` maximises this evidence over `α` *with the weights held at the MAP*
# (the standard Laplace evidence; the closed form above instead re-solves `w*` for every `α`, so the two
# agree only at the `α` the weights were fitted for). We check the held-weights evidence against numpy on a
# grid — log-likelihood, `α‖w*‖²` and the log-determinants computed independently — and the optimiser against
# the grid's best point.

# %%
grid = np.logspace(-2, 2, 81)
lml = np.array([la_lin.log_marginal_likelihood(a) for a in grid])
loglik = -0.5 * float(np.sum((y - X @ w_map) ** 2)) / sigma**2 - len(X) * np.log(sigma * np.sqrt(2 * np.pi))
numpy_lml = np.array([loglik - 0.5 * (a * float(np.sum(w_map**2))
                                      + np.linalg.slogdet(X.T @ X / sigma**2 + a * np.eye(3))[1]
                                      - 3 * np.log(a)) for a in grid])
print(f"held-weights evidence on 81 priors: max abs. difference to numpy {np.max(np.abs(lml - numpy_lml)):.1e}")
assert np.allclose(lml, numpy_lml, rtol=1e-10)
best = la_lin.optimize_prior_precision("marglik")
print(f"marglik prior precision {best:.4f}; best of the 81-point grid {grid[np.argmax(lml)]:.4f}")
assert abs(np.log(best) - np.log(grid[np.argmax(lml)])) <= np.log(grid[1] / grid[0])

# %% [markdown]
# ## An over-confident classifier
#
# scikit-learn's 8×8 digits as 64 pixels. A one-hidden-layer MLP is trained on only **200** images for 800
# full-batch Adam steps without any regularisation: it fits its training set perfectly and its logits keep
# growing, so its confidence outruns its accuracy. 300 further images are a validation split (for choosing the
# prior) and 800 more the held-out test set on which everything is measured.

# %%
digits = load_digits()
images = (digits.data / 16.0).astype("float32")
labels = digits.target.astype("int32")
order = np.random.default_rng(0).permutation(len(images))
train, val, test = order[:200], order[200:500], order[500:1300]

mlp = keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, activation="relu"),
                        keras.layers.Dense(10, name="logits")])
mlp.compile(optimizer=keras.optimizers.Adam(1e-2),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
steps = 800  # one epoch over 800 copies of the training set: 800 full-batch steps without per-epoch overhead
mlp.fit(np.tile(images[train], (steps, 1)), np.tile(labels[train], steps), epochs=1, batch_size=200,
        shuffle=False, verbose=0)

# %% [markdown]
# ## Last-layer KFAC Laplace
#
# We keep only the read-out's 1,290 weights (`subset="last_layer"`) with Kronecker-factored curvature
# (`structure="kfac"`, exact for a single Dense layer's GGN up to the Kronecker factorisation). First the prior
# precision that maximises the marginal likelihood:

# %%
la = tp.Laplace(mlp, (images[train], labels[train]), likelihood="classification", subset="last_layer",
                structure="kfac")
p_map = la.predict_map(images[test])
results = {"MAP": tp.calibration(p_map, labels[test])}
prior_marglik = la.optimize_prior_precision("marglik")
p_marglik = la.predictive(images[test], link="probit").probs
results["Laplace, marglik prior"] = tp.calibration(p_marglik, labels[test])
print(f"marglik prior precision: {prior_marglik:.4g}")

# %% [markdown]
# On this network the evidence is a poor guide: the weights of an over-fitted MAP are large, the evidence
# (computed with the weights held at the MAP) pays for them with a broad prior, and the predictive becomes
# **under-confident** (see the table below). So we choose the prior the other standard way: the value on a
# grid with the lowest negative log-likelihood of the Laplace predictive on the validation split.

# %%
prior_grid = la.optimize_prior_precision("gridsearch", val_data=(images[val], labels[val]),
                                         grid=np.logspace(-1, 4, 26))
results["Laplace, validation prior"] = tp.calibration(la.predictive(images[test], link="probit").probs,
                                                      labels[test])
print(f"validation-chosen prior precision: {prior_grid:.4g}\n")
print(f"{'held-out (800 images)':27s} accuracy    ECE     NLL   Brier")
for name, c in results.items():
    print(f"{name:27s} {c.accuracy:8.4f} {c.ece:7.4f} {c.nll:7.4f} {c.brier:7.4f}")

# %% [markdown]
# ## Reliability diagrams
#
# Each bar is the accuracy of the test predictions whose confidence falls in that bin; a calibrated model
# sits on the diagonal. The MAP's bars lie below it at high confidence (over-confident); the marglik prior
# pushes the confidence far down (bars above the diagonal); the validation prior moves the MAP towards the
# diagonal.

# %%
out = Path(tempfile.mkdtemp())
png = tp.plot_reliability(results, out / "reliability.png", title="Digits MLP, 800 held-out images")
display(Image(filename=str(png)))

# %% [markdown]
# ## What we assert
#
# The probit predictive rescales each logit by its posterior standard deviation, so the decisions barely
# change: accuracy within half a percentage point (4 of 800 images). With the validation-chosen prior the
# held-out NLL and the expected calibration error must both drop; with the marglik prior the model must be
# under-confident (mean confidence below accuracy), which is why we did not use it.

# %%
c_map, c_ml, c_val = results.values()
assert abs(c_val.accuracy - c_map.accuracy) <= 0.005, (c_val.accuracy, c_map.accuracy)
assert c_val.nll < c_map.nll, f"Laplace did not lower the held-out NLL: {c_val.nll:.4f} vs {c_map.nll:.4f}"
assert c_val.ece < c_map.ece, f"Laplace did not lower the ECE: {c_val.ece:.4f} vs {c_map.ece:.4f}"
assert p_marglik.max(axis=1).mean() < c_ml.accuracy, "the marglik predictive was expected to be under-confident"
print(f"NLL {c_map.nll:.3f} -> {c_val.nll:.3f}, ECE {c_map.ece:.3f} -> {c_val.ece:.3f} at accuracy "
      f"{c_map.accuracy:.3f} -> {c_val.accuracy:.3f}")

# %% [markdown]
# The same from the command line: `tfpartials laplace MODEL --data TRAIN --eval TEST --subset last-layer
# --structure kfac`, and `tfpartials report ... --eval TEST` adds an uncertainty section with these diagrams.
