"""What breaks derivatives: the op that cut a gradient, the first NaN/Inf, layers that depend on training."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import models as M
from tests.verification import faulty as F
from tfpartials.autodiff.problem import prepare
from tfpartials.verification.diagnostics import (
    Diagnostics,
    first_nonfinite,
    gradient_cuts,
    nonfinite_gradient,
    training_dependent_layers,
)


class _Apply(keras.layers.Layer):
    def __init__(self, fn, **kwargs):
        super().__init__(**kwargs)
        self.fn = fn

    def call(self, x):
        return self.fn(x)


class _Unused(keras.layers.Layer):
    def build(self, shape):
        self.used = self.add_weight(shape=(shape[-1],), initializer="ones", name="used")
        self.spare = self.add_weight(shape=(shape[-1],), initializer="ones", name="spare")

    def call(self, x):
        return x * self.used


def _objective(middle):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="d1"), middle,
                              keras.layers.Dense(1, name="out")])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 3)).astype("float32"), rng.normal(size=(6, 1)).astype("float32")
    return prepare(model, (x, y), "mse", unconnected="zero")


@pytest.mark.parametrize("fn,op,described", [
    (lambda t: tf.round(3 * t), "Round", "Round"),
    (lambda t: tf.floor(t), "Floor", "Floor"),
    (lambda t: tf.stop_gradient(t), "StopGradient", "StopGradient"),
    (lambda t: tf.cast(tf.cast(3 * t, tf.int32), tf.float32), "Cast", "Cast to int32"),
    (lambda t: tf.one_hot(tf.argmax(t, axis=-1), 4), "ArgMax", "ArgMax"),
])
def test_the_op_that_cut_the_gradient_is_named(fn, op, described):
    obj, data = _objective(_Apply(fn, name="cut"))
    cuts = gradient_cuts(obj, data)
    assert [c.variable for c in cuts] == ["d1/kernel", "d1/bias"]
    assert all(c.op_type == op and c.op_name.startswith("cut") for c in cuts)
    assert f"cut by op {described}" in cuts[0].message


def test_unused_variable_and_connected_model():
    obj, data = _objective(_Unused(name="u"))
    cuts = gradient_cuts(obj, data)
    assert [(c.variable, c.op_type) for c in cuts] == [("u/spare", None)]
    assert "not used in computing the loss" in cuts[0].message
    model, x, y = M.mlp()
    obj, data = prepare(model, (x, y), "sparse_categorical_crossentropy", from_logits=True)
    assert gradient_cuts(obj, data) == ()


def test_first_nonfinite_op_and_numeric_checks_switched_off():
    model, x, y = F.sqrt_at_zero_model()
    obj, data = prepare(model, (x, y), "mse")
    found = nonfinite_gradient(obj, data)
    assert found.op_type == "SqrtGrad" and "Inf" in found.message
    assert first_nonfinite("finite", [lambda: tf.sqrt(tf.constant([1.0, 4.0]))]) is None
    assert np.isneginf(tf.math.log(tf.constant(0.0)).numpy())  # enable_check_numerics was undone

    def boom():
        raise tf.errors.InvalidArgumentError(None, None, "unrelated")
    with pytest.raises(tf.errors.InvalidArgumentError, match="unrelated"):
        first_nonfinite("other", [boom])
    assert np.isneginf(tf.math.log(tf.constant(0.0)).numpy())


def test_training_dependent_layers_named_and_model_untouched():
    model, x, _ = M.batchnorm_dropout_model()
    before = [v.numpy().copy() for v in model.variables]  # includes moving statistics and seed states
    found = training_dependent_layers(model, x)
    assert [(f.layer, f.class_name) for f in found] == [("bn", "BatchNormalization"), ("drop", "Dropout")]
    assert "batch statistics" in found[0].reason and "random" in found[1].reason
    assert all(f.max_abs_difference > 1e-3 for f in found)
    for b, v in zip(before, model.variables):
        np.testing.assert_array_equal(b, v.numpy())
    assert training_dependent_layers(model, x) == found  # deterministic
    mlp, mx, _ = M.mlp()
    assert training_dependent_layers(mlp, mx) == ()


def test_training_dependent_layers_in_nested_and_subclassed_models():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="a"),
                              keras.layers.Dropout(0.3, name="dr")], name="inner")
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(1, name="head")(
        keras.layers.BatchNormalization(name="bn2")(inner(inp))))
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    assert {f.layer for f in training_dependent_layers(model, x)} == {"dr", "bn2"}

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)
            self.drop = keras.layers.Dropout(0.5, name="subdrop")

        def call(self, t, training=None):
            return self.drop(self.dense(t), training=training)

    sub = Sub()
    sub(x)
    assert [(f.layer, f.class_name) for f in training_dependent_layers(sub, x)] == [("subdrop", "Dropout")]


def test_diagnostics_merge_and_empty():
    assert Diagnostics().empty
    obj, data = _objective(_Apply(lambda t: tf.round(t), name="cut"))
    d = Diagnostics(gradient_cuts=gradient_cuts(obj, data))
    assert not d.empty and d.merge(d) == d
