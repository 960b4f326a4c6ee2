"""Keras callbacks (TensorBoard event files read back, values against independent references) and
value_and_gradients inside a user's compiled train step."""

from __future__ import annotations

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import models as M
from tests import references as R
from tfpartials._checks import InputError
from tfpartials.autodiff.gradient import value_and_gradients
from tfpartials.callbacks import CurvatureMonitor, GradientMonitor


def read_scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from every event file under ``log_dir``, parsed without tensorboard."""
    out: dict[str, list[tuple[int, float]]] = {}
    files = sorted(glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"), recursive=True))
    assert files, f"no event files in {log_dir}"
    for path in files:
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for v in event.summary.value:
                value = float(tf.make_ndarray(v.tensor)) if v.HasField("tensor") else float(v.simple_value)
                out.setdefault(v.tag, []).append((int(event.step), value))
    return out


def _compiled_mlp(seed=11):
    model, x, y = M.regression_mlp(n=24, seed=seed)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return model, x, y


def _layer_stats_reference(model, x, y):
    """Per-layer (norm of mean, mean variance, SNR) from float64 single-example tapes + numpy."""
    flat = R.per_example_gradients_loop(model, x, y, R.keras_mean_loss("mse"))
    out, off = {}, 0
    for layer in model.layers:
        size = sum(int(np.prod(v.shape)) for v in layer.trainable_variables)
        if size:
            g = flat[:, off:off + size]
            mean, var = g.mean(0), g.var(0)
            out[layer.name] = (np.linalg.norm(mean), var.mean(), np.sum(mean ** 2) / np.sum(var))
        off += size
    return out


def test_gradient_monitor_fit_writes_tensorboard_and_logs(tmp_path):
    model, x, y = _compiled_mlp()
    probe = (x[:10], y[:10])
    mon = GradientMonitor(probe, every_n_epochs=1, log_dir=str(tmp_path / "grads"))
    hist = model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False, callbacks=[mon])  # 3 steps/epoch
    for key in ("grad_norm/h1", "grad_variance/h1", "grad_snr/out", "grad_norm", "grad_snr"):
        assert len(hist.history[key]) == 2, key
    scalars = read_scalars(str(tmp_path / "grads"))
    assert set(scalars) == {f"grad_{q}/{layer}" for q in ("norm", "variance", "snr") for layer in ("h1", "out")} \
        | {"grad_norm", "grad_snr"}
    assert all([s for s, _ in rows] == [3, 6] for rows in scalars.values())
    assert mon._state[1].trace_counts == {"per_example_vectorized_current": 1}  # compiled once, reused every epoch
    ref = _layer_stats_reference(model, *probe)  # final weights = those of the last record
    for layer, (norm, var, snr) in ref.items():
        np.testing.assert_allclose(scalars[f"grad_norm/{layer}"][-1][1], norm, rtol=1e-4)
        np.testing.assert_allclose(scalars[f"grad_variance/{layer}"][-1][1], var, rtol=1e-3)
        np.testing.assert_allclose(hist.history[f"grad_snr/{layer}"][-1], snr, rtol=1e-3)


def test_gradient_monitor_every_n_steps(tmp_path):
    model, x, y = _compiled_mlp()
    mon = GradientMonitor((x[:6], y[:6]), every_n_steps=2, every_n_epochs=None, log_dir=str(tmp_path))
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[mon])  # steps 1..6
    scalars = read_scalars(str(tmp_path))
    assert [s for s, _ in scalars["grad_norm/h1"]] == [2, 4, 6]


def test_callbacks_do_not_mutate_the_model_and_use_the_compiled_loss():
    model, x, y = M.regression_mlp(n=12)
    model.compile(optimizer="adam", loss="mae")
    before = [v.numpy().copy() for v in model.variables]
    mon, curv = GradientMonitor((x, y)), CurvatureMonitor((x, y), trace_matvecs=6)
    logs: dict = {}
    for cb in (mon, curv):
        cb.set_model(model)
        cb.on_epoch_end(0, logs)
    assert {"grad_norm/out", "hessian/top_eigenvalue", "hessian/trace"} <= set(logs)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.variables))
    assert not model.optimizer.built or int(model.optimizer.iterations.numpy()) == 0
    # compiled loss (MAE), not MSE: the mean gradient equals a plain tape of keras' MAE
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keras.losses.mean_absolute_error(y, model(x, training=False)))
    g = tape.gradient(loss, model.get_layer("out").trainable_variables)
    ref = np.sqrt(sum(float(tf.reduce_sum(t * t)) for t in g))
    np.testing.assert_allclose(logs["grad_norm/out"], ref, rtol=1e-5)


def test_monitor_arguments_are_checked():
    with pytest.raises(InputError, match="never run"):
        GradientMonitor((np.ones((2, 1)), np.ones((2, 1))), every_n_epochs=None)
    with pytest.raises(InputError, match="every_n_steps: expected a positive integer"):
        GradientMonitor((np.ones((2, 1)), np.ones((2, 1))), every_n_steps=0)
    with pytest.raises(InputError, match="probe_data"):
        GradientMonitor(None)
    with pytest.raises(InputError, match="Hutch\\+\\+ needs at least 3"):
        CurvatureMonitor((np.ones((2, 1)), np.ones((2, 1))), trace_matvecs=2)
    with pytest.raises(InputError, match="top_k"):
        CurvatureMonitor((np.ones((2, 1)), np.ones((2, 1))), top_k=0)
    model, x, y = M.regression_mlp(n=6)
    model.compile(optimizer="sgd", loss="mse")
    mon = GradientMonitor(x)  # no targets
    with pytest.raises(InputError, match="needs targets"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[mon])
    bare, x, y = M.regression_mlp(n=6)  # not compiled: no loss to default to
    mon = GradientMonitor((x, y))
    mon.set_model(bare)
    with pytest.raises(InputError, match="no loss given"):
        mon.on_epoch_end(0, {})


def test_value_and_gradients_in_a_compiled_train_step():
    model, x, y = M.regression_mlp(n=32)
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    opt, ref_opt = keras.optimizers.SGD(0.1), keras.optimizers.SGD(0.1)

    @tf.function
    def train_step(xb, yb):
        loss, grads = value_and_gradients(model, xb, yb, loss="mse")
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss, grads

    xt, yt = tf.constant(x), tf.constant(y)
    losses = []
    for _ in range(8):
        with tf.GradientTape() as tape:  # the textbook loop on an independent copy with the same weights
            ref_loss = tf.reduce_mean(tf.square(reference(xt, training=False) - yt))
        ref_grads = tape.gradient(ref_loss, reference.trainable_variables)
        ref_opt.apply_gradients(zip(ref_grads, reference.trainable_variables))
        loss, grads = train_step(xt, yt)
        np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
        for a, b in zip(grads, ref_grads):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)
        losses.append(float(loss))
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert all(b < a for a, b in zip(losses, losses[1:]))
    assert train_step.experimental_get_tracing_count() == 1


def test_curvature_monitor_eigenvalue_and_trace_equal_dense_hessian(tmp_path):
    model, x, y = _compiled_mlp(seed=12)
    probe = (x[:10], y[:10])
    n = sum(int(np.prod(v.shape)) for v in model.trainable_variables)  # 26
    curv = CurvatureMonitor(probe, top_k=2, trace_matvecs=3 * n, log_dir=str(tmp_path / "curv"))
    grads = GradientMonitor(probe, log_dir=str(tmp_path / "grads"))
    hist = model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False, callbacks=[grads, curv])
    scalars = read_scalars(str(tmp_path / "curv"))
    assert set(scalars) == {"hessian/top_eigenvalue", "hessian/eigenvalue_1", "hessian/eigenvalue_2",
                            "hessian/trace", "hessian/trace_std_error"}
    assert all([s for s, _ in rows] == [3, 6] for rows in scalars.values())
    assert [s for s, _ in read_scalars(str(tmp_path / "grads"))["grad_snr"]] == [3, 6]
    # the last record is at the final weights: compare with an independent dense Hessian of the probe batch
    H = R.nested_tape_hessian(model, *probe, R.keras_mean_loss("mse"))
    lam = np.linalg.eigvalsh((H + H.T) / 2)[::-1]
    np.testing.assert_allclose(scalars["hessian/top_eigenvalue"][-1][1], lam[0], rtol=1e-4)
    np.testing.assert_allclose(hist.history["hessian/eigenvalue_2"][-1], lam[1], rtol=1e-4)
    np.testing.assert_allclose(scalars["hessian/trace"][-1][1], np.trace(H), rtol=1e-4)  # s >= n: exact
    assert scalars["hessian/top_eigenvalue"][0][1] != scalars["hessian/top_eigenvalue"][1][1]  # weights moved
