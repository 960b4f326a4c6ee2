"""Shared fixtures: small deterministic models of every kind the library must handle."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TFPARTIALS_PROGRESS", "0")

import tensorflow as tf  # noqa: E402

# scripts run in subprocesses, never imported here (the JAX reference switches Keras' backend at import)
collect_ignore = ["soundness/jax_reference.py", "soundness/isolated.py", "soundness/render.py", "distribute/_worker.py"]

# Three logical CPU devices for the tf.distribute tests; must happen before TensorFlow runs any op.
try:
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 3)
except RuntimeError:  # pragma: no cover - devices already initialised
    pass

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tfpartials  # noqa: E402,F401
from tests import models as M  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def cli(capsys):
    """``cli(*argv) -> (exit code, stdout, stderr)`` through the real entry point ``main``, in-process."""
    from tfpartials.cli.main import main

    def run(*argv):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="module")
def save_case(tmp_path_factory):
    """``save_case(name, model, loss, **arrays) -> directory``: the model compiled with ``loss`` saved as
    ``name.keras`` and ``arrays`` as ``name.npz``, in one directory per test module (for the command line)."""
    root = tmp_path_factory.mktemp("saved")

    def save(name: str, model, loss, **arrays):
        model.compile(loss=loss)
        model.save(root / f"{name}.keras")
        np.savez(root / f"{name}.npz", **arrays)
        return root

    return save


@pytest.fixture
def linreg():
    """(model, x, y) for y = xW + b with MSE: closed forms available."""
    return M.linear_regression()


@pytest.fixture
def mlp():
    return M.mlp()


@pytest.fixture
def cnn():
    return M.small_cnn()


@pytest.fixture
def bn_model():
    return M.batchnorm_dropout_model()
