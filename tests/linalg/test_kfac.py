"""KFAC / EKFAC against independent float64 references: Gauss-Newton blocks from Jacobians by nested tapes on a
hand-made float64 clone, per-example gradients by tape, numpy unfolding of convolution patches."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import models as M
from tests.references import float64_clone
from tfpartials import InputError, ResourceError
from tfpartials.linalg.kfac import EKFACOperator, KFACBlock, KFACOperator


# ------------------------------------------------------------------------------------------ references
def _output_hessian(loss: str, out: np.ndarray) -> np.ndarray:
    """Closed-form Hessian of one example's loss w.r.t. its outputs (C,)."""
    if loss == "mse":
        return 2.0 / out.size * np.eye(out.size)
    z = out - out.max()
    p = np.exp(z) / np.exp(z).sum()
    return np.diag(p) - np.outer(p, p)  # softmax cross-entropy from logits


def reference_ggn(model, x, loss: str) -> np.ndarray:
    """(1/N) sum_n J_n^T H_n J_n in float64, J row by row (one eager gradient per output of one forward pass of
    all N examples) on a float64 clone: all trainable variables; inference mode, so example n's outputs depend
    on x_n only. Eager rows, not tape.jacobian: no tf.function traced per call."""
    clone = float64_clone(model)
    tv = clone.trainable_variables
    x = np.asarray(x, np.float64) if np.asarray(x).dtype.kind == "f" else np.asarray(x)
    with tf.GradientTape(persistent=True) as tape:
        flat = tf.reshape(clone(x, training=False), [-1])
        entries = tf.unstack(flat)
    rows = [np.concatenate([np.ravel(tf.convert_to_tensor(g)) for g in tape.gradient(e, tv,
                                                                                     unconnected_gradients="zero")])
            for e in entries]
    del tape
    N, C = len(x), flat.shape[0] // len(x)
    J = np.array(rows).reshape(N, C, -1)
    outs = flat.numpy().reshape(N, C)
    return sum(J[n].T @ _output_hessian(loss, outs[n]) @ J[n] for n in range(N)) / N


def per_example_gradients(model, x, y, loss: str) -> np.ndarray:
    """(N, n) per-example loss gradients in float64 by tape (independent of the library)."""
    clone = float64_clone(model)
    rows = []
    for xn, yn in zip(np.asarray(x, np.float64), y):
        with tf.GradientTape() as tape:
            out = clone(xn[None], training=False)[0]
            if loss == "mse":
                value = tf.reduce_mean((out - yn) ** 2)
            else:
                value = -tf.nn.log_softmax(out)[int(yn)]
        rows.append(np.concatenate([g.numpy().ravel() for g in tape.gradient(value, clone.trainable_variables)]))
    return np.array(rows)


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


# ------------------------------------------------------------------------------------------ shared models
# One model per architecture for the whole module: compiled passes are cached per model and settings, so tests
# that slice the same data share them instead of tracing afresh.
@pytest.fixture(scope="module")
def mlp17():
    return M.mlp(n=17)


@pytest.fixture(scope="module")
def reg9():
    return M.regression_mlp(n=9)


# ------------------------------------------------------------------------------------------ Dense
def test_single_example_type2_blocks_equal_exact_ggn_blocks(mlp17):
    model, x, y = mlp17
    x, y = x[:1], y[:1]
    K = KFACOperator(model, (x, y), loss="sparse_categorical_crossentropy", from_logits=True, precision="float64",
                     quiet=True)
    G = reference_ggn(model, x, "ce")
    assert [b.layer for b in K.blocks] == ["h1", "h2", "logits"]
    for b in K.blocks:
        assert b.kind == "kronecker" and b.contiguous and b.names == (f"{b.layer}/kernel", f"{b.layer}/bias")
        sl = slice(b.offset, b.offset + b.size)
        assert _rel(np.kron(b.A, b.B), G[sl, sl]) < 1e-6


def test_single_dense_layer_mse_equals_exact_ggn_at_any_n():
    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="lin")])
    model.set_weights([rng.normal(size=(3, 2)), rng.normal(size=2)])
    x, y = rng.normal(size=(13, 3)), rng.normal(size=(13, 2))
    G = reference_ggn(model, x, "mse")
    # two batch sizes on the same model: the second reuses the compiled pass, retraced with relaxed shapes
    for bs in (5, 2):
        K = KFACOperator(model, (x, y), loss="mse", precision="float64", batch_size=bs, quiet=True)
        np.testing.assert_allclose(K.to_dense().numpy(), G, rtol=1e-10, atol=1e-12)
    assert K.num_examples == 13


@pytest.fixture(scope="module")
def mlp_ops(mlp17):
    model, x, y = mlp17
    x, y = x[:12], y[:12]
    kw = dict(loss="sparse_categorical_crossentropy", from_logits=True, precision="float64", quiet=True,
              batch_size=5)
    return model, x, y, KFACOperator(model, (x, y), **kw), EKFACOperator(model, (x, y), **kw)


@pytest.mark.parametrize("which", [3, 4])
def test_inverse_logdet_spectrum_against_dense(mlp_ops, which):
    op = mlp_ops[which]
    D = op.to_dense().numpy()
    lam = 0.3
    rng = np.random.default_rng(1)
    v = rng.normal(size=op.n)
    inv = op.inverse(lam)
    back = inv @ ((op @ v).numpy() + lam * v)
    np.testing.assert_allclose(back.numpy(), v, rtol=0, atol=1e-6 * np.abs(v).max())
    sign, ref = np.linalg.slogdet(D + lam * np.eye(op.n))
    assert sign == 1 and abs(op.logdet(lam) - ref) < 1e-8 * abs(ref)
    np.testing.assert_allclose(op.eigenvalues(), np.sort(np.linalg.eigvalsh(D))[::-1], atol=1e-10)
    assert np.isclose(op.trace(), np.trace(D), rtol=1e-10)
    assert np.isclose(op.frobenius_norm(), np.linalg.norm(D), rtol=1e-10)
    assert inv.symmetric and inv.psd and (2.0 * op).n == op.n


def test_pi_damped_inverse_is_the_inverse_of_the_damped_factors(mlp_ops):
    K = mlp_ops[3]
    lam = 0.05
    inv = K.inverse(lam, pi_damping=True).to_dense().numpy()
    for b in K.blocks:
        da, db = b.A.shape[0], b.B.shape[0]
        pi = np.sqrt((np.trace(b.A) / da) / (np.trace(b.B) / db))
        ref = np.linalg.inv(np.kron(b.A + pi * np.sqrt(lam) * np.eye(da), b.B + np.sqrt(lam) / pi * np.eye(db)))
        np.testing.assert_allclose(inv[np.ix_(b.indices, b.indices)], ref, rtol=1e-8, atol=1e-10)
    with pytest.raises(InputError, match="pi_damping: EKFAC"):
        mlp_ops[4].inverse(lam, pi_damping=True)


def test_ekfac_is_closer_to_the_ggn_than_kfac(mlp_ops):
    model, x, _, K, E = mlp_ops
    G = reference_ggn(model, x, "ce")
    mask = np.zeros_like(G)
    for b in K.blocks:
        mask[np.ix_(b.indices, b.indices)] = 1
    Gb = G * mask
    err_k = np.linalg.norm(K.to_dense().numpy() - Gb)
    err_e = np.linalg.norm(E.to_dense().numpy() - Gb)
    assert err_e < err_k
    # same eigenbasis: EKFAC's eigenvectors are KFAC's
    for bk, be in zip(K.blocks, E.blocks):
        np.testing.assert_allclose(be.A_eig[1], bk.A_eig[1])


def test_ekfac_eigenvalues_are_projected_gradient_second_moments(mlp17):
    model, x, y = mlp17
    E = EKFACOperator(model, (x, y), loss="sparse_categorical_crossentropy", from_logits=True, fisher="empirical",
                      precision="float64", quiet=True, batch_size=6)
    grads = per_example_gradients(model, x, y, "ce")
    for b in E.blocks:
        (_, QA), (_, QB) = b.A_eig, b.B_eig
        Gn = grads[:, b.indices].reshape(len(x), QA.shape[0], QB.shape[0])
        ref = np.mean(np.einsum("ia,nij,jc->nac", QA, Gn, QB) ** 2, axis=0)
        np.testing.assert_allclose(b.corrected, ref, rtol=1e-9, atol=1e-13)


def test_empirical_kfac_single_example_is_gradient_outer_product(reg9):
    model, x, y = reg9
    x, y = x[:1], y[:1]
    K = KFACOperator(model, (x, y), loss="mse", fisher="empirical", precision="float64", quiet=True)
    g = per_example_gradients(model, x, y, "mse")[0]
    for b in K.blocks:
        gb = g[b.indices]
        np.testing.assert_allclose(b.to_dense(), np.outer(gb, gb), rtol=1e-9, atol=1e-13)


def test_mc_is_seeded_and_close_to_type2_with_many_samples(reg9):
    model, x, y = reg9
    kw = dict(loss="mse", precision="float64", quiet=True)
    a = KFACOperator(model, (x, y), fisher="mc", mc_samples=400, seed=3, **kw)
    b = KFACOperator(model, (x, y), fisher="mc", mc_samples=400, seed=3, **kw)
    t2 = KFACOperator(model, (x, y), **kw)
    np.testing.assert_array_equal(a.to_dense().numpy(), b.to_dense().numpy())
    assert _rel(a.to_dense().numpy(), t2.to_dense().numpy()) < 0.15


def test_normalisation_variables_get_their_exact_ggn_diagonal():
    model, x, y = M.batchnorm_dropout_model(n=7)
    K = KFACOperator(model, (x, y), loss="mse", precision="float64", quiet=True)
    G = reference_ggn(model, x, "mse")
    kinds = {b.layer: b.kind for b in K.blocks}
    assert kinds == {"d1": "kronecker", "bn": "diagonal", "out": "kronecker"}
    for b in K.blocks:
        if b.kind == "diagonal":
            np.testing.assert_allclose(b.diag, np.diag(G)[b.indices], rtol=1e-9, atol=1e-14)
            with pytest.raises(InputError, match="diagonal"):
                b.A_eig  # noqa: B018


def test_wrt_kernel_only_and_model_untouched(mlp17):
    model, x, y = mlp17
    x, y = x[:5], y[:5]
    before = [w.copy() for w in model.get_weights()]
    act = model.get_layer("h1").activation
    K = KFACOperator(model, (x, y), loss="sparse_categorical_crossentropy", from_logits=True, wrt=["h2/kernel"],
                     precision="float64", quiet=True)
    (b,) = K.blocks
    assert isinstance(b, KFACBlock) and b.names == ("h2/kernel",) and b.A.shape == (6, 6) and K.n == 36
    assert model.get_layer("h1").activation is act
    for w0, w1 in zip(before, model.get_weights()):
        np.testing.assert_array_equal(w0, w1)


# ------------------------------------------------------------------------------------------ convolutions
def _unfold(x, k, stride, pad):
    """(N, R, k*k*C) patches of NHWC ``x`` by loops, kernel row-major order (kh, kw, c)."""
    if pad:
        x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    n, h, w, c = x.shape
    rows = []
    for i in range(0, h - k + 1, stride):
        for j in range(0, w - k + 1, stride):
            rows.append(x[:, i:i + k, j:j + k, :].reshape(n, -1))
    return np.stack(rows, axis=1)


@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("stride,padding", [(1, "valid"), (2, "same")])
def test_conv2d_factors_against_unfolded_reference(approx, stride, padding):
    rng = np.random.default_rng(4)
    inp = keras.Input((5, 5, 2))
    z = keras.layers.Conv2D(3, 3, strides=stride, padding=padding, name="conv")(inp)
    h = keras.layers.Activation("tanh")(z)
    out = keras.layers.Dense(2, name="out")(keras.layers.Flatten()(h))
    model = keras.Model(inp, out)
    for v in model.trainable_variables:
        v.assign(rng.normal(size=v.shape) * 0.5)
    x, y = rng.normal(size=(6, 5, 5, 2)), rng.normal(size=(6, 2))
    K = KFACOperator(model, (x, y), loss="mse", fisher="empirical", kfac_approx=approx, precision="float64",
                     wrt=["conv"], quiet=True)
    # reference: patches by loops, output gradients w.r.t. the conv output by tape on a float64 clone
    clone = float64_clone(model)
    conv_out = keras.Model(clone.input, clone.get_layer("conv").output)
    zs = tf.constant(conv_out(x).numpy())
    head_in = keras.Input(zs.shape[1:], dtype="float64")
    t = head_in
    after = [layer.name for layer in clone.layers].index("conv") + 1
    for layer in clone.layers[after:]:
        t = layer(t)
    head = keras.Model(head_in, t)
    with tf.GradientTape() as tape:
        tape.watch(zs)
        per = tf.reduce_mean((head(zs) - y) ** 2, axis=1)
        total = tf.reduce_sum(per)
    g = tape.gradient(total, zs).numpy().reshape(len(x), -1, 3)
    a = _unfold(x, 3, stride, 1 if padding == "same" else 0)  # SAME, stride 2, 5x5, kernel 3: pad 1 each side
    a = np.concatenate([a, np.ones(a.shape[:2] + (1,))], axis=2)
    N, R = a.shape[:2]
    if approx == "expand":
        A = np.einsum("nri,nrj->ij", a, a) / (N * R)
        B = np.einsum("nri,nrj->ij", g, g) / N
    else:
        am, gs = a.mean(1), g.sum(1)
        A, B = am.T @ am / N, gs.T @ gs / N
    (b,) = K.blocks
    np.testing.assert_allclose(b.A, A, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(b.B, B, rtol=1e-9, atol=1e-12)


def test_conv_with_one_output_position_equals_the_ggn_block():
    rng = np.random.default_rng(5)
    model = keras.Sequential([keras.Input((3, 3, 2)), keras.layers.Conv2D(3, 3, activation="tanh", name="conv"),
                              keras.layers.Flatten(), keras.layers.Dense(2, name="out")])
    for v in model.trainable_variables:
        v.assign(rng.normal(size=v.shape) * 0.5)
    x, y = rng.normal(size=(1, 3, 3, 2)), rng.normal(size=(1, 2))
    G = reference_ggn(model, x, "mse")
    for approx in ("expand", "reduce"):
        K = KFACOperator(model, (x, y), loss="mse", kfac_approx=approx, precision="float64", quiet=True)
        np.testing.assert_allclose(K.to_dense().numpy(), G * (K.to_dense().numpy() != 0), rtol=1e-8, atol=1e-12)
        b = K.blocks[0]
        np.testing.assert_allclose(b.to_dense(), G[np.ix_(b.indices, b.indices)], rtol=1e-8, atol=1e-12)


# ------------------------------------------------------------------------------------------ errors
def test_unsupported_layer_is_named():
    model, x, y = M.lstm_model()
    with pytest.raises(InputError, match=r"KFAC: parameter 'lstm/.*' belongs to a layer without"):
        KFACOperator(model, (x, y), loss="mse", quiet=True)
    K = KFACOperator(model, (x, y), loss="mse", wrt=["out"], quiet=True)   # excluded: works
    assert K.n == 5


def test_bad_arguments_and_memory_refusal(reg9):
    model, x, y = reg9
    x, y = x[:4], y[:4]
    with pytest.raises(InputError, match="fisher: expected one of"):
        KFACOperator(model, (x, y), loss="mse", fisher="type-1")
    with pytest.raises(InputError, match="kfac_approx: expected one of"):
        KFACOperator(model, (x, y), loss="mse", kfac_approx="mean")
    with pytest.raises(InputError, match="mc_samples: only fisher='mc'"):
        KFACOperator(model, (x, y), loss="mse", mc_samples=3)
    with pytest.raises(ResourceError, match=r"Kronecker factors of layer 'h1' \(4x4 and 5x5\) needs about"):
        KFACOperator(model, (x, y), loss="mse", max_memory=500)
    K = KFACOperator(model, (x, y), loss="mse", quiet=True)
    with pytest.raises(InputError, match="damping: expected a finite number"):
        K.inverse(-1.0)


def _single_example_blocks_equal_ggn(model, x, y, loss="mse"):
    K = KFACOperator(model, (x, y), loss=loss, precision="float64", quiet=True)
    G = reference_ggn(model, x, loss)
    for b in K.blocks:
        np.testing.assert_allclose(b.to_dense(), G[np.ix_(b.indices, b.indices)], rtol=1e-7, atol=1e-12)
    return K


def test_einsum_dense_conv1d_and_embedding_single_example_blocks():
    rng = np.random.default_rng(7)
    inp = keras.Input((4,))
    h = keras.layers.EinsumDense("ab,bcd->acd", output_shape=(2, 3), bias_axes="cd", activation="tanh",
                                 name="ein")(inp)
    out = keras.layers.EinsumDense("acd,dc->a", output_shape=(), name="ein2")(h)
    model = keras.Model(inp, keras.layers.Reshape((1,))(out))
    for v in model.trainable_variables:
        v.assign(rng.normal(size=v.shape) * 0.5)
    K = _single_example_blocks_equal_ggn(model, rng.normal(size=(1, 4)), rng.normal(size=(1, 1)))
    assert [b.layer for b in K.blocks] == ["ein", "ein2"] and K.blocks[1].A.shape == (6, 6)
    assert not K.blocks[1].contiguous or K.blocks[1].size == 6
    conv = keras.Sequential([keras.Input((4, 2)), keras.layers.Conv1D(3, 4, activation="tanh", name="c1"),
                             keras.layers.Flatten(), keras.layers.Dense(1, name="out")])
    for v in conv.trainable_variables:
        v.assign(rng.normal(size=v.shape) * 0.5)
    _single_example_blocks_equal_ggn(conv, rng.normal(size=(1, 4, 2)), rng.normal(size=(1, 1)))
    emb = keras.Sequential([keras.Input((1,), dtype="int32"), keras.layers.Embedding(5, 2, name="emb"),
                            keras.layers.Flatten(), keras.layers.Dense(1, activation="tanh", name="out")])
    for v in emb.trainable_variables:
        v.assign(rng.normal(size=v.shape) * 0.5)
    x = np.array([[3]], "int32")
    K = KFACOperator(emb, (x, rng.normal(size=(1, 1))), loss="mse", precision="float64", quiet=True)
    assert [b.layer for b in K.blocks] == ["emb", "out"] and K.blocks[0].A.shape == (5, 5)
    assert K.blocks[0].A[3, 3] == 1.0 and np.count_nonzero(K.blocks[0].A) == 1


def test_last_layer_of_a_cnn_leaves_untapped_layers_their_own_call_signature():
    """Regression: layers outside ``wrt`` whose ``call`` takes no ``training`` (Conv2D, pooling) are re-evaluated
    without it; last-layer KFAC of one example equals the exact GGN block of that layer."""
    rng = np.random.default_rng(11)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 3, padding="same",
                                                                          activation="swish", name="conv"),
                              keras.layers.AveragePooling2D(2, name="pool"), keras.layers.Dropout(0.5, name="drop"),
                              keras.layers.Flatten(name="flat"), keras.layers.Dense(3, name="logits")])
    for v in model.trainable_variables:
        v.assign(rng.normal(size=v.shape) * 0.5)
    x, y = rng.normal(size=(1, 4, 4, 1)), np.array([1])
    K = KFACOperator(model, (x, y), loss="sparse_categorical_crossentropy", from_logits=True, wrt=["logits/*"],
                     precision="float64", quiet=True)
    (b,) = K.blocks
    assert b.names == ("logits/kernel", "logits/bias") and K.n == 8 * 3 + 3
    G = reference_ggn(model, x, "ce")[-K.n:, -K.n:]   # the Dense layer's variables are the last ones
    np.testing.assert_allclose(b.to_dense(), G, rtol=1e-8, atol=1e-12)


# ------------------------------------------------------------------------------------------ depthwise
def _depthwise_model(rng, hw, stride=1, padding="valid"):
    model = keras.Sequential([keras.Input((hw, hw, 2)),
                              keras.layers.DepthwiseConv2D(3, strides=stride, padding=padding, depth_multiplier=2,
                                                           activation="tanh", name="dw"),
                              keras.layers.Flatten(), keras.layers.Dense(2, name="out")])
    for v in model.trainable_variables:
        v.assign(rng.normal(size=v.shape) * 0.5)
    return model


def test_depthwise_one_block_per_channel_equals_the_ggn_block_at_one_position():
    rng = np.random.default_rng(12)
    model = _depthwise_model(rng, 3)                   # 3x3 input, 3x3 kernel: one output position
    x, y = rng.normal(size=(1, 3, 3, 2)), rng.normal(size=(1, 2))
    G = reference_ggn(model, x, "mse")
    for approx in ("expand", "reduce"):
        K = KFACOperator(model, (x, y), loss="mse", kfac_approx=approx, precision="float64", quiet=True)
        assert [b.layer for b in K.blocks] == ["dw[0]", "dw[1]", "out"]
        assert [b.A.shape for b in K.blocks[:2]] == [(10, 10)] * 2 and K.blocks[0].B.shape == (2, 2)
        assert sorted(np.concatenate([b.indices for b in K.blocks[:2]]).tolist()) == list(range(40))
        for b in K.blocks:
            np.testing.assert_allclose(b.to_dense(), G[np.ix_(b.indices, b.indices)], rtol=1e-8, atol=1e-12)
    E = EKFACOperator(model, (x, y), loss="mse", fisher="empirical", precision="float64", quiet=True)
    g = per_example_gradients(model, x, y, "mse")[0]
    for b in E.blocks:                                   # one example: EKFAC = the gradient outer product
        np.testing.assert_allclose(b.to_dense(), np.outer(g[b.indices], g[b.indices]), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_depthwise_factors_against_unfolded_reference(approx):
    rng = np.random.default_rng(13)
    model = _depthwise_model(rng, 5, stride=2, padding="same")
    x, y = rng.normal(size=(4, 5, 5, 2)), rng.normal(size=(4, 2))
    K = KFACOperator(model, (x, y), loss="mse", fisher="empirical", kfac_approx=approx, precision="float64",
                     wrt=["dw"], quiet=True)
    kernel, bias, W, w0 = (np.asarray(v, np.float64) for v in model.get_weights())
    patches = _unfold(x, 3, 2, 1).reshape(len(x), -1, 9, 2)                 # (N, R, kh*kw, channel)
    N, R = patches.shape[:2]
    zs = tf.constant(np.einsum("nrkc,kcm->nrcm", patches, kernel.reshape(9, 2, 2)) + bias.reshape(2, 2))
    with tf.GradientTape() as tape:   # the head after the pre-activation, written out: tanh, flatten, dense
        tape.watch(zs)
        total = tf.reduce_sum(tf.reduce_mean((tf.reshape(tf.tanh(zs), (N, -1)) @ W + w0 - y) ** 2, axis=1))
    g = tape.gradient(total, zs).numpy()                                    # (N, R, channel, multiplier)
    assert [b.layer for b in K.blocks] == ["dw[0]", "dw[1]"]
    for c, b in enumerate(K.blocks):
        a = np.concatenate([patches[:, :, :, c], np.ones((N, R, 1))], axis=2)
        gc = g[:, :, c, :]
        if approx == "expand":
            A, B = np.einsum("nri,nrj->ij", a, a) / (N * R), np.einsum("nri,nrj->ij", gc, gc) / N
        else:
            am, gs = a.mean(1), gc.sum(1)
            A, B = am.T @ am / N, gs.T @ gs / N
        np.testing.assert_allclose(b.A, A, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(b.B, B, rtol=1e-9, atol=1e-12)
        # kernel[:, :, c, :] row-major then bias[c*2:(c+1)*2]: the flat positions of channel c's block
        np.testing.assert_array_equal(b.indices, np.concatenate([
            np.arange(36).reshape(9, 2, 2)[:, c, :].reshape(-1), 36 + 2 * c + np.arange(2)]))


def test_ekfac_traces_each_compiled_pass_once(caplog):
    model, x, y = M.linear_regression(n=7, d=2)
    with caplog.at_level("WARNING", logger="tensorflow"):
        E = EKFACOperator(model, (x, y), loss="mse", batch_size=3, quiet=True)
    counts = {k: v for k, v in E.objective.trace_counts.items() if k.startswith("kfac/")}
    assert len(counts) == 3 and set(counts.values()) == {1}, counts   # check, factor pass, eigenvalue pass
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]
    xa = np.concatenate([x, np.ones((7, 1))], axis=1).astype(np.float64)   # linear model: EKFAC = GGN
    np.testing.assert_allclose(E.to_dense().numpy(), 2 * xa.T @ xa / 7, rtol=1e-4, atol=1e-6)


def test_projections_inside_attention_get_blocks_and_can_be_left_out():
    """(Exactness and factor definitions of the projections: tests/linalg/test_kfac_nested.py.)"""
    model, x, y = M.attention_model(n=5, steps=4)
    op = KFACOperator(model, (x, y), loss="mse", wrt=["out/*"], quiet=True)
    assert [b.layer for b in op.blocks] == ["out"]
    op = KFACOperator(model, (x, y), loss="mse", wrt=["mha/*"], quiet=True)
    assert [b.layer for b in op.blocks] == ["mha/query", "mha/key", "mha/value", "mha/attention_output"]
