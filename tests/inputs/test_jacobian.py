"""Per-example input gradients and Jacobians against closed forms, finite differences and nested tapes."""

from __future__ import annotations

import numpy as np
import pytest

from tests import models as M
from tests.inputs import _models as IM
from tests.inputs import _references as R
from tfpartials._checks import InputError, ResourceError
from tfpartials.inputs import input_gradient, input_jacobian


def test_tanh_layer_closed_form():
    model, W, b = IM.tanh_model()
    x = np.random.default_rng(1).normal(size=(7, 4)).astype("float32")
    y = np.tanh(x.astype(np.float64) @ W + b)
    expected = (1 - y**2)[:, :, None] * W.T[None]  # J_b = diag(1 - y_b^2) W^T (Keras kernel is (in, out))
    for mode in ("forward", "reverse"):
        J = input_jacobian(model, x, mode=mode)
        assert J.shape == (7, 3, 4)
        np.testing.assert_allclose(J, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("builder", [M.mlp, M.small_cnn], ids=["mlp", "cnn"])
def test_jacobian_matches_fd_and_nested_tape(builder):
    model, x, _ = builder()
    x = x[:5]
    B = len(x)
    fd = R.fd_input_jacobian(model, x)
    tape = R.tape_input_jacobian(model, x)
    np.testing.assert_allclose(tape, fd, rtol=1e-6, atol=1e-7)
    J64 = {m: input_jacobian(model, x, mode=m, precision="float64") for m in ("forward", "reverse")}
    for m, J in J64.items():
        assert J.dtype == np.float64
        np.testing.assert_allclose(J.reshape(B, fd.shape[1], -1), tape, rtol=1e-10, atol=1e-12, err_msg=m)
    J32 = input_jacobian(model, x)
    assert J32.dtype == np.float32
    assert J32.shape == (B, *model.output_shape[1:], *x.shape[1:])
    np.testing.assert_allclose(J32.reshape(fd.shape), fd, rtol=1e-4, atol=1e-5)


def test_forward_equals_reverse_and_auto():
    model, x, _ = M.mlp(d=5, out=3)
    Jf = input_jacobian(model, x, mode="forward")
    Jr = input_jacobian(model, x, mode="reverse")
    Ja = input_jacobian(model, x)
    np.testing.assert_allclose(Jf, Jr, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(Ja, Jr)  # 5 inputs > 3 outputs: auto is reverse


def test_chunking_does_not_change_numbers():
    model, x, _ = M.small_cnn()
    full = input_jacobian(model, x, mode="forward")
    for kwargs in ({"batch_size": 3}, {"max_memory": "120KB"}, {"max_memory": "120KB", "batch_size": 4}):
        for mode in ("forward", "reverse"):
            np.testing.assert_allclose(input_jacobian(model, x, mode=mode, **kwargs), full, rtol=1e-5, atol=1e-6,
                                       err_msg=str(kwargs))


@pytest.mark.parametrize("builder", [M.mlp, M.batchnorm_dropout_model], ids=["mlp", "batchnorm"])
def test_per_example_independence(builder):
    model, x, _ = builder()
    x = x[:6]
    rng = np.random.default_rng(3)
    J = input_jacobian(model, x)
    other = x.copy()
    other[1:] = rng.normal(size=other[1:].shape) * 3
    J_other = input_jacobian(model, other)
    np.testing.assert_allclose(J_other[0], J[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(input_jacobian(model, x[:1])[0], J[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(J.reshape(len(x), -1, x.shape[1]), R.tape_input_jacobian(model, x),
                               rtol=1e-4, atol=1e-5)


def test_training_true_is_refused(bn_model):
    model, x, _ = bn_model
    with pytest.raises(InputError, match="training=True is refused.*statistics of the whole batch.*Dropout"):
        input_jacobian(model, x, training=True)
    with pytest.raises(InputError, match="training=True is refused"):
        input_gradient(model, x, training=True)


def test_input_gradient_variants():
    model, x, y = M.mlp()
    J = input_jacobian(model, x)
    np.testing.assert_allclose(input_gradient(model, x), J.sum(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(input_gradient(model, x, reduce="mean"), J.mean(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(input_gradient(model, x, index=2), J[:, 2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(input_gradient(model, x, index=y), J[np.arange(len(x)), y], rtol=1e-5, atol=1e-6)
    lin, xl, _ = M.linear_regression()
    g = input_gradient(lin, xl, reduce=None)
    np.testing.assert_allclose(g, np.broadcast_to(lin.get_layer("lin").kernel.numpy()[:, 0], xl.shape), rtol=1e-6)


def test_multi_input_multi_output_selection():
    model = IM.two_in_two_out()
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(6, 3)).astype("float32"), rng.normal(size=(6, 2)).astype("float32")]
    for (inp, out), (i, o) in [(("b", "o2"), (1, 1)), (("a", "o1"), (0, 0)), (("a", "o2"), (0, 1))]:
        ref = R.tape_multi_input_jacobian(model, xs, i, o)
        by_name = input_jacobian(model, xs, output=out, input=inp)
        by_index = input_jacobian(model, xs, output=o, input=i)
        np.testing.assert_array_equal(by_name, by_index)
        np.testing.assert_allclose(by_name, ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(input_jacobian(model, tuple(xs), output=out, input=inp, mode="forward"),
                                   ref, rtol=1e-5, atol=1e-6)
    dict_model = IM.two_in_two_out(as_dict=True)
    ref = R.tape_multi_input_jacobian(model, xs, 1, 0)
    J = input_jacobian(dict_model, {"a": xs[0], "b": xs[1]}, output="o1", input="b")
    np.testing.assert_allclose(J, ref, rtol=1e-5, atol=1e-6)


def test_bad_inputs():
    model, x, _ = M.mlp()
    with pytest.raises(InputError, match=r"expected shape \(N, 5\), got \(29, 4\)"):
        input_jacobian(model, x[:, :4])
    with pytest.raises(InputError, match="unknown output 'nope'"):
        input_jacobian(model, x, output="nope")
    with pytest.raises(InputError, match="mode: expected one of"):
        input_jacobian(model, x, mode="sideways")
    with pytest.raises(InputError, match="index 3 out of range"):
        input_gradient(model, x, index=3)
    with pytest.raises(InputError, match="index: values must lie in 0..2"):
        input_gradient(model, x, index=np.full(len(x), 7))
    with pytest.raises(InputError, match="has 3 components"):
        input_gradient(model, x, reduce=None)
    with pytest.raises(ResourceError, match="input Jacobian.*above the memory limit"):
        input_jacobian(model, x, max_memory=100)
    emb, xi, _ = M.embedding_model()
    with pytest.raises(InputError, match="dtype int32.*not differentiable"):
        input_jacobian(emb, xi)
    two = IM.two_in_two_out()
    xs = [np.zeros((2, 3), "float32"), np.zeros((2, 2), "float32")]
    with pytest.raises(InputError, match="the model has 2 outputs"):
        input_jacobian(two, xs, input="a")
    with pytest.raises(InputError, match="unknown input 'c'"):
        input_jacobian(two, xs, input="c", output="o1")
    with pytest.raises(InputError, match="output index 5 out of range"):
        input_jacobian(two, xs, input=0, output=5)
