"""What a user of the command line sees on stderr: tfpartials' own lines only, each warning on one line."""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import pytest


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("quiet")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="logits")])  # linear: logits
    model.save(root / "m.keras")
    rng = np.random.default_rng(0)
    np.savez(root / "d.npz", x=rng.normal(size=(16, 4)).astype("float32"), y=rng.integers(0, 3, 16))
    return root


def _run(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TFPARTIALS_DEBUG")}
    return subprocess.run([sys.executable, "-m", "tfpartials", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def test_stderr_holds_only_tfpartials_lines(classifier):
    # cross-entropy on a linear output without --from-logits: tfpartials warns, in one line
    res = _run("gradients", "m.keras", "--data", "d.npz", "--loss", "sparse_categorical_crossentropy",
               "--out", "g.npz", cwd=classifier)
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines, "expected the logits warning"
    assert all(ln.startswith("tfpartials: ") for ln in lines), lines
    assert any(ln.startswith("tfpartials: warning: loss 'sparse_categorical_crossentropy' expects probabilities")
               for ln in lines), lines
    assert not any("oneDNN" in ln or "absl" in ln or ".py:" in ln for ln in lines)


def test_errors_stay_one_line_and_debug_shows_everything(classifier):
    res = _run("gradients", "m.keras", "--data", "missing.npz", "--loss", "mse", cwd=classifier)
    assert res.returncode == 2
    assert [ln for ln in res.stderr.splitlines() if ln.strip()] == [res.stderr.strip()]
    assert res.stderr.startswith("tfpartials: error:")
    debug = _run("gradients", "m.keras", "--data", "d.npz", "--loss", "sparse_categorical_crossentropy",
                 "--from-logits", "--debug", "--out", "h.npz", cwd=classifier)
    assert debug.returncode == 0, debug.stderr


def test_quick_exit_keeps_every_line_and_file_and_the_exit_code(classifier):
    """After the work the command leaves without the interpreter's teardown: piped stdout (block-buffered), the
    output file and the exit code must all survive that."""
    res = _run("gradients", "m.keras", "--data", "d.npz", "--loss", "sparse_categorical_crossentropy",
               "--from-logits", "--out", "q.npz", cwd=classifier)
    assert res.returncode == 0, res.stderr
    assert "logits/kernel" in res.stdout and res.stdout.endswith("\n")
    with np.load(classifier / "q.npz") as z:
        assert z["logits/kernel"].shape == (4, 3)
