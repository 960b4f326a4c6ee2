"""`tfpartials spectrum` end to end: JSON keys per DESIGN.md, the plot, and exit 2 on bad flags."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests import models as M
from tests.estimators.spectra import dense_hessian


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("spectrum")
    model, x, y = M.mlp(n=24)
    model.compile(loss="sparse_categorical_crossentropy")
    model.save(d / "m.keras")
    np.savez(d / "d.npz", x=x, y=y)
    H = dense_hessian(model, x, y)
    return d, H


def _main(argv):
    from tfpartials.cli.main import main

    return main([str(a) for a in argv])


def test_spectrum_writes_json_and_plot(files, tmp_path):
    d, H = files
    out, png = tmp_path / "s.json", tmp_path / "density.png"
    code = _main(["spectrum", d / "m.keras", "--data", d / "d.npz", "--from-logits", "--precision", "float64",
                  "--top-k", "3", "--trace", "--diagonal", "--density", "--num-matvecs", "30", "--num-lanczos", "20",
                  "--per-layer", "--seed", "1", "--out", out, "--plot", png, "--quiet"])
    assert code == 0
    res = json.loads(out.read_text())
    assert {"eigenvalues", "trace", "density", "diagonal", "per_layer", "num_matvecs"} <= set(res)
    lam = np.linalg.eigvalsh(H)
    assert res["eigenvalues"] == sorted(res["eigenvalues"], reverse=True)
    np.testing.assert_allclose(res["eigenvalues"], lam[::-1][:3], rtol=1e-4)
    assert set(res["trace"]) >= {"value", "std_error", "num_matvecs"} and res["trace"]["num_matvecs"] == 30
    assert abs(res["trace"]["value"] - np.trace(H)) <= 4 * res["trace"]["std_error"] + 1e-9
    assert set(res["density"]) >= {"grid", "values"}
    grid, values = np.array(res["density"]["grid"]), np.array(res["density"]["values"])
    np.testing.assert_allclose(np.trapezoid(values, grid), 1.0, atol=1e-6)
    assert list(res["diagonal"]["values"]) == ["h1/kernel", "h1/bias", "h2/kernel", "h2/bias", "logits/kernel",
                                               "logits/bias"]
    assert np.array(res["diagonal"]["values"]["h1/kernel"]).shape == (5, 6)
    assert list(res["per_layer"]) == ["h1", "h2", "logits"]
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_default_is_top_eigenvalues_and_wrt_selects_a_block(files, tmp_path, capsys):
    d, H = files
    out = tmp_path / "s.json"
    code = _main(["spectrum", d / "m.keras", "--data", d / "d.npz", "--from-logits", "--precision", "float64",
                  "--wrt", "logits/*", "--operator", "hessian", "--out", out])
    assert code == 0
    res = json.loads(out.read_text())
    assert len(res["eigenvalues"]) == 3 and "trace" not in res and "density" not in res
    n = H.shape[0]
    block = H[n - 21:, n - 21:]  # logits/kernel (6, 3) and logits/bias (3,) come last
    np.testing.assert_allclose(res["eigenvalues"], np.linalg.eigvalsh(block)[::-1][:3], rtol=1e-4)
    assert "eigenvalue 1" in capsys.readouterr().out


@pytest.mark.parametrize("args,match", [
    (["--top-k", "-1"], "--top-k: expected a non-negative integer"),
    (["--top-k", "0"], "nothing to compute"),
    (["--trace", "--num-matvecs", "2"], "Hutch\\+\\+ needs at least 3"),
    (["--num-matvecs", "0"], "--num-matvecs: expected a positive integer"),
    (["--density", "--num-probes", "0"], "--num-probes: expected a positive integer"),
    (["--seed", "-3"], "--seed: expected a non-negative integer"),
    (["--plot", "d.pdf"], "--plot: expected a .png file name"),
    (["--tol", "0"], "--tol: expected a number > 0"),
    (["--max-matvecs", "0"], "--max-matvecs: expected a positive integer"),
    (["--operator", "jacobian"], "invalid choice: 'jacobian'"),
    (["--top-k", "two"], "invalid int value: 'two'"),
    (["--wrt", "nope/*"], "wrt: no trainable variable matches 'nope/\\*'"),
])
def test_bad_flags_exit_2_with_one_line(files, tmp_path, capsys, args, match):
    d, _ = files
    out = tmp_path / "s.json"
    try:
        code = _main(["spectrum", d / "m.keras", "--data", d / "d.npz", "--from-logits", *args, "--out", out])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    import re

    assert re.search(match, err), err
    assert not out.exists()


def test_existing_output_is_refused_before_work(files, tmp_path, capsys):
    d, _ = files
    out = tmp_path / "s.json"
    out.write_text("{}")
    assert _main(["spectrum", d / "m.keras", "--data", d / "d.npz", "--out", out]) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_text() == "{}"


def test_not_converged_is_a_one_line_note_and_recorded(files, tmp_path, capsys):
    d, _ = files
    out = tmp_path / "s.json"
    assert _main(["spectrum", d / "m.keras", "--data", d / "d.npz", "--from-logits", "--max-matvecs", "2",
                  "--top-k", "2", "--out", out, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did not reach --tol" in err
    res = json.loads(out.read_text())
    assert res["eigen"]["converged"] is False and res["eigen"]["num_matvecs"] == 2
