"""``tfpartials laplace``: the JSON against the Python API and closed forms, and its error paths."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.cli.conftest import files  # noqa: F401  (fixture; the cli runner is in tests/conftest.py)


def test_classification_happy_path(files, cli, tmp_path):  # noqa: F811
    out, png = tmp_path / "la.json", tmp_path / "rel.png"
    code, stdout, err = cli("laplace", files.mlp_keras, "--data", files.mlp_npz, "--eval", files.mlp_npz,
                            "--subset", "last-layer", "--structure", "diag", "--out", out, "--plot", png)
    assert code == 0, err
    assert "MAP vs Laplace" in stdout
    res = json.loads(out.read_text())
    assert res["likelihood"] == "classification" and res["structure"] == "diag"
    assert res["num_train"] == res["num_eval"] == 29 and res["optimize"] == "marglik"
    for side in ("map", "laplace"):
        assert set(res[side]) >= {"nll", "ece", "mce", "brier", "accuracy", "reliability"}
        assert 0 <= res[side]["ece"] <= 1
    # the MAP NLL is the model's own mean cross-entropy (numpy, from the saved weights)
    import keras

    m = keras.models.load_model(files.mlp_keras, compile=False)
    d = np.load(files.mlp_npz)
    z = m.predict(d["x"], verbose=0).astype(np.float64)
    logp = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
    assert res["map"]["nll"] == pytest.approx(-logp[np.arange(len(z)), d["y"]].mean(), rel=1e-5)
    assert isinstance(res["prior_precision"], float) and np.isfinite(res["log_marginal_likelihood"])
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert sorted(os.listdir(tmp_path)) == ["la.json", "rel.png"]


def test_regression_full_equals_closed_form(files, cli, tmp_path):  # noqa: F811
    out = tmp_path / "la.json"
    code, _, err = cli("laplace", files.lin_keras, "--data", files.lin_npz, "--eval", files.lin_npz,
                       "--optimize", "none", "--prior-precision", "2", "--precision", "float64", "--out", out,
                       "--quiet")
    assert code == 0, err
    res = json.loads(out.read_text())
    # log p(D | w) - 1/2 (alpha |w|^2 + log det(alpha I + Phi^T Phi) - P log alpha) at the saved weights, sigma = 1
    x, y = files.x.astype(np.float64), files.y.astype(np.float64)
    Phi = np.hstack([x, np.ones((len(x), 1))])
    w = np.concatenate([files.W.reshape(-1), files.b.reshape(-1)])
    r = y[:, 0] - Phi @ w
    loglik = -0.5 * r @ r - 0.5 * len(x) * np.log(2 * np.pi)
    _, logdet = np.linalg.slogdet(2.0 * np.eye(5) + Phi.T @ Phi)
    ref = loglik - 0.5 * (2.0 * w @ w + logdet - 5 * np.log(2.0))
    assert res["log_marginal_likelihood"] == pytest.approx(ref, rel=1e-6)
    assert res["likelihood"] == "regression" and res["sigma_noise"] == 1.0 and set(res["laplace"]) == {"nll", "rmse"}


@pytest.mark.parametrize("extra,match", [
    (["--structure", "dense"], "invalid choice"),
    (["--prior-precision", "-1"], "--prior-precision: expected a finite number > 0"),
    (["--optimize", "gridsearch"], "needs validation data: --val"),
    (["--plot", "x.jpg"], "--plot: expected a .png"),
    (["--subset", "nope*"], "no trainable variable matches 'nope\\*'"),
    (["--bins", "0"], "--bins: expected a positive integer"),
    (["--likelihood", "regression"], "needs loss 'mse'"),
])
def test_errors_exit_2_one_line(files, cli, tmp_path, extra, match):  # noqa: F811
    out = tmp_path / "la.json"
    code, _, err = cli("laplace", files.mlp_keras, "--data", files.mlp_npz, "--eval", files.mlp_npz,
                       "--out", out, *extra)
    assert code == 2
    assert err.startswith("tfpartials: error:") and err.count("\n") == 1, err
    import re

    assert re.search(match, err), err
    assert not out.exists()


def test_missing_eval_and_refused_full(files, cli, tmp_path):  # noqa: F811
    code, _, err = cli("laplace", files.mlp_keras, "--data", files.mlp_npz)
    assert code == 2 and "--eval" in err
    code, _, err = cli("laplace", files.mlp_keras, "--data", files.mlp_npz, "--eval", files.mlp_npz,
                       "--max-memory", "1KiB", "--out", tmp_path / "la.json")
    assert code == 2 and "above the memory limit" in err and err.count("\n") == 1
    assert not (tmp_path / "la.json").exists()
