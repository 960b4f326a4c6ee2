"""KFAC for layers run inside another layer's call (MultiHeadAttention's projections, TimeDistributed), shared
layers and DepthwiseConv1D, against independent float64 references: exact GGN blocks from Jacobians by tape on
a hand-made float64 clone, attention written out by hand, patches unfolded by loops."""

from __future__ import annotations

import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import models as M
from tests.linalg.test_kfac import per_example_gradients, reference_ggn
from tfpartials import InputError
from tfpartials.linalg._kfac_layers import intercepted_calls
from tfpartials.linalg.kfac import EKFACOperator, KFACOperator

F64 = dict(precision="float64", quiet=True)


def _randomize(model, seed, scale=0.5):
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign(rng.normal(size=v.shape) * scale)
    return rng


def _blocks_equal_ggn(K, G, layers):
    by = {b.layer: b for b in K.blocks}
    for name in layers:
        b = by[name]
        ref = G[np.ix_(b.indices, b.indices)]
        assert np.linalg.norm(ref) > 1e-6, name                      # a block that could fail
        np.testing.assert_allclose(b.to_dense(), ref, rtol=1e-6, atol=1e-10 * np.abs(ref).max(), err_msg=name)


def _expand_reduce(a, g, approx):
    """Reference factors from features ``a`` (N, R, d_a) and output gradients ``g`` (N, R, d_out)."""
    N, R = a.shape[:2]
    if approx == "expand":
        return np.einsum("nri,nrj->ij", a, a) / (N * R), np.einsum("nri,nrj->ij", g, g) / N
    am, gs = a.mean(1), g.sum(1)
    return am.T @ am / N, gs.T @ gs / N


def _ones(a):
    return np.concatenate([a, np.ones(a.shape[:-1] + (1,))], axis=-1)


# ------------------------------------------------------------------------------------------ attention: exactness
def test_attention_projections_at_one_token_equal_the_exact_ggn_blocks():
    """One example: a projection applied at ONE token has its exact GGN block as KFAC block. The first attention
    reads one query token against two key/value tokens (query, output exact); the second attends over one
    token (value, output exact; query and key have zero curvature: softmax over one key is constant)."""
    inp = keras.Input((2, 3))
    q = keras.layers.Cropping1D((1, 0))(inp)
    h = keras.layers.MultiHeadAttention(2, 2, name="cross")(q, inp)
    h = keras.layers.MultiHeadAttention(2, 2, value_dim=3, name="self")(h, h)
    out = keras.layers.Dense(2, activation="tanh", name="head")(keras.layers.Flatten()(h))
    model = keras.Model(inp, out)
    rng = _randomize(model, 21)
    x, y = rng.normal(size=(1, 2, 3)), rng.normal(size=(1, 2))
    G = reference_ggn(model, x, "mse")
    K = KFACOperator(model, (x, y), loss="mse", **F64)
    assert [b.layer for b in K.blocks] == ["cross/query", "cross/key", "cross/value", "cross/attention_output",
                                           "self/query", "self/key", "self/value", "self/attention_output", "head"]
    assert [b.names for b in K.blocks][:1] == [("cross/query/kernel", "cross/query/bias")]
    _blocks_equal_ggn(K, G, ["cross/query", "cross/attention_output", "self/value", "self/attention_output",
                             "head"])
    by = {b.layer: b for b in K.blocks}
    for name in ("self/query", "self/key"):
        assert np.abs(by[name].B).max() == 0 and np.abs(G[np.ix_(by[name].indices, by[name].indices)]).max() < 1e-12
    # the exact block of the output projection is not contiguous in the flat vector order: the indices map it
    assert by["self/attention_output"].A.shape == (7, 7) and by["self/value"].B.shape == (6, 6)


# ------------------------------------------------------------------------------------------ attention: factors
def _attention_by_hand(weights, x, heads, key_dim):
    """Self-attention written out (float64): returns the projection inputs and the watched pre-activations."""
    Wq, bq, Wk, bk, Wv, bv, Wo, bo = (tf.constant(w, tf.float64) for w in weights)
    x = tf.constant(x, tf.float64)
    zq = tf.einsum("btd,dhk->bthk", x, Wq) + bq
    zk = tf.einsum("btd,dhk->bthk", x, Wk) + bk
    zv = tf.einsum("btd,dhk->bthk", x, Wv) + bv
    return x, zq, zk, zv, (Wo, bo)


@pytest.fixture(scope="module")
def attention():
    model, x, y = M.attention_model(n=4, steps=3)
    return model, x.astype(np.float64), y.astype(np.float64)


@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_attention_factors_over_tokens_against_attention_written_out(attention, approx):
    model, x, y = attention
    K = KFACOperator(model, (x, y), loss="mse", fisher="empirical", kfac_approx=approx, wrt=["mha/*"], **F64)
    mha = model.get_layer("mha")
    ln = model.get_layer("ln")
    gamma, beta, W, w0 = (np.asarray(v, np.float64) for v in (*ln.get_weights(), *model.get_layer("out")
                                                              .get_weights()))
    x_t, zq, zk, zv, (Wo, bo) = _attention_by_hand(mha.get_weights(), x, 2, 2)
    with tf.GradientTape() as tape:
        tape.watch([zq, zk, zv])
        p = tf.nn.softmax(tf.einsum("bthk,bshk->bhts", zq / np.sqrt(2.0), zk), axis=-1)
        att = tf.einsum("bhts,bshk->bthk", p, zv)
        tape.watch(att)
        zo = tf.einsum("bthk,hkd->btd", att, Wo) + bo
        tape.watch(zo)
        mu = tf.reduce_mean(zo, -1, keepdims=True)
        var = tf.reduce_mean((zo - mu) ** 2, -1, keepdims=True)
        h = (zo - mu) / tf.sqrt(var + ln.epsilon) * gamma + beta
        out = tf.reduce_mean(h, axis=1) @ W + w0
        total = tf.reduce_sum(tf.reduce_mean((out - y) ** 2, axis=1))
    np.testing.assert_allclose(out.numpy(), model(x.astype("float32")).numpy(), rtol=1e-4, atol=1e-5)
    gq, gk, gv, go = (t.numpy() for t in tape.gradient(total, [zq, zk, zv, zo]))
    N, T = x.shape[:2]
    feats = {"mha/query": (x, gq), "mha/key": (x, gk), "mha/value": (x, gv),
             "mha/attention_output": (att.numpy().reshape(N, T, -1), go)}
    assert [b.layer for b in K.blocks] == list(feats)
    for b in K.blocks:
        a, g = feats[b.layer]
        A, B = _expand_reduce(_ones(a), g.reshape(N, T, -1), approx)
        np.testing.assert_allclose(b.A, A, rtol=1e-9, atol=1e-12, err_msg=b.layer)
        np.testing.assert_allclose(b.B, B, rtol=1e-9, atol=1e-12, err_msg=b.layer)


def test_attention_ekfac_eigenvalues_are_projected_gradient_second_moments(attention):
    """EKFAC's eigenvalues in the KFAC eigenbasis are the second moments of the per-example gradients (summed
    over tokens by the tape) projected onto that basis."""
    model, x, y = attention
    E = EKFACOperator(model, (x, y), loss="mse", fisher="empirical", batch_size=3, **F64)
    grads = per_example_gradients(model, x, y, "mse")
    assert [b.layer for b in E.blocks] == ["mha/query", "mha/key", "mha/value", "mha/attention_output", "ln",
                                           "ln", "out"]
    for b in E.blocks:
        if b.kind == "diagonal":
            continue
        (_, QA), (_, QB) = b.A_eig, b.B_eig
        Gn = grads[:, b.indices].reshape(len(x), QA.shape[0], QB.shape[0])
        ref = np.mean(np.einsum("ia,nij,jc->nac", QA, Gn, QB) ** 2, axis=0)
        # 1e-6: Keras' attention scales queries by a float32-rounded 1/sqrt(key_dim) even in float64 (the clone
        # the reference gradients come from is 2e-9 relative off the exact attention)
        np.testing.assert_allclose(b.corrected, ref, rtol=1e-6, atol=1e-8 * ref.max(), err_msg=b.layer)


# ------------------------------------------------------------------------------------------ the model is untouched
def test_model_untouched_after_building_kfac_on_attention_and_time_distributed():
    model, x, y = M.attention_model(n=5)
    inp = keras.Input((3, 4))
    td = keras.layers.TimeDistributed(keras.layers.Dense(2, name="inner"), name="td")
    tmodel = keras.Model(inp, keras.layers.Dense(1, name="o")(keras.layers.Flatten()(td(inp))))
    for m in (model, tmodel):
        subs = [layer for layer in m._flatten_layers(include_self=False, recursive=True)]
        out0 = m(x).numpy()          # first: a call sets Keras' own `_called` flags
        before = {id(layer): dict(vars(layer)) for layer in subs}
        weights = [w.copy() for w in m.get_weights()]
        KFACOperator(m, (x, y), loss="mse", quiet=True)
        for layer in subs:
            assert "call" not in vars(layer) and layer.call.__func__ is type(layer).call
            after = vars(layer)
            assert after.keys() == before[id(layer)].keys(), layer.name
            assert all(after[k] is before[id(layer)][k] for k in after), layer.name
        for w0, w1 in zip(weights, m.get_weights()):
            np.testing.assert_array_equal(w0, w1)
        np.testing.assert_array_equal(m(x).numpy(), out0)


def test_interception_is_scoped_to_its_thread_and_restored_on_error():
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    x = np.ones((1, 3), "float32")
    seen = {}

    def other():
        seen["other"] = layer(x)

    with pytest.raises(RuntimeError, match="boom"):
        with intercepted_calls({id(layer): (layer, lambda *a, **k: "tapped")}):
            with intercepted_calls({id(layer): (layer, lambda *a, **k: "inner")}):   # nested: innermost wins
                assert layer.call(x) == "inner"
            assert layer.call(x) == "tapped" and "call" in vars(layer)
            t = threading.Thread(target=other)
            t.start()
            t.join()
            raise RuntimeError("boom")
    assert seen["other"].shape == (1, 2)                                   # another thread: the real call
    assert "call" not in vars(layer) and layer.call.__func__ is keras.layers.Dense.call


# ------------------------------------------------------------------------------------------ shared weights
def test_shared_dense_sums_over_its_uses_and_time_distributed_over_steps():
    """A layer called twice is one weight-sharing layer whose positions are the rows of all its calls (expand:
    A averages over them, B sums); TimeDistributed(Dense) over T steps is T calls of the Dense."""
    inp = keras.Input((3,))
    shared = keras.layers.Dense(3, name="shared")
    h1 = keras.layers.Activation("tanh")(shared(inp))
    h2 = keras.layers.Activation("tanh")(shared(h1))
    model = keras.Model(inp, keras.layers.Dense(1, name="out")(h2))
    rng = _randomize(model, 31)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 1))
    W, b, V, c = (np.asarray(w, np.float64) for w in model.get_weights())
    z1 = tf.constant(x @ W + b)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(z1)
        a2 = tf.tanh(z1)
        z2 = a2 @ W + b
        tape.watch(z2)
        total = tf.reduce_sum((tf.tanh(z2) @ V + c - y) ** 2)
    g1, g2 = tape.gradient(total, [z1, z2])
    a = _ones(np.stack([x, a2.numpy()], axis=1))
    g = np.stack([g1.numpy(), g2.numpy()], axis=1)
    for approx in ("expand", "reduce"):
        K = KFACOperator(model, (x, y), loss="mse", fisher="empirical", kfac_approx=approx, wrt=["shared"], **F64)
        A, B = _expand_reduce(a, g, approx)
        np.testing.assert_allclose(K.blocks[0].A, A, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(K.blocks[0].B, B, rtol=1e-9, atol=1e-12)

    inp = keras.Input((3, 2))
    td = keras.layers.TimeDistributed(keras.layers.Dense(2, activation="tanh", name="inner"), name="td")
    model = keras.Model(inp, keras.layers.Dense(1, name="out")(keras.layers.Flatten()(td(inp))))
    rng = _randomize(model, 32)
    x, y = rng.normal(size=(4, 3, 2)), rng.normal(size=(4, 1))
    W, b, V, c = (np.asarray(w, np.float64) for w in model.get_weights())
    z = tf.constant(x @ W + b)
    with tf.GradientTape() as tape:
        tape.watch(z)
        total = tf.reduce_sum((tf.reshape(tf.tanh(z), (4, -1)) @ V + c - y) ** 2)
    g = tape.gradient(total, z).numpy()
    K = KFACOperator(model, (x, y), loss="mse", fisher="empirical", **F64)
    assert [b.layer for b in K.blocks] == ["td/inner", "out"]
    A, B = _expand_reduce(_ones(x), g, "expand")
    np.testing.assert_allclose(K.blocks[0].A, A, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(K.blocks[0].B, B, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------------------ DepthwiseConv1D
def _depthwise1d_model(rng_seed, length, stride=1, padding="valid"):
    model = keras.Sequential([keras.Input((length, 2)),
                              keras.layers.DepthwiseConv1D(3, strides=stride, padding=padding, depth_multiplier=2,
                                                           activation="tanh", name="dw"),
                              keras.layers.Flatten(), keras.layers.Dense(2, name="out")])
    return model, _randomize(model, rng_seed)


def test_depthwise1d_one_block_per_channel_equals_the_ggn_block_at_one_position():
    model, rng = _depthwise1d_model(41, 3)                   # length 3, kernel 3: one output position
    x, y = rng.normal(size=(1, 3, 2)), rng.normal(size=(1, 2))
    G = reference_ggn(model, x, "mse")
    for approx in ("expand", "reduce"):
        K = KFACOperator(model, (x, y), loss="mse", kfac_approx=approx, **F64)
        assert [b.layer for b in K.blocks] == ["dw[0]", "dw[1]", "out"]
        assert [b.A.shape for b in K.blocks[:2]] == [(4, 4)] * 2 and K.blocks[0].B.shape == (2, 2)
        _blocks_equal_ggn(K, G, ["dw[0]", "dw[1]", "out"])


@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_depthwise1d_factors_against_unfolded_reference(approx):
    model, rng = _depthwise1d_model(42, 5, stride=2, padding="same")
    x, y = rng.normal(size=(3, 5, 2)), rng.normal(size=(3, 2))
    K = KFACOperator(model, (x, y), loss="mse", fisher="empirical", kfac_approx=approx, wrt=["dw"], **F64)
    kernel, bias, W, w0 = (np.asarray(v, np.float64) for v in model.get_weights())
    xp = np.pad(x, ((0, 0), (1, 1), (0, 0)))                 # SAME, stride 2, length 5, kernel 3: pad 1 each side
    patches = np.stack([xp[:, i:i + 3, :] for i in range(0, 5, 2)], axis=1)   # (N, R, k, channel)
    N, R = patches.shape[:2]
    zs = tf.constant(np.einsum("nrkc,kcm->nrcm", patches, kernel) + bias.reshape(2, 2))
    with tf.GradientTape() as tape:
        tape.watch(zs)
        total = tf.reduce_sum(tf.reduce_mean((tf.reshape(tf.tanh(zs), (N, -1)) @ W + w0 - y) ** 2, axis=1))
    g = tape.gradient(total, zs).numpy()                     # (N, R, channel, multiplier)
    np.testing.assert_allclose(tf.reshape(tf.tanh(zs), (N, -1)).numpy() @ W + w0,
                               model(x.astype("float32")).numpy(), rtol=1e-4, atol=1e-5)
    for c, b in enumerate(K.blocks):
        A, B = _expand_reduce(_ones(patches[:, :, :, c]), g[:, :, c, :], approx)
        np.testing.assert_allclose(b.A, A, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(b.B, B, rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(b.indices, np.concatenate([
            np.arange(12).reshape(3, 2, 2)[:, c, :].reshape(-1), 12 + 2 * c + np.arange(2)]))


# ------------------------------------------------------------------------------------------ errors
def test_layer_whose_weights_its_owner_reads_without_calling_it_is_named():
    class Tied(keras.layers.Layer):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.proj = keras.layers.Dense(2, name="proj")

        def build(self, shape):
            self.proj.build(shape)

        def call(self, x):
            return keras.ops.matmul(x, self.proj.kernel)

    inp = keras.Input((2,))
    model = keras.Model(inp, Tied(name="tied")(inp))
    x, y = np.ones((2, 2), "float32"), np.ones((2, 2), "float32")
    with pytest.raises(InputError, match=r"KFAC: layer 'tied/proj' was not called while re-evaluating") as info:
        KFACOperator(model, (x, y), loss="mse", wrt=["tied/proj/kernel"], quiet=True)
    assert "\n" not in str(info.value)
    assert "call" not in vars(model.get_layer("tied").proj)          # the interception is gone after the error


# ------------------------------------------------------------------------------------------ CLI
def test_cli_kfac_on_a_tiny_transformer_names_the_projections(tmp_path, capsys):
    from tfpartials.cli.main import main

    keras.utils.set_random_seed(3)
    inp = keras.Input((4,), dtype="int32")
    e = keras.layers.Embedding(7, 4, name="emb")(inp)
    h = keras.layers.LayerNormalization(name="ln")(keras.layers.MultiHeadAttention(2, 2, name="attn")(e, e))
    model = keras.Model(inp, keras.layers.Dense(2, name="logits")(keras.layers.GlobalAveragePooling1D()(h)))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.save(tmp_path / "t.keras")
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 7, size=(6, 4)).astype("int32"), rng.integers(0, 2, size=6)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    code = main(["kfac", str(tmp_path / "t.keras"), "--data", str(tmp_path / "d.npz"), "--precision", "float64",
                 "--quiet", "--out", str(tmp_path / "f.npz")])
    assert code == 0, capsys.readouterr().err
    f = np.load(tmp_path / "f.npz")
    assert list(f["layers"]) == ["emb", "attn/query", "attn/key", "attn/value", "attn/attention_output",
                                 "ln/gamma", "ln/beta", "logits"]
    assert f["attn/value/A"].shape == (5, 5) and f["attn/attention_output/B"].shape == (4, 4)
    idx = np.concatenate([f[f"{name}/indices"] for name in f["layers"]])
    assert sorted(idx.tolist()) == list(range(len(idx)))
    # closed form: the embedding's input factor is the token frequency over all positions
    counts = np.bincount(x.ravel(), minlength=7)
    np.testing.assert_allclose(f["emb/A"], np.diag(counts / x.size), rtol=1e-12, atol=1e-15)
    # the normalisation parameters' diagonals are exact at any number of examples
    G = reference_ggn(model, x, "ce")
    for name in ("ln/gamma", "ln/beta"):
        np.testing.assert_allclose(f[f"{name}/diag"], np.diag(G)[f[f"{name}/indices"]], rtol=1e-8, atol=1e-14)


def test_weights_also_used_outside_their_layers_call_are_refused():
    """Tied weights: the owner calls the projection AND multiplies by its kernel again; the gradient of that
    kernel is then not sum_r a_r g_r^T over its calls, and KFAC says so instead of dropping the second use."""
    class TiedTwice(keras.layers.Layer):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.proj = keras.layers.Dense(2, use_bias=False, name="proj")

        def build(self, shape):
            self.proj.build(shape)

        def call(self, x):
            return keras.ops.matmul(keras.ops.tanh(self.proj(x)), self.proj.kernel)

    inp = keras.Input((2,))
    model = keras.Model(inp, TiedTwice(name="tied")(inp))
    x, y = np.ones((3, 2), "float32"), np.ones((3, 2), "float32")
    with pytest.raises(InputError, match=r"KFAC: the gradient of layer 'tied/proj'.s weights is not carried by"):
        KFACOperator(model, (x, y), loss="mse", quiet=True)
    assert "call" not in vars(model.get_layer("tied").proj)
