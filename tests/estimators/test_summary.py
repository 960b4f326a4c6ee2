"""summarize_curvature: the exact route against a float64 nested-tape Hessian, the matrix-free route within its
errors, and the same numbers in `tfpartials spectrum`'s JSON and the report's curvature section."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests import models as M
from tests import references as R


@pytest.fixture(scope="module")
def case():
    """A 26-parameter regression MLP, its float64 Hessian operator and the nested-tape Hessian (reference)."""
    from tfpartials.linalg.curvature import HessianOperator

    model, x, y = M.regression_mlp(n=24)
    H = R.nested_tape_hessian(model, x, y, R.keras_mean_loss("mse"))
    op = HessianOperator(model, (x, y), loss="mse", precision="float64")
    return model, x, y, op, H


def test_exact_route_is_numpy_eigvalsh_of_the_dense_hessian(case):
    from tfpartials.estimators import summarize_curvature

    *_, op, H = case
    n = H.shape[0]
    s = summarize_curvature(op, top_k=3, trace=True, trace_method="layerwise", diagonal=True, density=True,
                            num_matvecs=n, density_steps=10, seed=5, quiet=True)
    assert s.exact and s.trace_method == "dense" and s.num_matvecs == n  # n unit vectors, nothing more
    j = s.to_json()
    lam = np.linalg.eigvalsh(H)
    np.testing.assert_allclose(j["eigenvalues"], lam[::-1][:3], rtol=1e-9, atol=1e-12)
    assert j["eigen"]["residual_norms"] == [0.0] * 3 and j["eigen"]["converged"]
    assert j["trace"]["value"] == pytest.approx(np.trace(H), rel=1e-10) and j["trace"]["std_error"] == 0.0
    layers = {e["layer"]: e["trace"] for e in j["layer_traces"]}
    assert layers["h1"] == pytest.approx(np.trace(H[:20, :20]), rel=1e-10)
    assert layers["out"] == pytest.approx(np.trace(H[20:, 20:]), rel=1e-10)
    np.testing.assert_allclose(np.concatenate([np.ravel(v) for v in j["diagonal"]["values"].values()]),
                               np.diag(H), rtol=1e-9, atol=1e-12)
    # the density's Gauss rule: its mean is v^T H v per unit probe, so its first moment is near tr(H) / n
    assert abs(np.trapezoid(j["density"]["values"], j["density"]["grid"]) - 1) < 1e-6
    smallest = summarize_curvature(op, top_k=2, which="smallest", num_matvecs=n, quiet=True).to_json()
    np.testing.assert_allclose(smallest["eigenvalues"], lam[:2][::-1], rtol=1e-9, atol=1e-12)
    # more eigenvalues than a Krylov solver gives: dense whatever the limit
    every = summarize_curvature(op, top_k=n, exact_limit=0, quiet=True)
    assert every.exact and np.allclose(every.to_json()["eigenvalues"], lam[::-1], rtol=1e-9, atol=1e-12)


def test_matrix_free_route_within_its_errors(case):
    from tfpartials.estimators import summarize_curvature

    *_, op, H = case
    s = summarize_curvature(op, top_k=2, tol=1e-8, trace=True, num_matvecs=12, diagonal=True, seed=1, quiet=True)
    assert not s.exact  # 26 parameters > 12 products
    j = s.to_json()
    np.testing.assert_allclose(j["eigenvalues"], np.linalg.eigvalsh(H)[::-1][:2], rtol=1e-6)
    assert j["trace"]["method"] == "hutchpp" and j["trace"]["num_matvecs"] == 12
    assert abs(j["trace"]["value"] - np.trace(H)) <= 4 * j["trace"]["std_error"] + 1e-9
    with pytest.warns(RuntimeWarning, match="not converged after 4 matvecs"):
        capped = summarize_curvature(op, top_k=1, num_matvecs=99, max_matvecs=4, quiet=True)
    assert not capped.exact  # an eigenvalue budget below n keeps the matrix-free route


def test_bad_arguments_raise():
    from tfpartials._checks import InputError
    from tfpartials.estimators import summarize_curvature

    A = np.diag([3.0, 2.0, 1.0])
    with pytest.raises(InputError, match="nothing to compute"):
        summarize_curvature(A, top_k=0)
    with pytest.raises(InputError, match="trace_method: expected one of"):
        summarize_curvature(A, trace=True, trace_method="exact")
    with pytest.raises(InputError, match="needs a symmetric operator"):
        summarize_curvature(np.array([[1.0, 2.0], [0.0, 1.0]]), top_k=1)


@pytest.mark.parametrize("num_matvecs", [30, 9], ids=["exact", "matrix-free"])
def test_spectrum_json_and_report_section_hold_the_same_numbers(case, tmp_path, num_matvecs):
    from tfpartials.cli.main import main
    from tfpartials.reports.run import build_report

    model, x, y, _, _ = case
    k, probes, steps = 2, 2, 10
    res = build_report(model, (x, y), "mse", None, quiet=True, seed=0, top_k=k, num_matvecs=num_matvecs,
                       probe_examples=24, batch_size=32, density_probes=probes, density_steps=steps,
                       precision="float64", skip=["per-example", "attributions", "uncertainty", "influence",
                                                  "sensitivity", "check"])
    sec = res["sections"]["curvature"]
    assert sec["status"] == "ok", sec["reason"]
    assert not sec["reduced"]
    r = sec["results"]
    model.compile(loss="mse")
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", x=x, y=y)
    out = tmp_path / "s.json"
    eig_cap = max(k + 20, 4 * (k + 10))  # the report's Lanczos budget when nothing is cut
    assert main([str(a) for a in [
        "spectrum", tmp_path / "m.keras", "--data", tmp_path / "d.npz", "--precision", "float64",
        "--batch-size", 32, "--top-k", k, "--tol", 1e-3, "--max-matvecs", eig_cap, "--trace",
        "--num-matvecs", num_matvecs, "--density", "--num-probes", probes, "--num-lanczos", steps,
        "--seed", r["seed"], "--out", out, "--quiet"]]) == 0
    c = json.loads(out.read_text())
    assert c["exact"] is r["exact"] is (num_matvecs == 30)
    np.testing.assert_allclose(c["eigenvalues"], r["eigenvalues"], rtol=1e-9)
    np.testing.assert_allclose(c["eigen"]["residual_norms"], r["eigen_residual_norms"], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(c["density"]["grid"], r["density"]["grid"], rtol=1e-9)
    np.testing.assert_allclose(c["density"]["values"], r["density"]["values"], rtol=1e-7, atol=1e-12)
    assert c["density"]["num_lanczos"] == r["density"]["lanczos_steps"] == steps
    if r["exact"]:
        assert c["trace"]["value"] == pytest.approx(r["trace"]["value"], rel=1e-10)
        assert c["trace"]["std_error"] == r["trace"]["std_error"] == 0.0
    else:  # the report's trace is layerwise Hutchinson, the command's Hutch++: equal within their errors
        assert abs(c["trace"]["value"] - r["trace"]["value"]) <= 4 * (c["trace"]["std_error"]
                                                                     + r["trace"]["std_error"])
