"""SmoothGrad: the documented noise process, the noise_std → 0 limit, seeds, and wrapping other methods."""

from __future__ import annotations

import numpy as np
import pytest

from tests import models as M
from tests.attribution import _references as R
from tfpartials._checks import InputError
from tfpartials.attribution import GradientXInput, IntegratedGradients, Saliency, SmoothGrad


def test_matches_the_documented_noise_average():
    model, x, _ = M.small_cnn(n=5)
    sg = SmoothGrad(Saliency(model), num_samples=6, noise_std=0.2, seed=7)
    idx = Saliency(model).targets(x)
    np.testing.assert_allclose(sg.attribute(x), R.smoothgrad_loop(model, x, idx, 6, 0.2, 7), rtol=1e-4,
                               atol=1e-6)


@pytest.mark.parametrize("inner", [Saliency, GradientXInput, lambda m: IntegratedGradients(m, steps=8)])
def test_zero_noise_equals_the_inner_method(inner):
    model, x, _ = M.mlp()
    method = inner(model)
    sg = SmoothGrad(method, num_samples=3, noise_std=0.0)
    np.testing.assert_allclose(sg.attribute(x, target=1), method.attribute(x, target=1), rtol=1e-5, atol=1e-7)


def test_small_noise_approaches_the_inner_method():
    model, x, _ = M.mlp(activation="tanh")
    sal = Saliency(model).attribute(x)
    errs = [np.max(np.abs(SmoothGrad(Saliency(model), num_samples=4, noise_std=s).attribute(x) - sal))
            for s in (1e-1, 1e-2, 1e-3)]
    assert errs[0] > errs[1] > errs[2]


def test_same_seed_same_result_other_seed_differs():
    model, x, _ = M.mlp()
    a = SmoothGrad(Saliency(model), num_samples=5, seed=3).attribute(x)
    b = SmoothGrad(Saliency(model), num_samples=5, seed=3).attribute(x)
    c = SmoothGrad(Saliency(model), num_samples=5, seed=4).attribute(x)
    np.testing.assert_array_equal(a, b)
    assert np.max(np.abs(a - c)) > 1e-4


def test_smoothgrad_of_ig_keeps_the_clean_baseline_and_target():
    model, x, _ = M.linear_regression(n=6)
    w = model.get_layer("lin").kernel.numpy()[:, 0]
    base = np.random.default_rng(0).normal(size=x.shape).astype(np.float32)  # one baseline per example
    sg = SmoothGrad(IntegratedGradients(model, baseline=base, steps=4), num_samples=4, noise_std=0.1, seed=1)
    out = sg.attribute(x)
    # linear model: IG(x + e) = (x + e − x') w, so the average is (x + mean e − x') w; the noise averages out
    # only in expectation, so compare with the same noise drawn by hand
    flat = x.reshape(len(x), -1)
    sigma = 0.1 * (flat.max(1) - flat.min(1).astype(np.float64))[:, None]
    rng = np.random.default_rng(1)
    mean_noise = np.mean([(rng.standard_normal(x.shape) * sigma).astype(np.float32) for _ in range(4)], axis=0)
    np.testing.assert_allclose(out, (x + mean_noise - base) * w, rtol=1e-4, atol=1e-5)


def test_predicted_class_is_taken_from_the_clean_input():
    model, x, _ = M.mlp()
    pred = Saliency(model).targets(x)
    sg = SmoothGrad(Saliency(model), num_samples=4, noise_std=0.5, seed=0)
    np.testing.assert_array_equal(sg.targets(x), pred)
    np.testing.assert_allclose(sg.attribute(x), sg.attribute(x, target=pred), rtol=0, atol=0)


def test_errors():
    model, x, _ = M.mlp()
    with pytest.raises(TypeError, match="expected an attribution method"):
        SmoothGrad(model)
    with pytest.raises(InputError, match="num_samples: expected a positive integer, got 0"):
        SmoothGrad(Saliency(model), num_samples=0)
    with pytest.raises(InputError, match="noise_std: expected a finite number >= 0"):
        SmoothGrad(Saliency(model), noise_std=-0.1)
    with pytest.raises(InputError, match="seed: expected a non-negative integer"):
        SmoothGrad(Saliency(model), seed=-1)
    with pytest.raises(InputError, match="outside the output of size 3"):
        SmoothGrad(Saliency(model), num_samples=2).attribute(x, target=3)
