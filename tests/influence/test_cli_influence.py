"""``tfpartials influence``: scores equal the numpy closed form; bad input exits 2 with one line and no file."""

from __future__ import annotations

import numpy as np
import pytest

from tests.influence.problems import ridge_fit, ridge_problem


@pytest.fixture(scope="module")
def saved(save_case):
    model, x, y, xt, yt, c = ridge_problem()
    root = save_case("ridge", model, "mse", x=x, y=y)
    np.savez(root / "test.npz", x=xt, y=yt)
    n, d = x.shape
    A, At = np.hstack([x, np.ones((n, 1))]), np.hstack([xt, np.ones((len(xt), 1))])
    theta = ridge_fit(x, y, c)
    g, gt = 2 * (A @ theta - y) * A, 2 * (At @ theta - yt) * At
    Hd = 2 * A.T @ A / n + 2 * c * np.diag([1.0] * d + [0.0]) + 0.01 * np.eye(d + 1)
    closed = gt @ np.linalg.solve(Hd, g.T) / n
    self_closed = np.sum(g * np.linalg.solve(Hd, g.T).T, axis=1) / n
    return root, closed, self_closed


def test_influence_scores_and_top_k(saved, cli, tmp_path):
    root, closed, _ = saved
    out = tmp_path / "inf.npz"
    code, stdout, err = cli("influence", root / "ridge.keras", "--train", root / "ridge.npz", "--test",
                    root / "test.npz", "--method", "cg", "--damping", "0.01", "--top-k", "3", "--out", out)
    assert code == 0, err
    assert "helpful" in stdout
    with np.load(out, allow_pickle=False) as z:
        np.testing.assert_allclose(z["scores"], closed, rtol=1e-5, atol=1e-9)
        assert z["top_helpful"].tolist() == np.argsort(-closed, axis=1)[:, :3].tolist()
        assert z["top_harmful"].tolist() == np.argsort(closed, axis=1)[:, :3].tolist()
        assert "positive = i helped" in str(z["definition"]) and str(z["method"]) == "cg"


def test_self_influence(saved, cli, tmp_path):
    root, _, self_closed = saved
    out = tmp_path / "self.npz"
    code, _, err = cli("influence", root / "ridge.keras", "--train", root / "ridge.npz", "--self",
               "--damping", "0.01", "--top-k", "4", "--out", out, "--quiet")
    assert code == 0, err
    with np.load(out, allow_pickle=False) as z:
        np.testing.assert_allclose(z["self_influence"], self_closed, rtol=1e-6, atol=1e-10)
        assert z["top"].tolist() == np.argsort(-self_closed)[:4].tolist()


@pytest.mark.parametrize("extra,message", [
    ([], "--test is required"),
    (["--self", "--test", "TEST"], "do not pass --test"),
    (["--test", "TEST", "--top-k", "0"], "--top-k: expected a positive integer"),
    (["--test", "TEST", "--damping", "-1"], "--damping: expected a finite number >= 0"),
    (["--test", "TEST", "--out", "x.json"], "--out: expected a .npz"),
    (["--test", "TEST", "--method", "newton"], "invalid choice"),
    (["--test", "TEST", "--method", "arnoldi", "--rank", "50"], "rank: expected 1 <= rank < 9"),
    (["--test", "MISSING"], "missing.npz"),
])
def test_bad_input_exits_2_without_output(saved, cli, tmp_path, extra, message):
    root, _, _ = saved
    extra = [str(root / "test.npz") if a == "TEST" else str(tmp_path / "missing.npz") if a == "MISSING" else a
             for a in extra]
    if "--out" not in extra:
        extra += ["--out", str(tmp_path / "inf.npz")]
    code, _, err = cli("influence", root / "ridge.keras", "--train", root / "ridge.npz", "--quiet", *extra)
    assert code == 2
    assert err.startswith("tfpartials: error:") and err.count("\n") == 1 and message in err
    assert list(tmp_path.iterdir()) == []
