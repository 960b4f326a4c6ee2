"""Shared fixtures for the report tests: one report per model kind, built once per session."""

from __future__ import annotations

import numpy as np
import pytest

from tests import models as M


@pytest.fixture(scope="session")
def tabular_case(tmp_path_factory):
    """(model, x, y, out_dir, results) for a small regression MLP report with feature names."""
    from tfpartials.reports.run import build_report

    model, x, y = M.regression_mlp(n=48)
    out = tmp_path_factory.mktemp("tabular") / "report"
    results = build_report(model, (x, y), "mse", out, seed=3, num_matvecs=9, top_k=2, quiet=True,
                           feature_names=["alpha", "beta", "gamma"], probe_examples=32, per_example_examples=40,
                           density_probes=2, density_steps=12, check_examples=16, check_directions=2)
    return model, x, y, out, results


@pytest.fixture(scope="session")
def image_case(tmp_path_factory):
    """(model, x, y, out_dir, results) for a small CNN classifier report."""
    from tfpartials.reports.run import build_report

    model, x, y = M.small_cnn(n=24)
    out = tmp_path_factory.mktemp("image") / "report"
    results = build_report(model, (x, y), "sparse_categorical_crossentropy", out, from_logits=True, seed=0,
                           num_matvecs=12, quiet=True, density_probes=2, density_steps=12,
                           skip=["check"])  # checked on the tabular case; conv HVPs in float64 are slow to trace
    return model, x, y, out, results


def flat_gradient_norms(model, x, y, loss_fn):
    """Per-variable L2 norms of the dataset gradient by one plain GradientTape in float64 (reference)."""
    import tensorflow as tf

    from tests import references as R

    clone = R.float64_clone(model)
    with tf.GradientTape() as tape:
        value = loss_fn(y, clone(tf.constant(x, tf.float64), training=False))
    grads = tape.gradient(value, clone.trainable_variables)
    return float(value), [float(np.linalg.norm(g.numpy())) for g in grads]
