"""Dense Hessians against closed forms and nested-tape reverse-over-reverse in float64; memory guard; CLI."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tests import models as M
from tests import references as R
from tfpartials._checks import InputError, ResourceError
from tfpartials.autodiff.hessian import HessianResult, hessian, hessian_memory
from tfpartials.autodiff.hvp import FallbackWarning
from tfpartials.cli.main import main


def _augmented(x):
    x = np.asarray(x, np.float64)
    return np.c_[x, np.ones(len(x))]


def test_linear_regression_closed_form_blocks_partial_last_batch():
    model, x, y = M.linear_regression(n=37, d=4)
    H = hessian(model, (x, y), loss="mse", batch_size=10, precision="float64", quiet=True)  # 37 = 3*10 + 7
    X = np.asarray(x, np.float64)
    N = len(x)
    assert isinstance(H, HessianResult) and H.names == ("lin/kernel", "lin/bias")
    assert H.offsets == (0, 4, 5) and H.shapes == ((4, 1), (1,)) and H.matrix.dtype == np.float64
    np.testing.assert_allclose(H.block("lin/kernel", "lin/kernel"), 2 * X.T @ X / N, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(H.block("lin/kernel", "lin/bias"), 2 * X.sum(0)[:, None] / N, rtol=1e-12)
    np.testing.assert_allclose(H.block("lin/bias", "lin/kernel"), 2 * X.sum(0)[None, :] / N, rtol=1e-12)
    np.testing.assert_allclose(H.block("lin/bias", "lin/bias"), [[2.0]], rtol=1e-12)
    assert H.block("lin/kernel", "lin/bias", reshape=True).shape == (4, 1, 1)
    # float32 model, default precision: the same to float32 round-off
    H32 = hessian(model, (x, y), loss="mse", quiet=True)
    assert H32.matrix.dtype == np.float32
    np.testing.assert_allclose(H32.matrix, 2 * _augmented(x).T @ _augmented(x) / N, rtol=1e-5, atol=1e-5)


def test_logistic_regression_closed_form():
    model, x, y = M.logistic_regression()
    H = hessian(model, (x, y), loss="binary_crossentropy", from_logits=True, precision="float64", batch_size=8,
                quiet=True)
    X = _augmented(x)
    W, b = model.get_layer("logit").kernel.numpy(), model.get_layer("logit").bias.numpy()
    p = 1 / (1 + np.exp(-(X[:, :-1] @ W + b)))[:, 0]
    D = np.diag(p * (1 - p))
    np.testing.assert_allclose(H.matrix, X.T @ D @ X / len(x), rtol=1e-10, atol=1e-12)


CASES = {
    "mlp_tanh_softmax": (M.mlp, "sparse_categorical_crossentropy", True, "scce",
                         ("h1/kernel", "logits/kernel")),
    "small_cnn": (M.small_cnn, "sparse_categorical_crossentropy", True, "scce", ("conv/kernel", "logits/bias")),
    "batchnorm": (M.batchnorm_dropout_model, "mse", None, "mse", ("d1/kernel", "bn/gamma")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_dense_hessian_equals_nested_tapes_float64(case):
    builder, loss, logits, ref_loss, (a, b) = CASES[case]
    model, x, y = builder()
    ref = R.nested_tape_hessian(model, x, y, R.keras_mean_loss(ref_loss, from_logits=bool(logits)))
    with _no_warning():  # the CNN too: tfpartials' pfor rules vectorise convolutions over varying filters
        H = hessian(model, (x, y), loss=loss, from_logits=logits, batch_size=7, precision="float64", chunk_size=12,
                    quiet=True)  # chunks of 12 columns: several groups, padded last chunks, mirrored triangles
    np.testing.assert_allclose(H.matrix, ref, rtol=1e-9, atol=1e-12)
    assert np.array_equal(H.matrix, H.matrix.T)  # exactly symmetric by construction
    # a cross-variable block (tf.hessians would only give the diagonal blocks)
    sa, sb = slice(H.offsets[H.names.index(a)], H.offsets[H.names.index(a) + 1]), \
        slice(H.offsets[H.names.index(b)], H.offsets[H.names.index(b) + 1])
    blk = H.block(a, b)
    assert blk.shape == (sa.stop - sa.start, sb.stop - sb.start) and np.abs(blk).max() > 1e-4
    np.testing.assert_allclose(blk, ref[sa, sb], rtol=1e-9, atol=1e-12)


class _no_warning:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error", FallbackWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


@pytest.mark.parametrize("method", ["reverse", "loop"])
def test_other_methods_small_chunks_and_float32(method):
    """The fallback modes on the same chunking; float32 to round-off."""
    model, x, y = M.mlp()
    ref = R.nested_tape_hessian(model, x, y, R.keras_mean_loss("scce", from_logits=True))
    H = hessian(model, (x, y), loss="sparse_categorical_crossentropy", from_logits=True, method=method,
                chunk_size=12, batch_size=10, quiet=True)
    assert H.matrix.dtype == np.float32
    np.testing.assert_allclose(H.matrix, ref, rtol=2e-4, atol=2e-6)
    assert np.array_equal(H.matrix, H.matrix.T)


def test_wrt_gives_the_principal_block_and_tf_data_equals_arrays():
    import tensorflow as tf

    model, x, y = M.regression_mlp()
    full = hessian(model, (x, y), loss="mse", precision="float64", method="loop", quiet=True)
    sub = hessian(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(4), loss="mse", wrt=["out/*", "h1/bias"],
                  precision="float64", method="loop", quiet=True)
    assert sub.names == ("h1/bias", "out/kernel", "out/bias")
    idx = np.r_[full.offsets[1]:full.offsets[2], full.offsets[2]:full.offsets[4]]
    np.testing.assert_allclose(sub.matrix, full.matrix[np.ix_(idx, idx)], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(sub.block("h1/bias", "out/kernel"), full.block("h1/bias", "out/kernel"), rtol=1e-10)


def test_regularisation_and_sum_reduction():
    model, x, y = M.linear_regression()
    reg = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, name="lin",
                                                                  kernel_regularizer=keras.regularizers.L2(0.3))])
    reg.set_weights(model.get_weights())
    X = _augmented(x)
    H = hessian(reg, (x, y), loss="mse", precision="float64", method="reverse", quiet=True).matrix
    np.testing.assert_allclose(H, 2 * X.T @ X / len(x) + np.diag([0.6] * 4 + [0.0]), rtol=1e-7, atol=1e-12)
    Hs = hessian(model, (x, y), loss="mse", reduction="sum", precision="float64", method="loop", quiet=True).matrix
    np.testing.assert_allclose(Hs, 2 * X.T @ X, rtol=1e-10)


def test_traced_once_per_block_group():
    from tfpartials.autodiff.problem import prepare

    model, x, y = M.regression_mlp(n=33)
    obj, d = prepare(model, (x, y), "mse", batch_size=10)
    first = hessian(obj, d, quiet=True).matrix
    counts = dict(obj.trace_counts)
    second = hessian(obj, d, quiet=True).matrix
    assert obj.trace_counts == counts and all(v == 1 for v in counts.values())
    np.testing.assert_array_equal(first, second)


def _wide_model():
    return keras.Sequential([keras.Input((200,)), keras.layers.Dense(1000, name="wide"),
                             keras.layers.Dense(1, name="out")])  # 202,001 parameters


def test_memory_guard_refuses_200k_parameters_before_any_work():
    model = _wide_model()
    x, y = np.ones((4, 200), "float32"), np.ones((4, 1), "float32")
    with pytest.raises(ResourceError, match=r"202,001 parameters.*152\.0 GiB.*2\.0 GiB.*spectrum.*--wrt"):
        hessian(model, (x, y), loss="mse")
    with pytest.raises(ResourceError, match=r"304\.0 GiB"):  # float64 doubles it, refused before the copy
        hessian(model, (x, y), loss="mse", precision="float64", max_memory="100GiB")
    small = hessian(model, (x, y), loss="mse", wrt="out", quiet=True)  # the way out the message names
    assert small.matrix.shape == (1001, 1001)


def test_a_small_budget_means_small_chunks_not_a_different_answer():
    model, x, y = M.regression_mlp()
    a = hessian(model, (x, y), loss="mse", precision="float64", method="loop", quiet=True).matrix
    _, per_column, fixed = hessian_memory(a.shape[0], 8, len(x), 6)
    b = hessian(model, (x, y), loss="mse", precision="float64", method="loop", max_memory=fixed + 3 * per_column,
                quiet=True).matrix  # room for 3 columns at a time
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_bad_arguments():
    model, x, y = M.linear_regression()
    with pytest.raises(InputError, match="method: expected one of"):
        hessian(model, (x, y), loss="mse", method="sideways")
    with pytest.raises(InputError, match="max_memory: expected a size like"):
        hessian(model, (x, y), loss="mse", max_memory="lots")
    with pytest.raises(InputError, match="precision: expected one of"):
        hessian(model, (x, y), loss="mse", precision="float16")
    with pytest.raises(TypeError, match="model: expected a Keras model, got str"):
        hessian("model.keras", (x, y), loss="mse")
    with pytest.raises(InputError, match="chunk_size: expected a positive integer, got 0"):
        hessian(model, (x, y), loss="mse", chunk_size=0)
    H = hessian(model, (x, y), loss="mse", method="loop", quiet=True)
    with pytest.raises(InputError, match="unknown parameter 'lin/gamma'; available: lin/kernel, lin/bias"):
        H.block("lin/gamma", "lin/bias")


# ------------------------------------------------------------------------------------------------ command line
@pytest.fixture
def saved(tmp_path):
    model, x, y = M.linear_regression(n=37, d=4)
    model.compile(loss="mse")
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", x=x, y=y)
    return tmp_path, x


def test_cli_hessian_writes_npz_with_closed_form(saved, capsys):
    tmp, x = saved
    out = tmp / "H.npz"
    code = main(["hessian", str(tmp / "m.keras"), "--data", str(tmp / "d.npz"), "--precision", "float64",
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "lin/kernel x lin/bias" in captured.out and "Frobenius norm" in captured.out
    with np.load(out, allow_pickle=False) as z:
        assert sorted(z.files) == ["hessian", "names", "offsets"]
        X = _augmented(x)
        np.testing.assert_allclose(z["hessian"], 2 * X.T @ X / len(x), rtol=1e-10)
        assert z["names"].tolist() == ["lin/kernel", "lin/bias"] and z["offsets"].tolist() == [0, 4, 5]
    code = main(["hessian", str(tmp / "m.keras"), "--data", str(tmp / "d.npz"), "--out", str(out), "--quiet"])
    assert code == 2 and "already exists" in capsys.readouterr().err


def test_cli_hessian_refuses_a_big_model_with_exit_2(tmp_path, capsys):
    model = _wide_model()
    model.save(tmp_path / "wide.keras")
    np.savez(tmp_path / "d.npz", x=np.ones((4, 200), "float32"), y=np.ones((4, 1), "float32"))
    code = main(["hessian", str(tmp_path / "wide.keras"), "--data", str(tmp_path / "d.npz"), "--loss", "mse",
                 "--out", str(tmp_path / "H.npz")])
    err = capsys.readouterr().err
    assert code == 2 and "202,001 parameters" in err and "152.0 GiB" in err and "spectrum" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "H.npz").exists()
    code = main(["hessian", str(tmp_path / "wide.keras"), "--data", str(tmp_path / "d.npz"), "--loss", "mse",
                 "--max-memory", "a lot"])
    assert code == 2 and "max_memory" in capsys.readouterr().err
