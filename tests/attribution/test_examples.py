"""The bundled examples: offline, seeded, cached, and good enough to explain."""

from __future__ import annotations

import numpy as np
import pytest

from tfpartials._checks import InputError
from tfpartials.examples import diabetes_mlp, digits_cnn
from tfpartials.examples._cache import cache_dir


def test_digits_example(digits):
    model, x, y = digits
    assert x.shape == (359, 8, 8, 1) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert y.shape == (359,) and set(np.unique(y)) == set(range(10))
    assert model.output_shape == (None, 10)
    accuracy = np.mean(np.asarray(model(x)).argmax(1) == y)
    assert accuracy > 0.6  # three epochs in the tests; the default fifteen reach about 96%


def test_diabetes_example(diabetes):
    model, x, y, names = diabetes
    assert names == ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
    assert x.shape == (88, 10) and y.shape == (88, 1)
    pred = np.asarray(model(x))
    assert np.corrcoef(pred[:, 0], y[:, 0])[0, 1] > 0.3


def test_seeded_training_and_the_cache(tmp_path):
    a = diabetes_mlp(epochs=1, cache=False)
    first = diabetes_mlp(epochs=1, cache=tmp_path)  # trained again: seeded, so the same model
    np.testing.assert_allclose(np.asarray(a.model(a.x)), np.asarray(first.model(first.x)), rtol=1e-5,
                               atol=1e-6)
    files = list(tmp_path.glob("diabetes_mlp-*.keras"))
    assert len(files) == 1
    again = diabetes_mlp(epochs=1, cache=tmp_path)  # loaded, not retrained
    np.testing.assert_array_equal(np.asarray(first.model(first.x)), np.asarray(again.model(again.x)))
    files[0].write_bytes(b"not a model")  # a damaged entry is retrained and replaced
    fixed = diabetes_mlp(epochs=1, cache=tmp_path)
    np.testing.assert_allclose(np.asarray(fixed.model(fixed.x)), np.asarray(first.model(first.x)), rtol=1e-5,
                               atol=1e-6)
    assert files[0].stat().st_size > 1000


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TFPARTIALS_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir(True) == tmp_path / "c"
    assert cache_dir(False) is None
    assert cache_dir(tmp_path) == tmp_path


def test_bad_arguments():
    with pytest.raises(InputError, match="epochs: expected a positive integer, got 0"):
        digits_cnn(epochs=0, cache=False)
    with pytest.raises(InputError, match="seed: expected a non-negative integer"):
        diabetes_mlp(seed=-2, cache=False)
