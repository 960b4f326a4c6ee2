"""``tfpartials kfac`` and ``tfpartials spectrum --operator kfac|ekfac``: factors against closed forms, exit codes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests import models as M


@pytest.fixture(scope="module")
def files(save_case):
    model, x, y = M.linear_regression(n=11, d=3)
    save_case("lin", model, "mse", x=x, y=y)
    lstm, xl, yl = M.lstm_model()
    return save_case("lstm", lstm, "mse", x=xl, y=yl), x


def test_kfac_writes_named_factors_equal_to_closed_form(files, cli, tmp_path):
    root, x = files
    out = tmp_path / "f.npz"
    code, stdout, err = cli("kfac", root / "lin.keras", "--data", root / "lin.npz", "--out", out,
                    "--precision", "float64", "--batch-size", "4")
    assert code == 0, err
    assert "lin" in stdout and os.listdir(tmp_path) == ["f.npz"]
    xa = np.concatenate([x.astype(np.float64), np.ones((len(x), 1))], axis=1)
    with np.load(out) as z:
        assert list(z["layers"]) == ["lin"] and int(z["num_examples"]) == 11
        np.testing.assert_allclose(z["lin/A"], xa.T @ xa / len(x), rtol=1e-10)
        np.testing.assert_allclose(z["lin/B"], [[2.0]], rtol=1e-10)
        np.testing.assert_array_equal(z["lin/indices"], np.arange(4))


def test_kfac_bad_input_exits_2_with_one_line_and_no_file(files, cli, tmp_path):
    root, _ = files
    out = tmp_path / "f.npz"
    code, _, err = cli("kfac", root / "lstm.keras", "--data", root / "lstm.npz", "--out", out, "--quiet")
    assert code == 2 and err.startswith("tfpartials: error: KFAC: parameter 'lstm/") and err.count("\n") == 1
    assert not out.exists()
    code, _, err = cli("kfac", root / "lin.keras", "--data", root / "lin.npz", "--mc-samples", "0")
    assert code == 2 and "--mc-samples: expected a positive integer" in err
    code, _, err = cli("kfac", root / "lin.keras", "--data", root / "lin.npz", "--fisher", "nope")
    assert code == 2 and "invalid choice" in err


@pytest.mark.parametrize("operator", ["kfac", "ekfac"])
def test_spectrum_operator_kfac(files, cli, tmp_path, operator):
    root, x = files
    out = tmp_path / "s.json"
    code, _, err = cli("spectrum", root / "lin.keras", "--data", root / "lin.npz", "--operator", operator,
               "--top-k", "2", "--precision", "float64", "--out", out, "--quiet")
    assert code == 0, err
    xa = np.concatenate([x.astype(np.float64), np.ones((len(x), 1))], axis=1)
    ref = np.sort(np.linalg.eigvalsh(2 * xa.T @ xa / len(x)))[::-1][:2]   # linear model: KFAC = EKFAC = GGN
    res = json.loads(out.read_text())
    assert res["operator"] == operator
    np.testing.assert_allclose(res["eigenvalues"], ref, rtol=1e-6)
