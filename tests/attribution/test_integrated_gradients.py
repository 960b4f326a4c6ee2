"""Integrated gradients: exact on linear models, complete on an MLP and the digits CNN, convergent in the
number of steps, Gauss–Legendre ahead of the trapezoid rule, chunking without retracing, errors."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tests import models as M
from tests.attribution import _references as R
from tfpartials._checks import InputError
from tfpartials.attribution import IntegratedGradients, path_nodes


def _relative_delta(method, x, target=None, baseline=None):
    a, delta = method.attribute(x, target=target, return_delta=True)
    idx = method.targets(x, target)
    b = np.zeros_like(x) if baseline is None else np.broadcast_to(baseline, x.shape)
    change = R.output_of(method.model, x, idx) - R.output_of(method.model, b, idx)
    # the delta is checked against the model itself: completeness is Σ A = f(x) − f(x')
    np.testing.assert_allclose(a.reshape(len(x), -1).sum(1, dtype=np.float64) - change, delta, atol=1e-5)
    return np.abs(delta) / np.abs(change)


@pytest.mark.parametrize("rule", ["riemann_trapezoid", "gauss_legendre"])
@pytest.mark.parametrize("baseline", ["zeros", "mean", 0.5, "array", "per-example"])
def test_linear_model_ig_is_x_minus_baseline_times_w_exactly(rule, baseline):
    model, x, _ = M.linear_regression(n=9)
    w = model.get_layer("lin").kernel.numpy()[:, 0].astype(np.float64)
    rng = np.random.default_rng(1)
    b = {"zeros": np.zeros(4), "mean": x.mean(0), 0.5: np.full(4, 0.5), "array": rng.normal(size=4),
         "per-example": rng.normal(size=x.shape)}[baseline]
    arg = b.astype(np.float32) if isinstance(baseline, str) and baseline in ("array", "per-example") else baseline
    ig = IntegratedGradients(model, baseline=arg, steps=3, rule=rule)
    a, delta = ig.attribute(x, return_delta=True)
    np.testing.assert_allclose(a, (x - np.broadcast_to(b, x.shape)) * w, rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(delta)) < 1e-5


def test_matches_the_per_step_tape_loop():
    model, x, _ = M.mlp()
    ig = IntegratedGradients(model, steps=16)
    idx = ig.targets(x)
    np.testing.assert_allclose(ig.attribute(x), R.integrated_gradients_loop(model, x, 0.0, idx, 16),
                               rtol=1e-4, atol=1e-6)


def _tanh_mlp(n=23, d=5, seed=11):
    """A smooth classifier MLP (tanh only): the path integrand is smooth, so quadrature converges fast."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(8, activation="tanh"),
                              keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)])
    for v in model.trainable_variables:
        v.assign(rng.normal(size=v.shape).astype("float32") * 0.7)
    return model, rng.normal(size=(n, d)).astype("float32")


@pytest.mark.parametrize("which", ["tanh-mlp", "diabetes-mlp"])
def test_completeness_on_an_mlp_shrinks_with_steps(which, diabetes):
    model, x = _tanh_mlp() if which == "tanh-mlp" else (diabetes.model, diabetes.x[:32])
    worst = [np.max(_relative_delta(IntegratedGradients(model, steps=s), x)) for s in (4, 16, 64)]
    assert worst[2] < 0.01
    assert worst[0] > worst[1] > worst[2]


def test_relu_mlp_converges_more_slowly_but_converges():
    """ReLU kinks make the path integrand discontinuous: the delta falls like 1/steps, not 1/steps²."""
    model, x, _ = M.mlp()
    worst = [np.max(_relative_delta(IntegratedGradients(model, steps=s), x)) for s in (16, 64, 256)]
    assert worst[0] > worst[1] > worst[2] and worst[2] < 0.01


def test_completeness_on_the_digits_cnn(digits):
    model, x, _ = digits
    x = x[:24]
    worst = [np.max(_relative_delta(IntegratedGradients(model, steps=s), x)) for s in (8, 64)]
    assert worst[1] < 0.01 and worst[1] < worst[0]


def test_gauss_legendre_needs_fewer_steps_than_the_trapezoid_rule():
    model, x = _tanh_mlp()
    tol = 1e-3

    def steps_needed(rule):
        for s in (2, 4, 8, 16, 32, 64, 128):
            if np.max(_relative_delta(IntegratedGradients(model, steps=s, rule=rule), x)) < tol:
                return s
        return np.inf

    gl, rt = steps_needed("gauss_legendre"), steps_needed("riemann_trapezoid")
    assert gl < rt and np.isfinite(gl)


def test_path_nodes_integrate_polynomials():
    for rule, degree in (("gauss_legendre", 9), ("riemann_trapezoid", 1)):
        a, w = path_nodes(5, rule)
        assert np.all((a >= 0) & (a <= 1)) and abs(w.sum() - 1) < 1e-12
        np.testing.assert_allclose(np.sum(w * a**degree), 1 / (degree + 1), rtol=1e-12)
    np.testing.assert_allclose(path_nodes(1)[0], [0.5])


@pytest.mark.parametrize("internal_batch_size", [1, 7, 16, 40, 10_000])
def test_chunking_does_not_change_the_result_or_retrace(internal_batch_size):
    model, x, _ = M.small_cnn(n=11)
    ref = IntegratedGradients(model, steps=16).attribute(x)
    ig = IntegratedGradients(model, steps=16, internal_batch_size=internal_batch_size)
    np.testing.assert_allclose(ig.attribute(x), ref, rtol=1e-4, atol=1e-6)
    assert ig.trace_counts["integrated_gradients"] == 1
    per_call, nodes = ig.plan(len(x))
    assert per_call * nodes <= max(internal_batch_size, 1) or per_call == 1


def test_memory_budget_plans_chunks():
    model, x, _ = M.small_cnn(n=11)
    ig = IntegratedGradients(model, steps=32)
    small = IntegratedGradients(model, steps=32, max_memory=ig.example_bytes() * 50)
    assert small.plan(11)[0] * small.plan(11)[1] <= 50
    np.testing.assert_allclose(small.attribute(x), ig.attribute(x), rtol=1e-4, atol=1e-6)


def test_errors():
    model, x, _ = M.mlp()
    with pytest.raises(InputError, match="steps: expected a positive integer, got 0"):
        IntegratedGradients(model, steps=0)
    with pytest.raises(InputError, match=r"baseline: expected a number or an array of shape \(5,\)"):
        IntegratedGradients(model, baseline=np.zeros(4, np.float32))
    with pytest.raises(InputError, match="baseline: expected one of 'zeros', 'mean'"):
        IntegratedGradients(model, baseline="black")
    with pytest.raises(InputError, match="baseline: NaN or Inf"):
        IntegratedGradients(model, baseline=np.full(5, np.nan))
    with pytest.raises(InputError, match=r"baseline: expected shape \(5,\) or \(29, 5\)"):
        IntegratedGradients(model, baseline=np.zeros((3, 5), np.float32)).attribute(x)
    with pytest.raises(InputError, match="rule: expected one of"):
        IntegratedGradients(model, rule="simpson")
    with pytest.raises(InputError, match="internal_batch_size: expected a positive integer"):
        IntegratedGradients(model, internal_batch_size=0)
    with pytest.raises(InputError, match="outside the output of size 3"):
        IntegratedGradients(model, steps=2).attribute(x, target=5)
    with pytest.raises(InputError, match="expected floating-point inputs"):
        IntegratedGradients(model).attribute(np.ones((2, 5), np.int32))
    with pytest.raises(TypeError, match="steps: expected a positive integer"):
        IntegratedGradients(model, steps=2.5)


def test_float64_model():
    model, x = _tanh_mlp()
    from tests.references import float64_clone

    m64 = float64_clone(model)
    ig = IntegratedGradients(m64, steps=64, rule="gauss_legendre")
    a, delta = ig.attribute(x, return_delta=True)
    assert a.dtype == np.float64 and np.max(np.abs(delta)) < 1e-9
