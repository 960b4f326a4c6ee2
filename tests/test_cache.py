"""The one cache: reuse across calls, safe keys (no stale hit after garbage collection), freed with the model."""

from __future__ import annotations

import gc
import weakref

import keras
import numpy as np
import tensorflow as tf

import tfpartials as tp
from tfpartials import _cache
from tfpartials.autodiff.problem import objective_for


def _model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="tanh", name="d")])


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(6, 3)).astype("float32"), rng.normal(size=(6, 2)).astype("float32")


def _tape_gradient(model, x, y, loss_fn):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(loss_fn(y, model(x)))
    return tape.gradient(loss, model.trainable_variables)[0].numpy()


def test_model_is_freed_with_everything_cached_for_it():
    model = _model()
    x, y = _data()
    tp.gradients(model, (x, y), loss="mse")
    tp.hvp(model, (x, y), np.ones(8, "float32"), loss="mse")
    tp.per_example_gradients(model, (x, y), loss="mse")
    tp.input_jacobian(model, x)
    tp.Saliency(model).attribute(x, target=0)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_new_loss_objects_never_hit_a_stale_entry():
    model = _model()
    x, y = _data()
    for cls, fn in [(keras.losses.MeanSquaredError, lambda a, b: tf.reduce_mean((a - b) ** 2, -1)),
                    (keras.losses.MeanAbsoluteError, lambda a, b: tf.reduce_mean(tf.abs(a - b), -1))] * 2:
        loss = cls()
        got = tp.gradients(model, (x, y), loss=loss)["d/kernel"]
        np.testing.assert_allclose(got, _tape_gradient(model, x, y, fn), rtol=1e-5, atol=1e-6)
        del loss
        gc.collect()  # the next loss object may get the same id(): the key holds the old one, so no stale hit


def test_objectives_are_reused_and_see_new_weights():
    model = _model()
    x, y = _data()
    first = objective_for(model, "mse")
    assert objective_for(model, "mse") is first
    g1 = tp.gradients(model, (x, y), loss="mse")["d/kernel"]
    model.get_layer("d").kernel.assign(model.get_layer("d").kernel * 2.0)
    g2 = tp.gradients(model, (x, y), loss="mse")["d/kernel"]
    mse = lambda a, b: tf.reduce_mean((a - b) ** 2, -1)  # noqa: E731
    np.testing.assert_allclose(g2, _tape_gradient(model, x, y, mse), rtol=1e-5, atol=1e-6)
    assert not np.allclose(g1, g2)
    assert first.trace_counts.get("gradient", 0) == 1  # traced once for both calls


def test_two_strategies_in_turn_keep_their_own_objectives():
    model = _model()
    x, y = _data()
    one = tf.distribute.OneDeviceStrategy("/cpu:0")
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0"])
    a = objective_for(model, "mse", strategy=one)
    b = objective_for(model, "mse", strategy=mirrored)
    assert a is not b and a.strategy is one and b.strategy is mirrored
    assert objective_for(model, "mse", strategy=one) is a and a.strategy is one
    mse = lambda u, v: tf.reduce_mean((u - v) ** 2, -1)  # noqa: E731
    reference = _tape_gradient(model, x, y, mse)
    for strategy in (one, mirrored, one):
        got = tp.gradients(model, (x, y), loss="mse", strategy=strategy, batch_size=4)["d/kernel"]
        np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-6)


def test_keys_by_value_content_and_identity():
    assert _cache.key_of([1, "a"]) == _cache.key_of([1, "a"])
    assert _cache.key_of([1]) != _cache.key_of((1,))
    assert _cache.key_of({"b": 1, "a": 2}) == _cache.key_of({"a": 2, "b": 1})
    assert _cache.key_of(np.arange(3)) == _cache.key_of(np.arange(3))
    assert _cache.key_of(np.arange(3)) != _cache.key_of(np.arange(3.0))
    o1, o2 = object(), object()
    assert _cache.key_of(o1) == _cache.key_of(o1) and _cache.key_of(o1) != _cache.key_of(o2)


def test_tables_are_private_and_empty_in_copies():
    import copy

    class Owner:
        pass

    owner = Owner()
    built = []
    assert _cache.cached(owner, "k", lambda: built.append(1) or "v") == "v"
    assert _cache.cached(owner, "k", lambda: built.append(1) or "w") == "v"
    assert built == [1]
    assert _cache.table(copy.deepcopy(owner)) == {}
    _cache.clear(owner)
    assert _cache.table(owner) == {}
    assert _cache.table(3) == {}  # no instance dictionary: nothing cached
