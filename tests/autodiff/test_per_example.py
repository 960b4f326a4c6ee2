"""Per-example gradients against a float64 loop of single-example tapes; the loop fallback; memory refusals."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

from tests import models as M
from tests import references as R
from tfpartials._checks import InputError, ResourceError
from tfpartials.autodiff.gradient import gradients
from tfpartials.autodiff.hvp import FallbackWarning
from tfpartials.autodiff.per_example import per_example_gradients

SCCE = ("sparse_categorical_crossentropy", True, R.keras_mean_loss("scce", from_logits=True))
MSE = ("mse", None, R.keras_mean_loss("mse"))

CASES = {
    "mlp": (M.mlp, SCCE),
    "cnn": (M.small_cnn, SCCE),
    "embedding": (M.embedding_model, MSE),
    "lstm": (M.lstm_model, MSE),
}


def _flat(pe: dict) -> np.ndarray:
    n = len(next(iter(pe.values())))
    return np.concatenate([a.reshape(n, -1) for a in pe.values()], axis=1)


def upsampling_model(n=7, seed=8):
    """UpSampling2D(bilinear) runs ResizeBilinear, which TensorFlow's pfor cannot vectorise."""
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((3, 3, 1)),
        keras.layers.UpSampling2D(2, interpolation="bilinear", name="up"),
        keras.layers.Conv2D(2, 3, activation="tanh", name="conv"),
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(1, name="out"),
    ])
    for v in model.trainable_variables:
        v.assign((rng.normal(size=v.shape) * 0.5).astype("float32"))
    x = rng.normal(size=(n, 3, 3, 1)).astype("float32")
    y = rng.normal(size=(n, 1)).astype("float32")
    return model, x, y


@pytest.mark.parametrize("case", list(CASES))
def test_equals_loop_of_single_example_float64_tapes(case):
    builder, (loss, from_logits, loss_fn) = CASES[case]
    model, x, y = builder()
    ref = R.per_example_gradients_loop(model, x, y, loss_fn)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # these models vectorise: no fallback warning
        warnings.filterwarnings("ignore", ".*one at a time \\(no vectorised rule", FallbackWarning)  # pfor's own loops
        pe64 = per_example_gradients(R.float64_clone(model), (x, y), loss=loss, from_logits=from_logits,
                                     batch_size=4)
    assert all(a.dtype == np.float64 and a.shape[0] == len(x) for a in pe64.values())
    np.testing.assert_allclose(_flat(pe64), ref, rtol=1e-9, atol=1e-11)
    if case != "lstm":  # vectorising the LSTM's while loop takes seconds to trace: one dtype is enough
        pe32 = per_example_gradients(model, (x, y), loss=loss, from_logits=from_logits)
        np.testing.assert_allclose(_flat(pe32), ref, rtol=2e-4, atol=2e-5)


def test_shapes_follow_parameter_names():
    model, x, y = M.small_cnn()
    pe = per_example_gradients(model, (x, y), loss="sparse_categorical_crossentropy", from_logits=True)
    assert list(pe) == ["conv/kernel", "conv/bias", "logits/kernel", "logits/bias"]
    for v, (name, a) in zip(model.trainable_variables, pe.items()):
        assert a.shape == (len(x), *v.shape), name


def test_loop_fallback_warns_once_naming_the_op_and_is_exact():
    model, x, y = upsampling_model()
    ref = R.per_example_gradients_loop(model, x, y, MSE[2])
    with pytest.warns(FallbackWarning, match=r"no vectorisation rule for op ResizeBilinear") as rec:
        pe = per_example_gradients(model, (x, y), loss="mse", batch_size=3, precision="float64")  # 3 chunks
    ours = [w for w in rec if "vectorisation" in str(w.message)]
    assert len(ours) == 1
    assert ours[0].filename == __file__  # points at the caller, not into the library
    np.testing.assert_allclose(_flat(pe), ref, rtol=1e-9, atol=1e-11)


def test_forced_loop_equals_vectorised_without_warning():
    model, x, y = M.small_cnn()
    kw = dict(loss="sparse_categorical_crossentropy", from_logits=True, batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", ".*one at a time \\(no vectorised rule", FallbackWarning)  # pfor's own loops
        vec = per_example_gradients(model, (x, y), **kw)
        loop = per_example_gradients(model, (x, y), vectorize=False, **kw)
    for k in vec:
        np.testing.assert_allclose(loop[k], vec[k], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("batch_size", [4, 1000])
def test_mean_equals_dataset_gradient_with_regularization(batch_size):
    rng = np.random.default_rng(3)
    keras.utils.set_random_seed(3)
    model = keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(5, activation="tanh", kernel_regularizer=keras.regularizers.L2(0.1), name="h"),
        keras.layers.Dense(1, bias_regularizer=keras.regularizers.L1(0.05), name="out"),
    ])
    for v in model.trainable_variables:
        v.assign(rng.normal(size=v.shape).astype("float32"))
    x = rng.normal(size=(29, 4)).astype("float32")  # 29 = 7 * 4 + 1: a partial last chunk
    y = rng.normal(size=(29, 1)).astype("float32")
    pe = per_example_gradients(model, (x, y), loss="mse", batch_size=batch_size, precision="float64")
    ref = R.central_difference_gradient(model, x, y, "mse")  # data term only
    g = gradients(model, (x, y), loss="mse", precision="float64")
    mean = np.concatenate([a.mean(0).ravel() for a in pe.values()])
    np.testing.assert_allclose(mean, np.concatenate([a.ravel() for a in g.values()]), rtol=1e-10, atol=1e-12)
    assert np.abs(mean - ref).max() > 1e-3  # the regulariser's gradient is in there
    loop = R.per_example_gradients_loop(model, x, y, MSE[2])
    np.testing.assert_allclose(_flat(pe), loop, rtol=1e-9, atol=1e-11)
    off = per_example_gradients(model, (x, y), loss="mse", precision="float64", include_regularization=False)
    np.testing.assert_allclose(np.concatenate([a.mean(0).ravel() for a in off.values()]), ref, rtol=1e-5,
                               atol=1e-8)


def test_stream_yields_chunks_in_order():
    model, x, y = M.mlp(n=29)
    full = per_example_gradients(model, (x, y), loss="sparse_categorical_crossentropy", from_logits=True)
    chunks = list(per_example_gradients(model, (x, y), loss="sparse_categorical_crossentropy",
                                        from_logits=True, batch_size=8, stream=True))
    assert [len(c["h1/kernel"]) for c in chunks] == [8, 8, 8, 5]
    for k in full:
        np.testing.assert_allclose(np.concatenate([c[k] for c in chunks]), full[k], rtol=1e-6, atol=1e-7)


def test_memory_budget_splits_chunks_without_changing_the_result():
    model, x, y = M.regression_mlp()
    whole = per_example_gradients(model, (x, y), loss="mse")
    n = sum(v.numpy().size for v in model.trainable_variables)
    # result (33 x n x 4 bytes) plus 5 examples' working memory
    tight = per_example_gradients(model, (x, y), loss="mse", max_memory=33 * n * 4 + 5 * n * 16)
    for k in whole:
        np.testing.assert_allclose(tight[k], whole[k], rtol=1e-6, atol=1e-8)


def test_refuses_when_the_result_does_not_fit():
    model, x, y = M.regression_mlp()
    with pytest.raises(ResourceError, match=r"per-example gradients \(33 x 26 values\).*stream=True"):
        per_example_gradients(model, (x, y), loss="mse", max_memory=1000)
    with pytest.raises(ResourceError, match="one item needs"):
        next(per_example_gradients(model, (x, y), loss="mse", max_memory=100, stream=True))


def test_wrt_selects_variables():
    model, x, y = M.mlp()
    pe = per_example_gradients(model, (x, y), loss="sparse_categorical_crossentropy", from_logits=True,
                               wrt=["logits/*"])
    full = per_example_gradients(model, (x, y), loss="sparse_categorical_crossentropy", from_logits=True)
    assert list(pe) == ["logits/kernel", "logits/bias"]
    np.testing.assert_allclose(pe["logits/kernel"], full["logits/kernel"], rtol=1e-6)


def test_two_inputs_and_tf_data():
    import tensorflow as tf

    rng = np.random.default_rng(4)
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    h = keras.layers.Concatenate(name="cat")([keras.layers.Dense(4, activation="tanh", name="da")(a), b])
    model = keras.Model([a, b], keras.layers.Dense(1, name="o")(h))
    xa, xb = rng.normal(size=(10, 3)).astype("float32"), rng.normal(size=(10, 2)).astype("float32")
    y = rng.normal(size=(10, 1)).astype("float32")
    pe = per_example_gradients(model, ([xa, xb], y), loss="mse", batch_size=4, precision="float64")
    clone = R.float64_clone(model)
    for i in (0, 9):
        with tf.GradientTape() as tape:
            pred = clone([xa[i:i + 1].astype("float64"), xb[i:i + 1].astype("float64")])
            loss = tf.reduce_mean(tf.square(pred - y[i:i + 1].astype("float64")))
        ref = tape.gradient(loss, clone.trainable_variables)
        for r, a_ in zip(ref, pe.values()):
            np.testing.assert_allclose(a_[i], r.numpy(), rtol=1e-9, atol=1e-12)
    ds = tf.data.Dataset.from_tensor_slices(((xa, xb), y)).batch(3)
    streamed = per_example_gradients(model, ds, loss="mse", batch_size=4, precision="float64")
    for k in pe:
        np.testing.assert_allclose(streamed[k], pe[k], rtol=1e-12)
    from tfpartials.autodiff.per_example import PerExampleGradients

    as_function = PerExampleGradients(model, "mse", precision="float64")([xa, xb], y)  # one batch of two inputs
    named = PerExampleGradients(model, "mse", precision="float64")({"a": xa, "b": xb}, y)  # inputs by name
    for k in pe:
        np.testing.assert_allclose(as_function[k].numpy(), pe[k], rtol=1e-12)
        np.testing.assert_allclose(named[k].numpy(), pe[k], rtol=1e-12)


class _WithUnused(keras.layers.Layer):
    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1], 1), name="w")
        self.unused = self.add_weight(shape=(1,), name="unused")

    def call(self, x):
        return x @ self.w


def test_unconnected_variable_is_an_error_naming_it():
    model = keras.Sequential([keras.Input((2,)), _WithUnused(name="odd")])
    x, y = np.ones((3, 2), "float32"), np.zeros((3, 1), "float32")
    with pytest.raises(InputError, match=r"does not depend on parameter 'odd/unused'"):
        per_example_gradients(model, (x, y), loss="mse")
    pe = per_example_gradients(model, (x, y), loss="mse", unconnected="zero")
    assert np.all(pe["odd/unused"] == 0) and pe["odd/unused"].shape == (3, 1)


def test_bad_arguments():
    model, x, y = M.regression_mlp()
    with pytest.raises(InputError, match="needs targets"):
        per_example_gradients(model, x, loss="mse")
    with pytest.raises(InputError, match="max_memory"):
        per_example_gradients(model, (x, y), loss="mse", max_memory="lots")


# -- command line ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("per_example_cli")
    model, x, y = M.regression_mlp(n=13)
    model.compile(loss="mse")
    model.save(d / "m.keras")
    np.savez(d / "d.npz", x=x, y=y)
    return d, _split_ref(model, R.per_example_gradients_loop(model, x, y, MSE[2]))


def _split_ref(model, flat):
    out, off = {}, 0
    for layer in model.layers:
        for v in layer.trainable_variables:
            size = int(np.prod(v.shape))
            out[f"{layer.name}/{v.name}"] = flat[:, off:off + size].reshape(len(flat), *v.shape)
            off += size
    return out


def _main(argv):
    from tfpartials.cli.main import main

    return main([str(a) for a in argv])


def test_cli_per_example_norms_and_full(cli_files, tmp_path, capsys):
    d, ref = cli_files
    out = tmp_path / "pe.npz"
    assert _main(["gradients", d / "m.keras", "--data", d / "d.npz", "--per-example", "--batch-size", "5",
                  "--out", out]) == 0
    table = capsys.readouterr().out
    assert "Per-example gradient norms (13 examples, loss mse)" in table and "SNR" in table and "total" in table
    with np.load(out) as z:
        assert set(z.files) == {"norms"} | {f"norms/{k}" for k in ref}
        total = np.sqrt(sum(np.sum(g.reshape(13, -1) ** 2, axis=1) for g in ref.values()))
        np.testing.assert_allclose(z["norms"], total, rtol=1e-5)
        for k, g in ref.items():
            np.testing.assert_allclose(z[f"norms/{k}"], np.linalg.norm(g.reshape(13, -1), axis=1), rtol=1e-5)
    full = tmp_path / "full.npz"
    assert _main(["gradients", d / "m.keras", "--data", d / "d.npz", "--per-example", "--full", "--quiet",
                  "--precision", "float64", "--out", full]) == 0
    assert capsys.readouterr().out == ""
    with np.load(full) as z:
        assert set(z.files) == {"norms"} | {f"norms/{k}" for k in ref} | set(ref)
        for k, g in ref.items():
            np.testing.assert_allclose(z[k], g, rtol=1e-9, atol=1e-12)


def test_cli_per_example_bad_input_exits_2(cli_files, tmp_path, capsys):
    d, _ = cli_files
    x_only = tmp_path / "x.npy"
    np.save(x_only, np.ones((3, 3), "float32"))
    assert _main(["gradients", d / "m.keras", "--data", x_only, "--per-example"]) == 2
    assert "needs targets" in capsys.readouterr().err
    assert _main(["gradients", d / "m.keras", "--data", d / "d.npz", "--per-example", "--wrt", "nope"]) == 2
    assert "no trainable variable matches 'nope'" in capsys.readouterr().err


# -- PerExampleGradients: the tensor-returning form for training loops ----------------------------------------
def _flat_tensors(pe: dict) -> np.ndarray:
    return _flat({k: np.asarray(v) for k, v in pe.items()})


@pytest.mark.parametrize("case", ["mlp", "cnn", "embedding"])
def test_function_equals_single_example_tapes_and_follows_the_weights(case):
    import tensorflow as tf

    from tfpartials.autodiff.per_example import PerExampleGradients

    builder, (loss, from_logits, loss_fn) = CASES[case]
    model, x, y = builder()
    pe = PerExampleGradients(model, loss, from_logits=from_logits)
    rng = np.random.default_rng(3)
    for _ in range(2):  # a training loop: the weights change between calls, the function is not rebuilt
        g = pe(x, y)
        assert list(g) == pe.names and all(isinstance(v, tf.Tensor) for v in g.values())
        np.testing.assert_allclose(_flat_tensors(g), R.per_example_gradients_loop(model, x, y, loss_fn),
                                   rtol=2e-4, atol=2e-5)
        for v in model.trainable_variables:
            v.assign(v + 0.1 * rng.normal(size=v.shape).astype("float32"))


def test_function_inside_tf_function_equals_eager_and_float64_tapes():
    import tensorflow as tf

    from tfpartials.autodiff.per_example import PerExampleGradients

    model, x, y = M.small_cnn()
    loss, from_logits, loss_fn = SCCE
    ref = R.per_example_gradients_loop(model, x, y, loss_fn)
    pe64 = PerExampleGradients(R.float64_clone(model), loss, from_logits=from_logits)
    np.testing.assert_allclose(_flat_tensors(pe64(x, y)), ref, rtol=1e-9, atol=1e-11)

    pe = PerExampleGradients(model, loss, from_logits=from_logits)

    @tf.function
    def clipped_mean(xb, yb):  # per-example clipping, the DP-SGD step's core
        g = pe(xb, yb)
        flat = tf.concat([tf.reshape(v, (tf.shape(v)[0], -1)) for v in g.values()], axis=1)
        norms = tf.norm(flat, axis=1)
        return flat, tf.reduce_mean(flat / tf.maximum(1.0, norms / 0.5)[:, None], axis=0)

    flat, mean = clipped_mean(tf.constant(x), tf.constant(y))
    np.testing.assert_allclose(flat.numpy(), ref, rtol=2e-4, atol=2e-5)
    scale = np.maximum(1.0, np.linalg.norm(ref, axis=1) / 0.5)
    np.testing.assert_allclose(mean.numpy(), (ref / scale[:, None]).mean(0), rtol=2e-4, atol=2e-5)
    pe_copy = PerExampleGradients(model, loss, from_logits=from_logits, precision="float64")
    with pytest.raises(Exception, match="PerExampleGradients.precision=.... needs eager calls"):  # autograph wraps it
        tf.function(lambda a, b: pe_copy(a, b))(tf.constant(x), tf.constant(y))


def test_function_bad_input_and_budget():
    import tensorflow as tf

    from tfpartials.autodiff.per_example import PerExampleGradients

    model, x, y = M.small_cnn()
    loss, from_logits, _ = SCCE
    pe = PerExampleGradients(model, loss, from_logits=from_logits)
    with pytest.raises(InputError, match="shape"):
        pe(x[:, :-1], y)
    with pytest.raises(InputError, match="NaN|Inf|finite"):
        pe(np.where(np.arange(x.size).reshape(x.shape) == 0, np.nan, x).astype(x.dtype), y)
    with pytest.raises(InputError, match="one batch"):
        pe(tf.data.Dataset.from_tensor_slices((x, y)), None)
    with pytest.raises(InputError, match="B >= 1"):
        pe(x[:0], y[:0])
    with pytest.raises(InputError):
        PerExampleGradients(model, "no_such_loss")
    with pytest.raises(InputError):
        PerExampleGradients(model, loss, wrt=["no_such_layer/*"])
    small = PerExampleGradients(model, loss, from_logits=from_logits, max_memory=model.count_params() * 4 * 4 * 2)
    assert all(v.shape[0] == 2 for v in small(x[:2], y[:2]).values())
    with pytest.raises(ResourceError, match="smaller batches"):
        small(x[:3], y[:3])
