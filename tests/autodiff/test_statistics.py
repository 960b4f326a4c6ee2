"""Gradient statistics (norms, mean, variance, second moment, SNR) against numpy on reference per-example
gradients from a float64 loop of single-example tapes."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tests import models as M
from tests import references as R
from tfpartials.autodiff.per_example import per_example_gradients
from tfpartials.autodiff.statistics import GradientStatistics, gradient_statistics, statistics_from_gradients


def _split(flat: np.ndarray, model) -> dict[str, np.ndarray]:
    """(N, n) reference rows -> {name: (N, *shape)} in trainable-variable order, with layer/var names."""
    out, off = {}, 0
    for layer in model.layers:
        for v in layer.trainable_variables:
            size = int(np.prod(v.shape))
            out[f"{layer.name}/{v.name}"] = flat[:, off:off + size].reshape(len(flat), *v.shape)
            off += size
    assert off == flat.shape[1]
    return out


@pytest.fixture(scope="module")
def cnn_reference():
    model, x, y = M.small_cnn(n=11)
    ref = R.per_example_gradients_loop(model, x, y, R.keras_mean_loss("scce", from_logits=True))
    return model, x, y, _split(ref, model)


@pytest.mark.parametrize("max_memory", [None, 3000])  # one chunk, or chunks of a few examples
def test_moments_and_snr_equal_numpy(cnn_reference, max_memory):
    model, x, y, ref = cnn_reference
    s = gradient_statistics(R.float64_clone(model), (x, y), loss="sparse_categorical_crossentropy",
                            from_logits=True, batch_size=5, max_memory=max_memory)
    assert isinstance(s, GradientStatistics) and s.num_examples == len(x) and s.fallback_op is None
    assert s.names == tuple(ref)
    total_sq = np.zeros(len(x))
    for name, g in ref.items():
        mean, var = g.mean(0), np.mean((g - g.mean(0)) ** 2, axis=0)  # variance normalised by N
        np.testing.assert_allclose(s.mean[name], mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(s.variance[name], var, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(s.second_moment[name], np.mean(g ** 2, axis=0), rtol=1e-9, atol=1e-12)
        norms = np.sqrt(np.sum(g.reshape(len(g), -1) ** 2, axis=1))
        np.testing.assert_allclose(s.variable_norms[name], norms, rtol=1e-9)
        np.testing.assert_allclose(s.snr[name], np.sum(mean ** 2) / np.sum(var), rtol=1e-8)
        total_sq += norms ** 2
    np.testing.assert_allclose(s.norms, np.sqrt(total_sq), rtol=1e-9)
    for layer in ("conv", "logits"):
        gs = [ref[f"{layer}/kernel"], ref[f"{layer}/bias"]]
        signal = sum(np.sum(g.mean(0) ** 2) for g in gs)
        noise = sum(np.sum(g.var(0)) for g in gs)
        size = sum(g[0].size for g in gs)
        np.testing.assert_allclose(s.layer_snr[layer], signal / noise, rtol=1e-8)
        np.testing.assert_allclose(s.layer_norm[layer], np.sqrt(signal), rtol=1e-9)
        np.testing.assert_allclose(s.layer_variance[layer], noise / size, rtol=1e-8)
    all_g = np.concatenate([g.reshape(len(x), -1) for g in ref.values()], axis=1)
    np.testing.assert_allclose(s.total_snr, np.sum(all_g.mean(0) ** 2) / np.sum(all_g.var(0)), rtol=1e-8)


def test_float32_model_accumulates_in_float64(cnn_reference):
    model, x, y, ref = cnn_reference
    s = gradient_statistics(model, (x, y), loss="sparse_categorical_crossentropy", from_logits=True,
                            batch_size=3)
    assert s.variance["conv/kernel"].dtype == np.float64
    for name, g in ref.items():
        np.testing.assert_allclose(s.variance[name], g.var(0), rtol=2e-3, atol=1e-7)


def test_from_full_gradients_equals_streaming():
    model, x, y = M.regression_mlp()
    pe = per_example_gradients(model, (x, y), loss="mse", precision="float64")
    a = statistics_from_gradients(pe)
    b = gradient_statistics(model, (x, y), loss="mse", precision="float64", batch_size=7)
    np.testing.assert_allclose(a.norms, b.norms, rtol=1e-10)
    for k in pe:
        np.testing.assert_allclose(a.variance[k], b.variance[k], rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(a.snr[k], b.snr[k], rtol=1e-8)


def test_single_example_has_zero_variance_and_infinite_snr():
    model, x, y = M.regression_mlp()
    s = gradient_statistics(model, (x[:1], y[:1]), loss="mse")
    assert s.num_examples == 1
    assert all(np.all(v == 0) for v in s.variance.values())
    assert all(np.isinf(v) for v in s.snr.values())


def test_zero_gradient_and_zero_variance_gives_nan_snr():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="lin")])
    for v in model.trainable_variables:
        v.assign(np.zeros(v.shape, "float32"))
    x, y = np.ones((4, 2), "float32"), np.zeros((4, 1), "float32")  # perfect fit: every g_i = 0
    s = gradient_statistics(model, (x, y), loss="mse")
    assert np.isnan(s.snr["lin/kernel"]) and np.isnan(s.layer_snr["lin"]) and np.all(s.norms == 0)


def test_bad_input():
    with pytest.raises(ValueError, match="empty mapping"):
        statistics_from_gradients({})
    model, x, y = M.regression_mlp()
    with pytest.raises(ValueError, match="one item needs"):
        gradient_statistics(model, (x, y), loss="mse", max_memory=64)
