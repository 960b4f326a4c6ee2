# %% [markdown]
# # 6. Finding mislabelled training examples with self-influence
#
# The influence of a training example on a loss (Koh & Liang 2017) is the predicted change of that loss
# when the example is left out and the model refit: `(1/N) ∇ℓ_testᵀ (H + λI)⁻¹ ∇ℓ_i`. Applied to the example's
# *own* loss it is the **self-influence**: how much the model had to bend to fit that example. Mislabelled
# examples need the most bending, so sorting by self-influence is a cheap way to audit a dataset.

# %%
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TFPARTIALS_PROGRESS", "0")

import keras
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits

import tfpartials as tp

keras.utils.set_random_seed(0)

# %% [markdown]
# Digits as 64 pixels, 400 training images, of which 5% get a wrong label; a softmax regression in float64.

# %%
digits = load_digits()
x = (digits.data[:400] / 16.0).astype("float64")
y_clean = digits.target[:400].astype("int64")
rng = np.random.default_rng(0)
flipped = rng.choice(len(x), size=20, replace=False)
y = y_clean.copy()
y[flipped] = (y[flipped] + rng.integers(1, 10, size=20)) % 10

model = keras.Sequential([keras.Input((64,), dtype="float64"), keras.layers.Dense(10, dtype="float64")])
model.compile(optimizer=keras.optimizers.Adam(0.05),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(x, y, epochs=150, batch_size=400, verbose=0)
print("training accuracy on the noisy labels:", (model(x).numpy().argmax(1) == y).mean())

# %%
damping = 1e-2
res = tp.self_influence(model, (x, y), loss="sparse_categorical_crossentropy", from_logits=True,
                        method="exact", damping=damping, quiet=True)
print(res.definition if hasattr(res, "definition") else "")

# %% [markdown]
# ## The scores, checked against a closed form
#
# For softmax regression the Gauss–Newton matrix equals the Hessian and has a closed form:
# `H = (1/N) Σᵢ (diag pᵢ − pᵢpᵢᵀ) ⊗ x̃ᵢx̃ᵢᵀ` with `x̃ = (x, 1)`, and the gradient of example i is
# `x̃ᵢ ⊗ (pᵢ − e_{yᵢ})`. We build both in numpy, independently of TensorFlow.

# %%
W, b = (w for w in model.get_weights())
z = x @ W + b
p = np.exp(z - z.max(1, keepdims=True))
p /= p.sum(1, keepdims=True)
xt = np.hstack([x, np.ones((len(x), 1))])                      # (N, 65): the bias as an input of ones
r = p - np.eye(10)[y]
G = np.einsum("ij,ic->ijc", xt, r).reshape(len(x), -1)         # flat order = [kernel.ravel(), bias]
A = np.einsum("ic,cd->icd", p, np.eye(10)) - np.einsum("ic,id->icd", p, p)
H = np.einsum("ij,ik,icd->jckd", xt, xt, A).reshape(650, 650) / len(x)
exact = np.einsum("ip,ip->i", G, np.linalg.solve(H + damping * np.eye(650), G.T).T) / len(x)
rel = np.max(np.abs(res.scores - exact)) / np.max(np.abs(exact))
print(f"max relative difference to the closed form: {rel:.1e}")
assert rel < 1e-6

# %%
k = len(x) // 10
top = np.argsort(res.scores)[::-1][:k]
found = np.isin(flipped, top).sum()
print(f"the top {k} (10%) by self-influence hold {found} of the {len(flipped)} flipped labels "
      f"({found / len(flipped):.0%}; a random 10% would hold about 10%)")
assert found / len(flipped) >= 0.5

is_flipped = np.isin(np.arange(len(x)), flipped)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1.3, 1]})
bins = np.logspace(np.log10(res.scores.min()), np.log10(res.scores.max()), 40)
axes[0].hist(res.scores[~is_flipped], bins=bins, alpha=0.7, label="correct label")
axes[0].hist(res.scores[is_flipped], bins=bins, alpha=0.8, label="flipped label")
axes[0].set(xscale="log", xlabel="self-influence", ylabel="training examples")
axes[0].legend()
axes[1].axis("off")
for j, i in enumerate(top[:8]):
    ax = fig.add_subplot(2, 8, 5 + j if j < 4 else 9 + j)  # right half: 2 rows of 4
    ax.imshow(x[i].reshape(8, 8), cmap="gray_r")
    ax.set_title(f"{y[i]}{' (was ' + str(y_clean[i]) + ')' if is_flipped[i] else ''}", fontsize=7)
    ax.axis("off")
fig.suptitle("self-influence of every training example; right: the 8 highest, with their labels")
fig.tight_layout()
plt.show()

# %% [markdown]
# The same from the command line: `tfpartials influence MODEL --train TRAIN --self --top-k 40`. For test
# predictions, `tp.influence(model, train, test)` gives the (n_test, n_train) scores and `.top(k)` the most
# helpful and harmful training examples; `tp.leave_one_out_check` retrains to verify them.
