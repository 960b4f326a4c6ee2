"""Estimators on dense operators with known spectra: numpy's eigvalsh, trace and diagonal are the references."""

from __future__ import annotations

import numpy as np
import pytest

from tests.estimators.spectra import KINDS, matrix
from tfpartials._checks import InputError
from tfpartials.estimators import (
    exact_diagonal,
    hutchinson_diagonal,
    hutchinson_trace,
    hutchpp_trace,
    lanczos,
    power_iteration,
    spectral_density,
    top_eigenvalues,
)
from tfpartials.linalg.dense import DenseOperator


def _reference(lam: np.ndarray, which: str, k: int) -> np.ndarray:
    ev = np.sort(lam)
    if which == "largest":
        return ev[::-1][:k]
    if which == "smallest":
        return ev[:k]
    return ev[np.argsort(-np.abs(ev), kind="stable")][:k]


# -- eigenvalues --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("which", ["largest", "smallest", "magnitude"])
def test_top_eigenvalues_match_eigvalsh(kind, which):
    if kind == "fast" and which == "smallest":
        pytest.skip("the smallest eigenvalues of the geometric spectrum are ~1e-18: below float64 resolution")
    A, lam = matrix(kind)
    res = top_eigenvalues(DenseOperator(A), k=3, which=which, tol=1e-8)
    ref = _reference(np.linalg.eigvalsh(A), which, 3)
    assert res.converged
    np.testing.assert_allclose(res.eigenvalues, ref, rtol=1e-6)
    # the reported residuals are the true ones, and the vectors are orthonormal eigenvectors
    true_res = np.linalg.norm(A @ res.eigenvectors - res.eigenvectors * res.eigenvalues, axis=0)
    np.testing.assert_allclose(true_res, res.residual_norms, rtol=1e-3, atol=1e-12 * np.abs(lam).max())
    np.testing.assert_allclose(res.eigenvectors.T @ res.eigenvectors, np.eye(3), atol=1e-8)
    assert res.num_matvecs == DenseOperator(A).num_matvecs or res.num_matvecs > 0


def test_default_tolerance_gives_1e6_relative_and_counts_matvecs():
    A, lam = matrix("slow")
    op = DenseOperator(A)
    res = top_eigenvalues(op, k=3)
    np.testing.assert_allclose(res.eigenvalues, np.sort(lam)[::-1][:3], rtol=1e-6)
    assert res.num_matvecs == op.num_matvecs
    assert np.all(res.residual_norms <= 1e-6 * np.abs(res.eigenvalues))


def test_small_restart_basis_still_converges():
    A, lam = matrix("flat", n=60)
    res = top_eigenvalues(DenseOperator(A), k=2, num_basis=6, max_matvecs=5000)
    assert res.converged
    np.testing.assert_allclose(res.eigenvalues, np.sort(lam)[::-1][:2], rtol=1e-6)


def test_invariant_subspace_and_whole_space():
    # few distinct eigenvalues: the Krylov space of a random vector becomes invariant after 3 steps
    A, _ = matrix("fast", n=30)
    lam = np.array([5.0] * 10 + [2.0] * 10 + [-1.0] * 10)
    Q = np.linalg.qr(np.random.default_rng(1).standard_normal((30, 30)))[0]
    B = (Q * lam) @ Q.T
    res = top_eigenvalues(B, k=2, which="magnitude")
    np.testing.assert_allclose(res.eigenvalues, [5.0, 5.0], rtol=1e-10)
    zero = top_eigenvalues(np.zeros((8, 8)), k=3)  # breaks down at every step
    assert zero.converged and np.all(zero.eigenvalues == 0) and zero.num_matvecs <= 8
    small = top_eigenvalues(np.diag([3.0, 1.0, 2.0]), k=2, which="smallest")
    np.testing.assert_allclose(small.eigenvalues, [1.0, 2.0], rtol=1e-12)


def test_float32_operator_converges_to_its_precision():
    A, lam = matrix("slow")
    res = top_eigenvalues(DenseOperator(A.astype(np.float32)), k=3)
    assert res.converged
    np.testing.assert_allclose(res.eigenvalues, np.sort(lam)[::-1][:3], rtol=1e-5)


def test_not_converged_warns_and_says_so():
    A, _ = matrix("flat")
    with pytest.warns(RuntimeWarning, match="not converged after 5 matvecs"):
        res = top_eigenvalues(DenseOperator(A), k=2, max_matvecs=5)
    assert not res.converged and res.num_matvecs == 5


def test_power_iteration_finds_the_dominant_eigenvalue():
    A, lam = matrix("indefinite")
    seen = []
    res = power_iteration(DenseOperator(A), tol=1e-10, max_matvecs=2000, callback=lambda i, v: seen.append(i))
    assert res.converged and res.which == "magnitude"
    np.testing.assert_allclose(res.eigenvalues[0], 7.0, rtol=1e-6)
    assert seen == list(range(1, res.num_matvecs + 1))


def test_lanczos_decomposition_identities():
    A, lam = matrix("indefinite", n=40)
    dec = lanczos(A, 15, seed=3)
    Q, T = dec.basis, dec.tridiagonal()
    np.testing.assert_allclose(Q.T @ Q, np.eye(15), atol=1e-12)
    np.testing.assert_allclose(Q.T @ A @ Q, T, atol=1e-10)
    full = lanczos(A, 100, seed=3)  # clipped to n; the quadrature is then exact
    nodes, weights = full.ritz()
    assert full.num_steps == 40 and full.num_matvecs == 40
    np.testing.assert_allclose(nodes, np.sort(lam), atol=1e-9)
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-12)


# -- trace --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("estimator", [hutchinson_trace, hutchpp_trace])
def test_trace_converges_and_standard_errors_cover(kind, estimator):
    A, lam = matrix(kind)
    op = DenseOperator(A)
    true = lam.sum()
    errors = {}
    for m in (15, 60, 240):
        trials = [estimator(op, num_matvecs=m, seed=s) for s in range(20)]
        errors[m] = np.mean([abs(t.value - true) for t in trials])
        assert all(t.num_matvecs == m for t in trials)
    assert errors[240] < errors[60] < errors[15]
    assert errors[240] / abs(true) < 0.2
    trials = [estimator(op, num_matvecs=45, seed=1000 + s) for s in range(200)]
    covered = np.mean([abs(t.value - true) <= 3 * t.std_error for t in trials])
    assert covered >= 0.95


def test_hutchpp_beats_hutchinson_on_fast_decay():
    A, lam = matrix("fast")
    op = DenseOperator(A)
    for m in (30, 60, 99):
        e_h = np.mean([abs(hutchinson_trace(op, m, seed=s).value - lam.sum()) for s in range(30)])
        e_pp = np.mean([abs(hutchpp_trace(op, m, seed=s).value - lam.sum()) for s in range(30)])
        assert e_pp < 0.2 * e_h, (m, e_pp, e_h)


def test_trace_gaussian_probes_and_exact_cases():
    A, lam = matrix("slow")
    est = hutchinson_trace(A, 400, distribution="gaussian", seed=0)
    assert abs(est.value - lam.sum()) <= 4 * est.std_error
    exact = hutchpp_trace(np.diag([1.0, 2.0, 3.0, 4.0]), num_matvecs=12)  # sketch spans the whole space
    assert exact.value == pytest.approx(10.0, rel=1e-12) and exact.num_matvecs == 4 + 4 + 4
    one = hutchinson_trace(A, 1)
    assert np.isnan(one.std_error) and one.as_dict()["std_error"] is None


def test_trace_of_non_symmetric_operator():
    M = np.random.default_rng(0).standard_normal((50, 50)) + 20 * np.eye(50)
    est = hutchinson_trace(DenseOperator(M), 200, seed=1)
    assert abs(est.value - np.trace(M)) <= 4 * est.std_error


# -- diagonal -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["slow", "indefinite"])
def test_diagonal_converges_and_standard_errors_cover(kind):
    A, _ = matrix(kind)
    d = np.diag(A)
    err = {m: np.mean([np.abs(hutchinson_diagonal(A, m, seed=s).values - d).mean() for s in range(10)])
           for m in (10, 100, 1000)}
    assert err[1000] < err[100] < err[10]
    assert err[1000] < 0.25 * err[10]
    cover = np.mean([np.abs((e := hutchinson_diagonal(A, 40, seed=500 + s)).values - d) <= 3 * e.std_error
                     for s in range(50)])
    assert cover >= 0.95


def test_exact_diagonal_and_rademacher_is_exact_on_diagonal_matrices():
    A, _ = matrix("indefinite", n=70)
    op = DenseOperator(A)
    ex = exact_diagonal(op, max_memory=70 * 24 * 10)  # forces chunks of 10 columns
    np.testing.assert_allclose(ex.values, np.diag(A), rtol=1e-12, atol=1e-14)
    assert ex.num_matvecs == 70 and op.num_matvecs == 70 and np.all(ex.std_error == 0)
    est = hutchinson_diagonal(np.diag(np.arange(5.0)), 3)
    np.testing.assert_array_equal(est.values, np.arange(5.0))
    np.testing.assert_array_equal(est.std_error, 0.0)
    g = hutchinson_diagonal(A, 2000, distribution="gaussian", seed=2)
    assert np.mean(np.abs(g.values - np.diag(A)) <= 3 * g.std_error) >= 0.95


# -- spectral density ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_slq_density_integrates_to_one_and_first_moment_is_trace_over_n(kind):
    A, lam = matrix(kind)
    d = spectral_density(DenseOperator(A), num_probes=8, num_lanczos=30, seed=0)
    assert d.num_matvecs == 8 * 30 and d.ritz_values.shape == (8, 30)
    np.testing.assert_allclose(np.trapezoid(d.values, d.grid), 1.0, atol=1e-6)
    np.testing.assert_allclose(d.ritz_weights.sum(axis=1), 1.0, rtol=1e-10)
    first = np.trapezoid(d.grid * d.values, d.grid)
    per_probe = np.sum(d.ritz_weights * d.ritz_values, axis=1)  # = v^T A v for each unit probe
    np.testing.assert_allclose(first, per_probe.mean(), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(d.moment(1), per_probe.mean(), rtol=1e-12)
    se = per_probe.std(ddof=1) / np.sqrt(8)
    assert abs(first - lam.mean()) <= 4 * se + 1e-12
    # the extreme Ritz values of 30 Lanczos steps are the extreme eigenvalues
    np.testing.assert_allclose(d.ritz_values.max(), lam.max(), rtol=1e-6)


def test_slq_density_matches_the_smoothed_true_density():
    A, lam = matrix("indefinite")
    sigma = 0.3
    d = spectral_density(A, num_probes=40, num_lanczos=40, sigma=sigma, grid=np.linspace(-8, 9, 600), seed=1)
    ref = np.exp(-0.5 * ((d.grid[:, None] - lam[None]) / sigma) ** 2).sum(1) / (np.sqrt(2 * np.pi) * sigma * lam.size)
    assert np.trapezoid(np.abs(d.values - ref), d.grid) < 0.1
    full = spectral_density(A, num_probes=1, num_lanczos=500, grid=200, seed=0)  # m = n: exact nodes
    np.testing.assert_allclose(np.sort(full.ritz_values[0]), np.sort(lam), atol=1e-8)
    assert full.grid.shape == (200,) and full.num_matvecs == lam.size


def test_slq_second_moment_and_options():
    A, lam = matrix("slow")
    d = spectral_density(A, num_probes=30, num_lanczos=10, seed=4, distribution="gaussian", return_nodes=True)
    assert abs(d.moment(2) - np.mean(lam**2)) < 0.1 * np.mean(lam**2)
    bare = spectral_density(A, num_probes=2, num_lanczos=5, return_nodes=False)
    assert bare.ritz_values is None and bare.ritz_weights is None
    with pytest.raises(InputError, match="needs the Ritz nodes"):
        bare.moment(1)
    assert set(bare.as_dict()) == {"grid", "values"}
    flat = spectral_density(np.eye(6) * 2.0, num_probes=2, num_lanczos=4)  # one eigenvalue: breakdown at step 1
    assert flat.num_matvecs == 2 and flat.ritz_weights[:, 1:].sum() == 0
    np.testing.assert_allclose(np.trapezoid(flat.values, flat.grid), 1.0, atol=1e-6)


# -- seeds ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("run", [
    lambda A, s: hutchinson_trace(A, 20, seed=s).value,
    lambda A, s: hutchpp_trace(A, 21, seed=s).value,
    lambda A, s: hutchinson_diagonal(A, 20, seed=s).values,
    lambda A, s: spectral_density(A, 3, 8, seed=s).ritz_values,
    lambda A, s: top_eigenvalues(A, k=2, max_matvecs=4, seed=s).eigenvectors,
    lambda A, s: power_iteration(A, max_matvecs=3, seed=s).eigenvectors,
])
def test_same_seed_same_numbers_different_seed_different_probes(run):
    A, _ = matrix("slow", n=50)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        a, b, c = run(A, 7), run(A, 7), run(A, 8)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


# -- validation -----------------------------------------------------------------------------------------------
def test_validation_errors():
    A, _ = matrix("slow", n=10)
    non_sym = DenseOperator(np.triu(np.ones((10, 10))))
    with pytest.raises(InputError, match=r"k: expected 1 <= k < n = 10"):
        top_eigenvalues(A, k=10)
    with pytest.raises(InputError, match="k: expected a positive integer, got 0"):
        top_eigenvalues(A, k=0)
    with pytest.raises(TypeError, match="k: expected a positive integer"):
        top_eigenvalues(A, k=1.5)
    with pytest.raises(InputError, match="which: expected one of"):
        top_eigenvalues(A, which="biggest")
    with pytest.raises(InputError, match="tol: expected a finite number > 0"):
        top_eigenvalues(A, tol=-1.0)
    with pytest.raises(InputError, match="num_basis: expected k < num_basis <= n"):
        top_eigenvalues(A, k=3, num_basis=3)
    with pytest.raises(InputError, match="Lanczos .* needs a symmetric operator"):
        top_eigenvalues(non_sym)
    with pytest.raises(InputError, match="power iteration needs a symmetric operator"):
        power_iteration(non_sym)
    with pytest.raises(InputError, match="stochastic Lanczos quadrature needs a symmetric operator"):
        spectral_density(non_sym)
    with pytest.raises(InputError, match="num_matvecs: expected a positive integer, got 0"):
        hutchinson_trace(A, 0)
    with pytest.raises(InputError, match="Hutch\\+\\+ needs at least 3 matvecs"):
        hutchpp_trace(A, 2)
    with pytest.raises(InputError, match="distribution: expected one of 'rademacher', 'gaussian'"):
        hutchinson_diagonal(A, 3, distribution="uniform")
    with pytest.raises(InputError, match="seed: expected a non-negative integer"):
        hutchinson_trace(A, 3, seed=-1)
    with pytest.raises(InputError, match="grid: expected an increasing 1-D array"):
        spectral_density(A, grid=np.array([1.0, 0.0]))
    with pytest.raises(InputError, match="grid: expected at least 2 points"):
        spectral_density(A, grid=1)
    with pytest.raises(InputError, match="sigma: expected a finite number > 0"):
        spectral_density(A, sigma=0.0)
    with pytest.raises(InputError, match="v0: expected a finite, non-zero start vector"):
        lanczos(A, 3, v0=np.zeros(10))
    with pytest.raises(InputError, match=r"v0: expected a vector of shape \(10,\)"):
        lanczos(A, 3, v0=np.ones(3))
    with pytest.raises(TypeError, match="op: expected a tfpartials LinearOperator or a square matrix"):
        hutchinson_trace("not an operator", 3)
    with pytest.raises(InputError, match="expected a square matrix"):
        hutchinson_trace(np.ones((3, 4)), 3)
    with pytest.raises(InputError, match="eigenvector_dict needs an operator with a parameter space"):
        top_eigenvalues(A, k=1).eigenvector_dict(0)
    with pytest.raises(InputError, match=r"i: expected an eigenvector index in \[0, 1\)"):
        top_eigenvalues(A, k=1).eigenvector_dict(3)
    with pytest.raises(InputError, match="as_dict needs an operator with a parameter space"):
        exact_diagonal(A).as_dict()


def test_operator_returning_nan_is_reported():
    A = np.full((4, 4), np.nan)
    with pytest.raises(FloatingPointError, match="the operator returned NaN or Inf"):
        hutchinson_trace(DenseOperator(A, symmetric=True), 3)


class _Recorder:
    def __init__(self):
        self.bars = []

    def __call__(self, description, total, *, quiet=False, unit="batches", min_total=4):
        from contextlib import contextmanager

        rec = {"description": description, "total": total, "unit": unit, "advanced": 0, "quiet": quiet}
        self.bars.append(rec)

        class _Bar:
            def advance(self, k=1):
                rec["advanced"] += k

        @contextmanager
        def cm():
            yield _Bar()

        return cm()


@pytest.mark.parametrize("module,call,expected", [
    ("trace", lambda A: hutchpp_trace(A, 30), 30),
    ("trace", lambda A: hutchinson_trace(A, 70), 70),
    ("diagonal", lambda A: hutchinson_diagonal(A, 40), 40),
    ("density", lambda A: spectral_density(A, num_probes=3, num_lanczos=10), 30),
    ("eigenvalues", lambda A: top_eigenvalues(A, k=2), None),
])
def test_progress_bar_counts_matvecs(monkeypatch, module, call, expected):
    import importlib

    rec = _Recorder()
    monkeypatch.setattr(importlib.import_module(f"tfpartials.estimators.{module}"), "progress", rec)
    A, _ = matrix("slow", n=40)
    op = DenseOperator(A)
    call(op)
    (bar,) = rec.bars
    assert bar["unit"] == "matvecs"
    assert bar["advanced"] == op.num_matvecs
    if expected is not None:
        assert bar["total"] == expected == op.num_matvecs
