"""Attribution at a layer: per-token scores on token models against a float64 integrated-gradients loop over a
hand-written copy of the model's tail, completeness against the model's own outputs, a token that decides the
class by construction, the user's model left as it was, and the refusals."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpartials._checks import InputError
from tfpartials.attribution import GradientXInput, IntegratedGradients, Saliency, SmoothGrad, attribute


def token_model(vocab=12, length=6, dim=4, seed=0):
    """Embedding -> mean over tokens -> tanh Dense -> 3 logits, with random weights of order one."""
    keras.utils.set_random_seed(seed)
    ids = keras.Input((length,), dtype="int32", name="ids")
    h = keras.layers.Embedding(vocab, dim, name="embedding")(ids)
    p = keras.layers.GlobalAveragePooling1D(name="pool")(h)
    u = keras.layers.Dense(8, activation="tanh", name="hidden")(p)
    model = keras.Model(ids, keras.layers.Dense(3, name="logits")(u))
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.normal(scale=1.0, size=v.shape).astype("float32"))
    x = rng.integers(1, vocab, size=(5, length)).astype("int32")
    return model, x


def _tail64(model):
    """The model after the embedding, written by hand in float64 from its weights: h (B, T, D) -> logits."""
    w1, b1 = (np.asarray(v, np.float64) for v in model.get_layer("hidden").weights)
    w2, b2 = (np.asarray(v, np.float64) for v in model.get_layer("logits").weights)
    return lambda h: tf.tanh(tf.reduce_mean(h, axis=1) @ w1 + b1) @ w2 + b2


def _layer_ig_reference(model, x, index, steps=64):
    """Gauss-Legendre integrated gradients along the embedding activations, float64, one tape per node."""
    emb = np.asarray(model.get_layer("embedding").embeddings, np.float64)
    h, h0 = emb[x], emb[np.zeros_like(x)]
    tail = _tail64(model)
    t, w = np.polynomial.legendre.leggauss(steps)
    total = np.zeros_like(h)
    for a, wk in zip((t + 1) / 2, w / 2):
        pt = tf.constant(h0 + a * (h - h0))
        with tf.GradientTape() as tape:
            tape.watch(pt)
            f = tf.reduce_sum(tf.gather(tail(pt), index, axis=1, batch_dims=1))
        total += wk * tape.gradient(f, pt).numpy()
    return ((h - h0) * total).sum(axis=-1)


def _outputs(model, x, index):
    out = np.asarray(model(x, training=False), np.float64)
    return out[np.arange(len(x)), index]


# ------------------------------------------------------------------------------------------ token scores
def test_layer_ig_per_token_scores_and_completeness():
    model, x = token_model()
    ig = IntegratedGradients(model, layer="embedding", steps=24, rule="gauss_legendre")
    scores, delta = ig.attribute(x, return_delta=True)
    index = np.asarray(model(x)).argmax(1)
    assert scores.shape == x.shape
    np.testing.assert_allclose(scores, _layer_ig_reference(model, x, index), rtol=1e-4, atol=1e-5)
    change = _outputs(model, x, index) - _outputs(model, np.zeros_like(x), index)  # f(x) - f(baseline)
    assert np.all(np.abs(scores.sum(axis=1) - change) <= 0.01 * np.abs(change))
    np.testing.assert_allclose(delta, scores.sum(axis=1) - change, atol=1e-5)
    # the functional verb and a per-example target
    np.testing.assert_allclose(attribute(model, x, "integrated-gradients", target=2, layer="embedding", steps=24,
                                         rule="gauss_legendre"),
                               _layer_ig_reference(model, x, np.full(len(x), 2)), rtol=1e-4, atol=1e-5)


def test_layer_saliency_and_gradient_x_activation_against_a_tape_on_the_tail():
    model, x = token_model(seed=1)
    emb = np.asarray(model.get_layer("embedding").embeddings, np.float64)
    h = tf.constant(emb[x])
    with tf.GradientTape() as tape:
        tape.watch(h)
        f = tf.reduce_sum(_tail64(model)(h)[:, 1])
    g = tape.gradient(f, h).numpy()
    np.testing.assert_allclose(Saliency(model, layer="embedding").attribute(x, target=1), g.sum(-1),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(GradientXInput(model, layer="embedding").attribute(x, target=1),
                               (emb[x] * g).sum(-1), rtol=1e-4, atol=1e-6)


def test_a_dense_layer_keeps_one_score_per_unit():
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="tanh", name="h"),
                              keras.layers.Dense(2, activation="tanh", name="o")])
    x = np.random.default_rng(3).normal(size=(6, 4)).astype("float32")
    a, delta = IntegratedGradients(model, layer="h", steps=32, rule="gauss_legendre").attribute(
        x, target=0, return_delta=True)
    assert a.shape == (6, 5)
    change = _outputs(model, x, np.zeros(6, int)) - _outputs(model, np.zeros_like(x), np.zeros(6, int))
    np.testing.assert_allclose(a.sum(1), change, rtol=1e-4, atol=1e-6)
    assert np.max(np.abs(delta)) < 1e-5


def decisive_token_model(length=5):
    """By construction the class is 1 exactly when token 7 occurs: only its embedding has a first coordinate,
    and the logits are ±(4·tanh(mean h₀) − 0.5) plus at most ±0.09 from the other coordinate."""
    ids = keras.Input((length,), dtype="int32")
    h = keras.layers.Embedding(8, 2, name="embedding")(ids)
    p = keras.layers.GlobalAveragePooling1D(name="pool")(h)
    u = keras.layers.Dense(2, activation="tanh", name="hidden")(p)
    model = keras.Model(ids, keras.layers.Dense(2, name="logits")(u))
    emb = np.zeros((8, 2), np.float32)
    emb[1:7, 1] = np.random.default_rng(0).uniform(-0.3, 0.3, size=6)
    emb[7, 0] = 3.0
    model.get_layer("embedding").embeddings.assign(emb)
    model.get_layer("hidden").set_weights([np.eye(2, dtype="float32"), np.zeros(2, "float32")])
    model.get_layer("logits").set_weights([np.array([[-4.0, 4.0], [0.3, -0.3]], "float32"),
                                           np.array([0.5, -0.5], "float32")])
    return model


def test_the_token_that_decides_the_class_ranks_first():
    model = decisive_token_model()
    rng = np.random.default_rng(1)
    x = rng.integers(1, 7, size=(5, 5)).astype("int32")
    where = np.arange(5)  # token 7 at every position once
    x[np.arange(5), where] = 7
    without = x.copy()
    without[np.arange(5), where] = 0
    assert np.all(np.asarray(model(x)).argmax(1) == 1) and np.all(np.asarray(model(without)).argmax(1) == 0)
    for method in (IntegratedGradients(model, layer="embedding", steps=16), GradientXInput(model, layer="embedding")):
        scores = method.attribute(x, target=1)
        np.testing.assert_array_equal(np.abs(scores).argmax(1), where)
        assert np.all(scores[np.arange(5), where] > 0)


def test_smoothgrad_wraps_a_layer_method():
    model, x = token_model(seed=2)
    ig = IntegratedGradients(model, layer="embedding", steps=8)
    np.testing.assert_allclose(SmoothGrad(ig, num_samples=2, noise_std=0.0).attribute(x, target=0),
                               ig.attribute(x, target=0), rtol=1e-6, atol=1e-7)
    noisy = SmoothGrad(Saliency(model, layer="embedding"), num_samples=3, noise_std=0.1, seed=0)
    assert noisy.attribute(x).shape == x.shape and noisy.layer == "embedding"


# ------------------------------------------------------------------------------------- the user's model
def test_the_users_model_is_left_as_it_was():
    model, x = token_model(seed=4)
    before = model(x).numpy()
    config = model.get_config()
    counts = [(len(layer._inbound_nodes), len(layer._outbound_nodes)) for layer in model.layers]
    for layer in ("embedding", "pool", "hidden"):
        Saliency(model, layer=layer).attribute(x)
    assert [(len(layer._inbound_nodes), len(layer._outbound_nodes)) for layer in model.layers] == counts
    assert model.get_config() == config
    np.testing.assert_array_equal(model(x).numpy(), before)
    assert len(model.layers) == 5


# ----------------------------------------------------------------------------------------------- refusals
def test_refusals():
    model, x = token_model()
    with pytest.raises(InputError, match=r"integer inputs.*layer='embedding'"):
        IntegratedGradients(model)
    with pytest.raises(InputError, match="unknown layer 'nope'; the model's layers are embedding, pool, hidden"):
        IntegratedGradients(model, layer="nope")
    with pytest.raises(TypeError, match="layer: expected a layer name"):
        Saliency(model, layer=3)
    with pytest.raises(InputError, match="whole numbers"):
        Saliency(model, layer="embedding").attribute(x + 0.5)
    with pytest.raises(InputError, match="unknown layer 'ids'"):
        IntegratedGradients(model, layer="ids")  # the input itself is no layer to attribute at

    inp = keras.Input((4,))
    shared = keras.layers.Dense(4, name="shared")
    twice = keras.Model(inp, keras.layers.Dense(1)(shared(shared(inp))))
    with pytest.raises(InputError, match="layer 'shared' is called 2 times in the model"):
        Saliency(twice, layer="shared")

    a = keras.layers.Dense(4, name="a")(inp)
    residual = keras.Model(inp, keras.layers.Dense(1)(keras.layers.Add(name="plus")([a, inp])))
    with pytest.raises(InputError, match="layer 'a' is not on a simple path: layer 'plus' combines"):
        Saliency(residual, layer="a")

    ids = keras.Input((3,), dtype="int32")
    h = keras.layers.Embedding(5, 2, mask_zero=True, name="masked")(ids)
    masked = keras.Model(ids, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(h)))
    with pytest.raises(InputError, match="layer 'masked' produces a mask"):
        Saliency(masked, layer="masked")


def test_token_attributions_for_the_report():
    from tfpartials import token_attributions

    model, x = token_model(seed=5)
    vocab = [f"w{i}" for i in range(12)]
    t = token_attributions(model, x, vocab, steps=24)
    index = np.asarray(model(x)).argmax(1)
    np.testing.assert_array_equal(t.targets, index)
    np.testing.assert_allclose(t.scores, _layer_ig_reference(model, x, index), rtol=1e-4, atol=1e-5)
    assert t.tokens[0, 0] == f"w{x[0, 0]}" and t.layer == "embedding" and np.max(np.abs(t.delta)) < 1e-4
    with pytest.raises(InputError, match="token id 11 is outside the vocabulary of 3 tokens"):
        token_attributions(model, np.full((1, 6), 11), ["a", "b", "c"])
    dense = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    with pytest.raises(InputError, match="no Embedding layer"):
        token_attributions(dense, np.ones((1, 3), "float32"))


class _Fragile(keras.layers.Layer):
    """Raises a long multi-line error when armed (a layer that cannot be called again on a new input)."""

    armed = False

    def call(self, x):
        if self.armed:
            raise ValueError("boom: this layer cannot be called again")
        return 2.0 * x


def test_a_tail_that_cannot_be_rebuilt_is_refused_in_one_line():
    inp = keras.Input((3,))
    fragile = _Fragile(name="fragile")
    model = keras.Model(inp, keras.layers.Dense(1)(fragile(keras.layers.Dense(3, name="first")(inp))))
    fragile.armed = True
    with pytest.raises(InputError, match=r"layer 'first': could not rebuild the model after it at layer 'fragile' "
                                         r"\(ValueError") as info:
        Saliency(model, layer="first")
    assert "\n" not in str(info.value)
    assert [len(layer._inbound_nodes) for layer in model.layers] == [1, 1, 1, 1]  # nothing left behind
