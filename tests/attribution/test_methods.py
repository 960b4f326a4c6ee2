"""Saliency, gradient×input and the shared machinery (targets, inputs) against closed forms and float64
central differences."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tests import models as M
from tests.attribution import _references as R
from tfpartials._checks import InputError
from tfpartials.attribution import (
    GradientXInput,
    IntegratedGradients,
    Saliency,
    SmoothGrad,
    attribute,
    make_method,
)


def _linear_classifier(d=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(k, name="lin")])
    model.get_layer("lin").kernel.assign(rng.normal(size=(d, k)).astype("float32"))
    model.get_layer("lin").bias.assign(rng.normal(size=k).astype("float32"))
    x = rng.normal(size=(7, d)).astype("float32")
    return model, x, model.get_layer("lin").kernel.numpy().astype(np.float64)


def _two_headed(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((4,), name="features")
    h = keras.layers.Dense(5, activation="tanh", name="h")(inp)
    a = keras.layers.Dense(3, name="classes")(h)
    b = keras.layers.Dense(1, name="score")(h)
    model = keras.Model(inp, [a, b])
    x = np.random.default_rng(seed).normal(size=(6, 4)).astype("float32")
    return model, x


# ------------------------------------------------------------------------------------------ closed forms
def test_linear_saliency_equals_weights_and_gxi_equals_x_times_w():
    model, x, W = _linear_classifier()
    for k in range(3):
        np.testing.assert_allclose(Saliency(model).attribute(x, target=k), np.tile(W[:, k], (len(x), 1)),
                                   rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(GradientXInput(model).attribute(x, target=k), x * W[:, k], rtol=1e-6,
                                   atol=1e-7)
    np.testing.assert_allclose(Saliency(model, absolute=True).attribute(x, target=1),
                               np.abs(np.tile(W[:, 1], (len(x), 1))), rtol=1e-6)


def test_regressor_default_target_is_the_single_output():
    model, x, _ = M.linear_regression()
    w = model.get_layer("lin").kernel.numpy()[:, 0]
    np.testing.assert_allclose(Saliency(model).attribute(x), np.tile(w, (len(x), 1)), rtol=1e-6)
    assert np.all(Saliency(model).targets(x) == 0)


@pytest.mark.parametrize("builder", [M.mlp, M.small_cnn, M.regression_mlp, M.lstm_model, M.batchnorm_dropout_model])
def test_saliency_matches_float64_central_differences(builder):
    model, x, _ = builder()
    x = x[:5]
    sal = Saliency(model)
    idx = sal.targets(x)
    ref = R.input_gradient_central_difference(model, x, idx)
    np.testing.assert_allclose(sal.attribute(x), ref, rtol=2e-3, atol=2e-5)
    np.testing.assert_allclose(GradientXInput(model).attribute(x), x * ref, rtol=2e-3, atol=2e-5)


def test_default_target_is_the_predicted_class_and_per_example_targets_work():
    model, x, _ = M.mlp()
    pred = np.asarray(model(x)).argmax(1)
    sal = Saliency(model)
    np.testing.assert_array_equal(sal.targets(x), pred)
    np.testing.assert_allclose(sal.attribute(x), sal.attribute(x, target=pred), rtol=0, atol=0)
    per = np.arange(len(x)) % 3
    ref = R.input_gradient_central_difference(model, x, per)
    np.testing.assert_allclose(sal.attribute(x, target=list(per)), ref, rtol=2e-3, atol=2e-5)


def test_callable_target_and_output_names():
    model, x = _two_headed()
    sal = Saliency(model)
    by_name = sal.attribute(x, target="score")
    ref = R.input_gradient_central_difference(keras.Model(model.input, model.outputs[1]), x, np.zeros(6, int))
    np.testing.assert_allclose(by_name, ref, rtol=2e-3, atol=2e-5)
    by_call = sal.attribute(x, target=lambda outs: outs[1][:, 0])
    np.testing.assert_allclose(by_call, by_name, rtol=1e-6, atol=1e-7)
    second = sal.attribute(x, target=("classes", 2))
    ref2 = R.input_gradient_central_difference(keras.Model(model.input, model.outputs[0]), x, np.full(6, 2))
    np.testing.assert_allclose(second, ref2, rtol=2e-3, atol=2e-5)
    pred = np.asarray(model(x)[0]).argmax(1)
    np.testing.assert_array_equal(sal.targets(x, "classes"), pred)
    assert sal.targets(x, lambda o: o[1][:, 0]) is None


def test_functional_verb_equals_the_classes():
    model, x, _ = M.mlp()
    np.testing.assert_allclose(attribute(model, x, "integrated-gradients", target=1, steps=8),
                               IntegratedGradients(model, steps=8).attribute(x, target=1), rtol=1e-6)
    sg = make_method("smoothgrad", model, inner="integrated-gradients", steps=4, num_samples=2, seed=3)
    assert isinstance(sg, SmoothGrad) and isinstance(sg.inner, IntegratedGradients) and sg.inner.steps == 4


def test_the_users_model_is_not_modified_and_float64_inputs_are_accepted():
    model, x, _ = M.mlp()
    before = [v.numpy().copy() for v in model.weights]
    a = Saliency(model).attribute(x.astype(np.float64))
    assert a.dtype == np.float32 and a.shape == x.shape
    for b, v in zip(before, model.weights):
        np.testing.assert_array_equal(b, v.numpy())


def test_chunked_gradients_equal_one_batch():
    model, x, _ = M.small_cnn()
    tiny = Saliency(model, max_memory=Saliency(model).example_bytes() * 3)  # three examples per chunk
    np.testing.assert_allclose(tiny.attribute(x), Saliency(model).attribute(x), rtol=1e-6, atol=1e-7)
    assert tiny.trace_counts["gradient"] == 1  # the short last chunk does not retrace


# ---------------------------------------------------------------------------------------------- errors
def test_target_errors():
    model, x, _ = M.mlp()
    sal = Saliency(model)
    with pytest.raises(InputError, match=r"target: index 3 is outside the output of size 3 \(valid 0..2\)"):
        sal.attribute(x, target=3)
    with pytest.raises(InputError, match="index -1 is outside"):
        sal.attribute(x, target=-1)
    with pytest.raises(InputError, match=r"one index per example, shape \(29,\), got shape \(2,\)"):
        sal.attribute(x, target=[0, 1])
    with pytest.raises(InputError, match="expected integer indices"):
        sal.attribute(x, target=np.zeros(len(x)))
    with pytest.raises(InputError, match="expected a class index"):
        sal.attribute(x, target=1.5)
    with pytest.raises(InputError, match="unknown output 'nope'"):
        sal.attribute(x, target="nope")
    with pytest.raises(InputError, match=r"callable must return one value per example, shape \(B,\)"):
        sal.attribute(x, target=lambda out: out)
    two, x2 = _two_headed()
    with pytest.raises(InputError, match="the model has 2 outputs"):
        Saliency(two).attribute(x2, target=0)


def test_input_errors():
    model, x, _ = M.mlp()
    sal = Saliency(model)
    with pytest.raises(InputError, match=r"inputs: expected shape \(B, 5\), got \(29, 4\)"):
        sal.attribute(x[:, :4])
    with pytest.raises(InputError, match="expected floating-point inputs, got dtype int64"):
        sal.attribute(np.ones((2, 5), np.int64))
    with pytest.raises(InputError, match="NaN or Inf"):
        sal.attribute(np.full((2, 5), np.nan, np.float32))
    with pytest.raises(InputError, match="batch is empty"):
        sal.attribute(np.zeros((0, 5), np.float32))
    emb, _, _ = M.embedding_model()
    with pytest.raises(InputError, match="integer inputs"):
        Saliency(emb)
    with pytest.raises(TypeError, match="expected a Keras model"):
        Saliency("model.keras")
    with pytest.raises(InputError, match="method: expected one of"):
        make_method("deeplift", model)
