"""Hessian-vector products against closed forms, dense nested-tape Hessians (float64), the fallback; CLI."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tests import models as M
from tests import references as R
from tfpartials._checks import InputError
from tfpartials.autodiff.hvp import FallbackWarning, hvp, hvp_matmat
from tfpartials.autodiff.problem import prepare
from tfpartials.cli.main import main


def test_linear_regression_closed_form_flat_and_dict():
    model, x, y = M.linear_regression(n=37, d=4)
    X = np.c_[x.astype(np.float64), np.ones(len(x))]
    H = 2 * X.T @ X / len(x)
    v = np.random.default_rng(0).normal(size=5)
    hv = hvp(model, (x, y), v, loss="mse", batch_size=10, precision="float64", quiet=True)  # partial last batch
    assert list(hv) == ["lin/kernel", "lin/bias"] and hv["lin/kernel"].shape == (4, 1)
    np.testing.assert_allclose(np.concatenate([hv["lin/kernel"].ravel(), hv["lin/bias"]]), H @ v, rtol=1e-12)
    hv_dict = hvp(model, (x, y), {"lin/kernel": v[:4].reshape(4, 1), "lin/bias": v[4:]}, loss="mse",
                  precision="float64", quiet=True)
    for k in hv:
        np.testing.assert_allclose(hv_dict[k], hv[k], rtol=1e-12)


CASES = {
    "mlp_tanh_softmax": (M.mlp, "sparse_categorical_crossentropy", True, "scce"),
    "small_cnn": (M.small_cnn, "sparse_categorical_crossentropy", True, "scce"),
    "batchnorm": (M.batchnorm_dropout_model, "mse", None, "mse"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hvp_equals_dense_hessian_times_v(case):
    builder, loss, logits, ref_loss = CASES[case]
    model, x, y = builder()
    H = R.nested_tape_hessian(model, x, y, R.keras_mean_loss(ref_loss, from_logits=bool(logits)))
    n = H.shape[0]
    V = np.random.default_rng(1).normal(size=(n, 3))
    obj, d = prepare(model, (x, y), loss, from_logits=logits, batch_size=4, precision="float64")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)  # the CNN's Conv2D: checked in test_hessian
        HV = hvp_matmat(obj, d, V, quiet=True).numpy()             # three vectors at once (vectorised)
        hv = hvp(obj, d, V[:, 0], quiet=True)                      # one vector
    np.testing.assert_allclose(HV, H @ V, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.concatenate([a.ravel() for a in hv.values()]), H @ V[:, 0], rtol=1e-9,
                               atol=1e-12)
    # float32 model: the same to float32 round-off
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        hv32 = hvp(model, (x, y), V[:, 1].astype("float32"), loss=loss, from_logits=logits, quiet=True)
    flat32 = np.concatenate([a.ravel() for a in hv32.values()])
    np.testing.assert_allclose(flat32, H @ V[:, 1].astype("float32"), rtol=2e-4, atol=2e-5)


def test_many_vectors_traced_once():
    model, x, y = M.regression_mlp(n=33)
    obj, d = prepare(model, (x, y), "mse", batch_size=10)
    V = np.random.default_rng(2).normal(size=(obj.space.size, 5)).astype("float32")
    a = hvp_matmat(obj, d, V, quiet=True).numpy()
    counts = dict(obj.trace_counts)
    b = hvp_matmat(obj, d, V[:, ::-1].copy(), quiet=True).numpy()
    assert obj.trace_counts == counts and list(counts.values()) == [1]
    np.testing.assert_allclose(b, a[:, ::-1], rtol=1e-5, atol=1e-7)


def test_columns_beyond_a_chunk_are_padded_into_one_trace(monkeypatch):
    import tfpartials.autodiff.hvp as module

    monkeypatch.setattr(module, "MAX_CHUNK", 2)
    model, x, y = M.regression_mlp(n=13)
    obj, d = prepare(model, (x, y), "mse", batch_size=5, precision="float64")
    H = R.nested_tape_hessian(model, x, y, R.keras_mean_loss("mse"))
    V = np.random.default_rng(4).normal(size=(obj.space.size, 5))
    np.testing.assert_allclose(hvp_matmat(obj, d, V, quiet=True).numpy(), H @ V, rtol=1e-10, atol=1e-13)
    assert list(obj.trace_counts.values()) == [1]  # 2 + 2 + (1 padded to 2) columns


def test_forward_mode_fallback_is_said_once_and_exact():
    """An LSTM has no vectorisable forward rule: the product falls back to reverse mode, warns once, is exact."""
    model, x, y = M.lstm_model()
    obj, d = prepare(model, (x, y), "mse", precision="float64")
    v = np.random.default_rng(3).normal(size=obj.space.size)
    ref = R.nested_tape_hvp(model, x, y, R.keras_mean_loss("mse"), v)
    with pytest.warns(FallbackWarning, match="forward-over-reverse.*not available"):
        one = hvp_matmat(obj, d, v[:, None], quiet=True).numpy()    # one vector: reverse mode, no pfor
    with pytest.warns(FallbackWarning, match="reverse-over-reverse.*not available"):
        hv = hvp_matmat(obj, d, np.stack([v, 2 * v], 1), quiet=True).numpy()  # many: pfor fails too -> loop
    np.testing.assert_allclose(one[:, 0], ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(hv[:, 0], ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(hv[:, 1], 2 * ref, rtol=1e-9, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)  # decided once per objective: no second warning
        hvp_matmat(obj, d, np.stack([v, v], 1), quiet=True)


def test_explicit_forward_method_is_refused_in_one_line_when_unavailable():
    model, x, y = M.lstm_model()
    with pytest.raises(InputError, match="cannot compile Hessian-vector products by forward-over-reverse") as info:
        hvp(model, (x, y), np.ones(133), loss="mse", method="forward", quiet=True)
    assert isinstance(info.value.__cause__, TypeError) and "\n" not in str(info.value)


def test_bad_vectors_and_options():
    model, x, y = M.linear_regression()
    with pytest.raises(InputError, match=r"vector: expected shape \(5,\)"):
        hvp(model, (x, y), np.ones(4), loss="mse")
    with pytest.raises(InputError, match="missing lin/bias"):
        hvp(model, (x, y), {"lin/kernel": np.ones((4, 1))}, loss="mse")
    with pytest.raises(InputError, match=r"lin/kernel expected shape \(4, 1\), got \(4,\)"):
        hvp(model, (x, y), {"lin/kernel": np.ones(4), "lin/bias": np.ones(1)}, loss="mse")
    with pytest.raises(InputError, match="for many vectors use HessianOperator"):
        hvp(model, (x, y), np.ones((5, 2)), loss="mse")
    with pytest.raises(InputError, match="method: expected one of 'auto', 'forward', 'reverse', 'loop'"):
        hvp(model, (x, y), np.ones(5), loss="mse", method="central")


# ------------------------------------------------------------------------------------------------ command line
@pytest.fixture
def saved(tmp_path):
    model, x, y = M.linear_regression(n=37, d=4)
    model.compile(loss="mse")
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", x=x, y=y)
    X = np.c_[x.astype(np.float64), np.ones(len(x))]
    return tmp_path, 2 * X.T @ X / len(x)


def test_cli_hvp_npy_and_npz(saved, capsys):
    tmp, H = saved
    v = np.arange(1.0, 6.0)
    np.save(tmp / "v.npy", v)
    np.savez(tmp / "v.npz", **{"lin/kernel": v[:4].reshape(4, 1), "lin/bias": v[4:]})
    for vec in ("v.npy", "v.npz"):
        out = tmp / f"hv_{vec}.npz"
        code = main(["hvp", str(tmp / "m.keras"), "--data", str(tmp / "d.npz"), "--vector", str(tmp / vec),
                     "--precision", "float64", "--out", str(out)])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert "v^T H v / v^T v" in captured.out
        with np.load(out, allow_pickle=False) as z:
            assert sorted(z.files) == ["lin/bias", "lin/kernel"]
            np.testing.assert_allclose(np.r_[z["lin/kernel"].ravel(), z["lin/bias"]], H @ v, rtol=1e-10)


def test_cli_hvp_bad_vector_files(saved, capsys):
    tmp, _ = saved
    np.save(tmp / "short.npy", np.ones(3))
    (tmp / "v.txt").write_text("1 2 3")
    for vec, msg in [("short.npy", r"vector: expected shape (5,)"), ("v.txt", "expected a .npy or .npz"),
                     ("missing.npy", "no such file")]:
        code = main(["hvp", str(tmp / "m.keras"), "--data", str(tmp / "d.npz"), "--vector", str(tmp / vec)])
        err = capsys.readouterr().err
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1
