"""The compilation layer: public calls reuse one traced function per model and settings, and see new weights."""

from __future__ import annotations

import numpy as np

import tfpartials as tp
from tests import models as M
from tfpartials.autodiff.problem import objective_for


def test_second_public_call_with_new_data_does_not_retrace():
    model, x, y = M.regression_mlp(n=33)
    tp.gradients(model, (x, y), loss="mse", batch_size=10)
    tp.hvp(model, (x, y), np.ones(sum(v.numpy().size for v in model.trainable_variables), "float32"),
           loss="mse", batch_size=10)
    obj = objective_for(model, "mse")
    before = dict(obj.trace_counts)
    assert before.get("gradient") == 1
    rng = np.random.default_rng(9)
    x2, y2 = rng.normal(size=x.shape).astype("float32"), rng.normal(size=y.shape).astype("float32")
    tp.gradients(model, (x2, y2), loss="mse", batch_size=10)
    tp.hvp(model, (x2, y2), np.ones(obj.space.size, "float32"), loss="mse", batch_size=10)
    assert obj.trace_counts == before


def test_cached_objective_sees_new_weights_and_float64_copy_is_resynced():
    model, x, y = M.linear_regression(n=20)
    g1 = tp.gradients(model, (x, y), loss="mse", precision="float64")
    k = model.get_layer("lin").kernel
    k.assign(k.numpy() + 1.0)
    g2 = tp.gradients(model, (x, y), loss="mse", precision="float64")
    W, b = k.numpy().astype(np.float64), model.get_layer("lin").bias.numpy().astype(np.float64)
    r = x.astype(np.float64) @ W + b - y
    np.testing.assert_allclose(g2["lin/kernel"], 2 * x.T.astype(np.float64) @ r / len(x), rtol=1e-10)
    assert not np.allclose(g1["lin/kernel"], g2["lin/kernel"])
