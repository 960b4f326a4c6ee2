"""Compiled functions called again with the same argument shapes run their traced graph directly."""

import numpy as np
import tensorflow as tf

import tfpartials as tp
from tfpartials.autodiff.objective import _exact_signature
from tfpartials.autodiff.problem import prepare


def _model():
    import keras

    keras.utils.set_random_seed(3)
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh", name="h"),
                             keras.layers.BatchNormalization(name="bn"), keras.layers.Dense(1, name="o")])


def _tape_gradient(model, x, y):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x, training=False) - y))
    return {v.path.split("/", 1)[1]: g.numpy() for v, g in zip(model.trainable_variables, tape.gradient(loss, model.trainable_variables))}


def _changing_weights(n: int, seed: int, steps: int = 3):
    """``(model, x, y, obj)`` once per step; between steps the trainable and the non-trainable state both change,
    so a graph holding stale values fails the step after."""
    model = _model()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3)).astype("float32")
    y = rng.standard_normal((n, 1)).astype("float32")
    obj, _ = prepare(model, (x, y), "mse")
    for step in range(steps):
        yield model, x, y, obj
        model.get_layer("h").kernel.assign(model.get_layer("h").kernel * 1.5 + 0.1)
        model.get_layer("bn").moving_variance.assign(model.get_layer("bn").moving_variance + 0.5 * (step + 1))
        model.get_layer("bn").moving_mean.assign(model.get_layer("bn").moving_mean + 0.3)


def test_repeated_calls_reuse_one_graph_and_see_new_weights():
    for model, x, y, obj in _changing_weights(8, seed=0):  # noqa: B007 - obj is read after the loop
        got = tp.gradients(model, (x, y), loss="mse", quiet=True)
        want = _tape_gradient(model, x, y)
        for name, g in want.items():
            np.testing.assert_allclose(got[name], g, rtol=2e-5, atol=1e-7)
    assert obj.trace_counts["gradient"] == 1
    fn = obj.function("gradient", None)
    assert len(fn.concrete) == 1  # one exact signature remembered and called directly


def test_other_shapes_and_structures_go_through_the_tf_function():
    model = _model()
    rng = np.random.default_rng(1)
    for n in (5, 8, 5, 2):
        x = rng.standard_normal((n, 3)).astype("float32")
        y = rng.standard_normal((n, 1)).astype("float32")
        got = tp.gradients(model, (x, y), loss="mse", batch_size=n, quiet=True)
        want = _tape_gradient(model, x, y)
        for name, g in want.items():
            np.testing.assert_allclose(got[name], g, rtol=2e-5, atol=1e-7)


def test_exact_signature_keys():
    a, b = tf.zeros((2, 3)), tf.zeros((2, 3), tf.float64)
    assert _exact_signature(([a], a)) == _exact_signature(([tf.ones((2, 3))], tf.ones((2, 3))))
    assert _exact_signature(([a], a)) != _exact_signature(((a,), a))      # nesting counts
    assert _exact_signature((a,)) != _exact_signature((b,))               # dtype counts
    assert _exact_signature((a,)) != _exact_signature((tf.zeros((3, 2)),))  # shape counts
    assert _exact_signature((a, 1.0)) is None                             # Python values: the tf.function
    assert _exact_signature((tf.Variable(a),)) is None


def _per_example_tapes(model, x, y):
    out = []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x[i:i + 1], training=False) - y[i:i + 1]))
        out.append([g.numpy() for g in tape.gradient(loss, model.trainable_variables)])
    return [np.stack([o[j] for o in out]) for j in range(len(out[0]))]


def test_per_example_at_the_current_weights_reads_them_in_the_graph():
    """The per-example pass reads the weights inside its compiled graph (no eager reads per call): a graph that
    captured values instead of variables would return the first weights' gradients after an assignment."""
    from tfpartials.autodiff.per_example import PerExampleEngine
    from tfpartials.autodiff.risk import as_tensors

    for model, x, y, obj in _changing_weights(6, seed=2):
        got = tp.per_example_gradients(model, (x, y), loss="mse", quiet=True)
        want = _per_example_tapes(model, x, y)
        for name, w in zip(obj.space.names, want):
            np.testing.assert_allclose(got[name], w, rtol=2e-5, atol=1e-6)
        engine = PerExampleEngine(obj)  # explicit parameters give the same as the weights read in the graph
        xt, yt = as_tensors(x, obj.dtype), as_tensors(y, obj.dtype)
        for a, b in zip(engine(obj.space.values(), xt, yt), engine(None, xt, yt)):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    assert obj.trace_counts["per_example_vectorized_current"] == 1
