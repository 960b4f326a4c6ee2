"""Property-based tests of the command line's data loading: random shapes, dtypes and values never crash.

Every generated file either loads into consistent batches or is refused with InputError (exit code 2 and one
line through the CLI) -- never another exception, never a traceback.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tfpartials._checks import InputError

DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int32, np.int64, np.uint8, np.bool_, np.complex64]
SETTINGS = settings(max_examples=int(__import__("os").environ.get("FUZZ_N", 40)), deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@st.composite
def arrays(draw, feature_shape=None, n=None):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    if n is None:
        n = draw(st.integers(0, 6))
    if feature_shape is None:
        feature_shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=2)))
    shape = (n, *feature_shape) if draw(st.integers(0, 9)) else feature_shape   # sometimes no example axis
    wild = draw(st.booleans())      # half the time any value at all, else moderate finite values
    if dtype.kind == "f":
        elements = st.floats(allow_nan=wild, allow_infinity=wild, width=dtype.itemsize * 8,
                             **({} if wild else {"min_value": -100, "max_value": 100}))
    elif dtype.kind == "c":
        elements = st.complex_numbers(allow_nan=wild, allow_infinity=wild, width=dtype.itemsize * 8,
                                      **({} if wild else {"max_magnitude": 100}))
    else:
        elements = None
    return draw(hnp.arrays(dtype, shape, elements=elements))


@st.composite
def npz_payloads(draw):
    kind = draw(st.sampled_from(["coherent", "coherent", "y", "none", "other-key"]))
    if kind == "coherent":        # the shapes the model wants; dtypes and values still random
        n = draw(st.integers(1, 6))
        return {"x": draw(arrays(feature_shape=(4,), n=n)),
                "y": draw(arrays(feature_shape=draw(st.sampled_from([(1,), ()])), n=n))}
    x = draw(st.one_of(arrays(), arrays(feature_shape=(4,))))
    if kind == "y":
        return {"x": x, "y": draw(arrays())}
    return {"x": x} if kind == "none" else {"inputs": x}


CSV_CELLS = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(-5, 5).map(str),
                      st.sampled_from(["", " ", "nan", "inf", "-inf", "1e999", "abc", "0x10", "1,5", '"', "True"]))


NUMBERS = st.one_of(st.floats(-100, 100).map(repr), st.integers(-5, 5).map(str))


@st.composite
def csv_texts(draw):
    if draw(st.booleans()):       # the columns the model wants, cells mostly numbers
        columns = ["a", "b", "c", "d", "t"]
        rows = draw(st.lists(st.lists(NUMBERS, min_size=5, max_size=5), min_size=0, max_size=5))
        if rows and draw(st.integers(0, 2)) == 0:     # now and then one odd cell
            rows[draw(st.integers(0, len(rows) - 1))][draw(st.integers(0, 4))] = draw(CSV_CELLS)
    else:
        columns = draw(st.lists(st.sampled_from(["a", "b", "c", "d", "t", "a"]), min_size=1, max_size=6))
        rows = draw(st.lists(st.lists(CSV_CELLS, min_size=0, max_size=7), min_size=0, max_size=5))
    return "\n".join([",".join(columns)] + [",".join(r) for r in rows]) + "\n"


@pytest.fixture(scope="module")
def lin_model(files):
    from tfpartials.io.models import load_model

    return load_model(files.lin_keras)


def _check_loaded(data):
    """A successful load yields consistent, finite-size batches covering every example exactly once."""
    assert data.num_examples >= 1
    total = 0
    for batch in data.batches():
        assert len(batch.mask) == data.batch_size
        assert math.isclose(float(np.sum(batch.mask)), batch.count)
        total += batch.count
    assert total == data.num_examples


def _load(path, model, **kw):
    from tfpartials.io.data import load_data

    try:
        data = load_data(path, model=model, loss_name="mse", **kw)
    except InputError as exc:
        assert str(exc) and "\n" not in str(exc)
        event("refused")
        return None
    event("loaded")
    _check_loaded(data)
    return data


@SETTINGS
@given(payload=npz_payloads(), batch_size=st.integers(1, 7), allow_nan=st.booleans())
def test_npz_never_crashes(payload, batch_size, allow_nan, lin_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "d.npz"
    np.savez(path, **payload)
    _load(path, lin_model, batch_size=batch_size, allow_nan=allow_nan)


@SETTINGS
@given(x=st.one_of(arrays(), arrays(feature_shape=(4,))), batch_size=st.integers(1, 7))
def test_npy_never_crashes(x, batch_size, lin_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "x.npy"
    np.save(path, x)
    from tfpartials.io.data import load_data

    try:
        data = load_data(path, model=lin_model, batch_size=batch_size, require_targets=False)
    except InputError:
        return
    _check_loaded(data)


@SETTINGS
@given(text=csv_texts(), target=st.sampled_from([None, ["t"], ["t"], ["t"], ["a", "t"], ["zzz"]]),
       batch_size=st.integers(1, 7))
def test_csv_never_crashes(text, target, batch_size, lin_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "d.csv"
    path.write_text(text)
    _load(path, lin_model, batch_size=batch_size, target=target)


@settings(max_examples=int(__import__("os").environ.get("FUZZ_N", 12)), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(payload=npz_payloads(), batch_size=st.integers(1, 7))
@example(payload={"x": np.ones((5, 4), np.float16), "y": np.zeros((5, 1), np.int8)}, batch_size=2)
@example(payload={"x": np.ones((3, 4), np.bool_), "y": np.ones((3,), np.float64)}, batch_size=7)
def test_cli_exit_code_and_one_line(payload, batch_size, files, cli, tmp_path_factory):
    """Through the real entry point: exit 0 with an output file, or exit 2 with one line and no output."""
    root = tmp_path_factory.mktemp("fuzzcli")
    data, out = root / "d.npz", root / "g.npz"
    np.savez(data, **payload)
    code, _, err = cli("gradients", files.lin_keras, "--data", data, "--batch-size", batch_size, "--out", out,
                       "--quiet", "--loss", "mse")
    assert code in (0, 2), err
    assert "Traceback" not in err
    event(f"exit {code}")
    if code == 0:
        with np.load(out) as z:
            assert sorted(z.files) == ["lin/bias", "lin/kernel"]   # may be inf: finite data ~1e19 overflows
            assert z["lin/kernel"].shape == (4, 1) and z["lin/bias"].shape == (1,)
    else:
        assert err.count("\n") == 1 and err.startswith("tfpartials: error: ")
        assert not out.exists()
