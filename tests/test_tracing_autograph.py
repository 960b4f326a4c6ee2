"""Compiled functions trace without AutoGraph, and fall back to it only for Python control flow on tensors."""

import numpy as np
import pytest
import tensorflow as tf

from tfpartials._tracing import traced


def test_plain_function_traces_without_autograph():
    fn = traced(lambda x: 2.0 * x)
    assert float(fn(tf.constant(3.0))) == 6.0
    assert fn.function._autograph is False


def test_python_if_on_a_tensor_falls_back_to_autograph_and_takes_both_branches():
    def gate(x):
        if tf.reduce_sum(x) > 0:  # a tensor as a Python bool: needs AutoGraph inside tf.function
            return 2.0 * x
        return 3.0 * x

    fn = traced(gate)
    assert float(fn(tf.constant(1.0))) == 2.0
    assert fn.function._autograph is True
    assert float(fn(tf.constant(-1.0))) == -3.0  # same trace, the other branch: a real tf.cond
    cf = traced(gate).get_concrete_function(tf.TensorSpec((), tf.float32))
    assert float(cf(tf.constant(-2.0))) == -6.0


def test_explicit_autograph_false_is_kept_and_the_error_raised():
    def loop(x):
        total = tf.constant(0.0)
        for v in x:  # iterating a symbolic tensor
            total += v
        return total

    fn = traced(loop, autograph=False)
    with pytest.raises(tf.errors.OperatorNotAllowedInGraphError):
        fn(tf.constant([1.0, 2.0]))
    assert float(traced(loop)(tf.constant(np.array([1.0, 2.0, 4.0], "float32")))) == 7.0


def test_derivatives_with_a_custom_loss_that_branches_in_python():
    """A loss callable with Python control flow on tensors (AutoGraph converts it): gradients equal an eager
    tape's on both branches."""
    import keras

    import tfpartials as tp

    def loss(y_true, y_pred):
        err = y_pred - y_true
        if tf.reduce_sum(err) > 0:
            return tf.reduce_mean(2.0 * err ** 2, axis=-1)
        return tf.reduce_mean(3.0 * err ** 2, axis=-1)

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="d")])
    for sign in (1.0, -1.0):
        x = np.full((1, 2), sign, "float32")
        y = np.full((1, 1), -10.0 * sign, "float32")
        got = tp.gradients(model, (x, y), loss=loss, quiet=True)
        with tf.GradientTape() as tape:
            value = tf.reduce_mean(loss(tf.constant(y), model(x)))
        want = tape.gradient(value, model.get_layer("d").kernel)
        np.testing.assert_allclose(got["d/kernel"], want.numpy(), rtol=1e-6)
