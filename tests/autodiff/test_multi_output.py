"""Multi-output objectives (per-output losses, loss_weights) against Keras' own evaluate and against gradients
of single-output sub-models computed separately; per-output gradient shares; CLI --loss OUTPUT=LOSS."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfpartials as tp
from tfpartials.autodiff.gradient import value_and_gradient
from tfpartials.autodiff.multi_output import output_gradient_shares
from tfpartials.autodiff.problem import prepare
from tfpartials.cli.main import main
from tfpartials.io.losses import MultiLoss

L2 = 0.25  # exact in float32 (Keras rounds the factor to the weights' dtype)


def _layers(rng):
    h = keras.layers.Dense(6, activation="tanh", name="h", kernel_regularizer=keras.regularizers.L2(L2))
    price = keras.layers.Dense(1, name="price")
    kind = keras.layers.Dense(3, name="kind")
    return h, price, kind


def _randomize(model, rng):
    for v in model.trainable_variables:
        v.assign(rng.normal(0, 0.7, v.shape).astype(v.dtype))


def two_heads(dict_outputs=True, seed=0):
    """x -> h (L2-regularised) -> {price: 1 unit, kind: 3 logits}; 37 examples (a partial last batch of 10)."""
    rng = np.random.default_rng(seed)
    inp = keras.Input((4,), name="x")
    h, price, kind = _layers(rng)
    z = h(inp)
    outs = {"price": price(z), "kind": kind(z)} if dict_outputs else [price(z), kind(z)]
    model = keras.Model(inp, outs)
    _randomize(model, rng)
    x = rng.normal(size=(37, 4)).astype("float32")
    y = {"price": rng.normal(size=(37, 1)).astype("float32"), "kind": rng.integers(0, 3, 37)}
    return model, x, y


LOSSES = {"price": "mse", "kind": keras.losses.SparseCategoricalCrossentropy(from_logits=True)}
WEIGHTS = {"kind": 0.5, "price": 2.0}


def objective_value(model, data, loss=None, **kwargs):
    obj, d = prepare(model, data, loss, batch_size=10, **kwargs)
    value, flat = value_and_gradient(obj, d, quiet=True)
    return float(value), obj.space.to_dict(flat.numpy()), obj


def test_dict_losses_with_weights_equal_keras_evaluate(tmp_path):
    model, x, y = two_heads()
    model.compile(loss=LOSSES, loss_weights=WEIGHTS)
    keras_value = model.evaluate(x, y, batch_size=10, verbose=0, return_dict=True)
    value, _, obj = objective_value(model, (x, y))
    assert isinstance(obj.loss, MultiLoss) and obj.loss.weights == (0.5, 2.0)  # output order: kind, price
    np.testing.assert_allclose(value, keras_value["loss"], rtol=1e-6)
    # the same from the saved file (losses and weights read from its compile config as text)
    model.save(tmp_path / "multi.keras")
    loaded = tp.load_model(tmp_path / "multi.keras")
    np.testing.assert_allclose(objective_value(loaded, (x, y))[0], keras_value["loss"], rtol=1e-6)
    # and the per-output terms are the per-output losses Keras reports; Keras averages those per batch (a mean of
    # batch means, biased by the partial last batch), so they are compared with an evaluate in one batch
    one_batch = model.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)
    shares = output_gradient_shares(model, (x, y), batch_size=10, quiet=True)
    assert shares.names == ("kind", "price", "regularization")
    np.testing.assert_allclose(shares.values[:2], [one_batch["kind_loss"], one_batch["price_loss"]], rtol=1e-6)
    np.testing.assert_allclose(shares.total_value, keras_value["loss"], rtol=1e-6)


def test_list_losses_with_none_and_weights_equal_keras_evaluate():
    model, x, y = two_heads(dict_outputs=False, seed=1)
    ys = [y["price"], y["kind"]]
    model.compile(loss=["mse", None], loss_weights=[3.0, 1.0])
    keras_value = model.evaluate(x, ys, batch_size=10, verbose=0, return_dict=True)["loss"]
    with pytest.raises(tp.InputError, match="does not depend on parameter 'kind/kernel'"):
        objective_value(model, (x, ys))  # the head without a loss
    np.testing.assert_allclose(objective_value(model, (x, ys), unconnected="zero")[0], keras_value, rtol=1e-6)
    model.compile(loss=["mse", keras.losses.SparseCategoricalCrossentropy(from_logits=True)])  # unweighted
    keras_value = model.evaluate(x, ys, batch_size=10, verbose=0, return_dict=True)["loss"]
    np.testing.assert_allclose(objective_value(model, (x, ys))[0], keras_value, rtol=1e-6)


def test_gradient_is_the_weighted_sum_of_single_output_gradients():
    """Reference: each head as its own single-output model (shared layers), plain single loss, float64."""
    model, x, y = two_heads(seed=2)
    loss = {"price": "mse", "kind": "sparse_categorical_crossentropy"}
    _, g, _ = objective_value(model, (x, y), loss, precision="float64", from_logits=True)
    _, g_w, _ = objective_value(model, (x, y), tp.resolve_loss(loss, True, model, loss_weights=WEIGHTS),
                                precision="float64")
    expected = {k: np.zeros(v.shape) for k, v in g.items()}
    weighted = {k: np.zeros(v.shape) for k, v in g.items()}
    for name, single in [("price", "mse"), ("kind", "sparse_categorical_crossentropy")]:
        head = keras.Model(model.input, model.output[name])
        part = tp.gradients(head, (x, y[name]), loss=single, from_logits=True if name == "kind" else None,
                            precision="float64", include_regularization=False, quiet=True)
        for k, v in part.items():
            expected[k] += v
            weighted[k] += WEIGHTS[name] * v
    W = model.get_layer("h").kernel.numpy().astype(np.float64)
    for target in (expected, weighted):
        target["h/kernel"] += 2 * L2 * W  # d/dW of L2 * sum W^2
    for k in g:
        np.testing.assert_allclose(g[k], expected[k], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(g_w[k], weighted[k], rtol=1e-9, atol=1e-12)


def test_gradient_shares_sum_to_one_and_match_the_heads():
    model, x, y = two_heads(seed=3)
    s = output_gradient_shares(model, (x, y), LOSSES, loss_weights=WEIGHTS, precision="float64", quiet=True)
    np.testing.assert_allclose(s.shares.sum(), 1.0, rtol=1e-12)
    total = s.gradients.sum(axis=0)
    _, g, obj = objective_value(model, (x, y), tp.resolve_loss(LOSSES, None, model, loss_weights=WEIGHTS),
                                precision="float64")
    np.testing.assert_allclose(total, np.concatenate([g[n].ravel() for n in obj.space.names]), rtol=1e-9)
    head = keras.Model(model.input, model.output["kind"])
    g_kind = tp.gradients(head, (x, y["kind"]), loss=LOSSES["kind"], precision="float64",
                          include_regularization=False, quiet=True)
    np.testing.assert_allclose(s.norms[0], 0.5 * np.sqrt(sum(np.sum(v**2) for v in g_kind.values())), rtol=1e-9)
    assert set(s.to_dict()) == {"total", "terms"} and len(s.to_dict()["terms"]) == 3


@pytest.mark.parametrize("loss,weights,match", [
    (["mse"], None, "expected one entry per model output"),
    ({"prize": "mse"}, None, "unknown output 'prize'"),
    ([None, None], None, "every output's loss is None"),
    ({"price": "mse"}, {"kind": -1.0}, "finite number >= 0 for output 'kind'"),
    ({"price": "mse"}, {"kinds": 1.0}, "loss_weights: unknown output 'kinds'"),
    ({"price": "nope"}, None, "unknown loss 'nope'"),
])
def test_resolve_errors(loss, weights, match):
    model, _, _ = two_heads()
    with pytest.raises(tp.InputError, match=match):
        tp.resolve_loss(loss, model=model, loss_weights=weights)


def test_single_output_model_refuses_shares_and_one_output_dict_is_the_plain_loss():
    inp = keras.Input((2,))
    model = keras.Model(inp, keras.layers.Dense(1, name="out")(inp))
    assert tp.resolve_loss({"out": "mse"}, model=model).name == "mse"
    assert isinstance(tp.resolve_loss("mse", model=model, loss_weights=2.0), MultiLoss)
    with pytest.raises(tp.InputError, match="one output"):
        output_gradient_shares(model, (np.ones((3, 2)), np.ones((3, 1))), loss="mse")


# ---------------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("multi-output-cli")
    model, x, y = two_heads(seed=4)
    model.save(d / "multi.keras")  # uncompiled: the losses come from the command line
    np.savez(d / "data.npz", x=x, **y)
    return d, model, x, y


def test_cli_per_output_losses_and_weights(files):
    d, model, x, y = files
    out = d / "g.npz"
    args = ["gradients", str(d / "multi.keras"), "--data", str(d / "data.npz"), "--loss", "price=mse", "--loss",
            "kind=sparse_categorical_crossentropy", "--from-logits", "--loss-weight", "kind=0.5", "--quiet",
            "--out", str(out)]
    assert main(args) == 0
    expected = tp.gradients(model, (x, y), loss=tp.resolve_loss(
        {"price": "mse", "kind": "sparse_categorical_crossentropy"}, True, model, loss_weights={"kind": 0.5}),
        quiet=True)
    with np.load(out) as z:
        for k, v in expected.items():
            np.testing.assert_allclose(z[k], v, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("extra,match", [
    (["--loss", "price=mse", "--loss", "mse"], "exclude each other"),
    (["--loss", "price=mse", "--loss", "price=mae"], "output 'price' given twice"),
    (["--loss", "prize=mse"], "unknown output 'prize'"),
    (["--loss", "price="], "expected LOSS or OUTPUT=LOSS"),
    (["--loss", "price=mse", "--loss-weight", "kind=-1"], "--loss-weight: expected OUTPUT=W"),
    (["--loss", "price=mse", "--loss-weight", "kind"], "--loss-weight: expected OUTPUT=W"),
    ([], "no loss given"),
])
def test_cli_errors(files, capsys, extra, match):
    d, *_ = files
    out = d / "never.npz"
    try:
        code = main(["gradients", str(d / "multi.keras"), "--data", str(d / "data.npz"), "--out", str(out), *extra])
    except SystemExit as exc:  # usage errors found while parsing the flags
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("tfpartials: error:") and match in err and err.count("\n") == 1
    assert not out.exists()
