"""top_eigenvalues at a loose tolerance honours it (against numpy's eigvalsh of the dense matrix), and its
one-thread BLAS limit for the host arithmetic is scoped: in force only there, restored after the call and
after an exception."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from tests import models as M
from tests.estimators.spectra import KINDS, dense_hessian, matrix
from tfpartials.estimators._probes import HostThreads
from tfpartials.estimators.eigenvalues import power_iteration, top_eigenvalues
from tfpartials.linalg.operator import LinearOperator

threadpoolctl = pytest.importorskip("threadpoolctl")
E = importlib.import_module("tfpartials.estimators.eigenvalues")
L = importlib.import_module("tfpartials.estimators.lanczos")  # the package's ``lanczos`` is the function
TOL = 1e-3
_ORTHOGONALIZE = L.orthogonalize  # the real one (the tests below wrap it)


def _reference(lam: np.ndarray, which: str, k: int) -> np.ndarray:
    if which == "largest":
        return np.sort(lam)[::-1][:k]
    if which == "smallest":
        return np.sort(lam)[:k]
    return lam[np.argsort(-np.abs(lam), kind="stable")][:k]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("which", ["largest", "smallest", "magnitude"])
def test_tol_1e3_is_honoured_on_known_spectra(kind, which):
    if (kind, which) == ("fast", "smallest"):
        pytest.skip("eigenvalues ~1e-18 of a norm-10 matrix: below the round-off floor, no relative accuracy")
    A, _ = matrix(kind)
    lam = np.linalg.eigvalsh(A)  # the dense matrix's spectrum: independent of the solver
    res = top_eigenvalues(A, k=3, which=which, tol=TOL, seed=1, quiet=True)
    assert res.converged
    ref = _reference(lam, which, 3)
    np.testing.assert_array_less(np.abs(res.eigenvalues - ref), TOL * np.abs(ref))
    # each residual bounds the distance to the spectrum (symmetric A)
    dist = np.min(np.abs(res.eigenvalues[:, None] - lam[None, :]), axis=1)
    np.testing.assert_array_less(dist, res.residual_norms * (1 + 1e-6) + 1e-12)


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_tol_1e3_on_a_float64_keras_hessian(which):
    from tfpartials.linalg.curvature import HessianOperator

    model, x, y = M.mlp(hidden=8)
    lam = np.linalg.eigvalsh(dense_hessian(model, x, y))  # nested tapes on a float64 clone
    op = HessianOperator(model, (x, y), loss="sparse_categorical_crossentropy", from_logits=True,
                         precision="float64")
    res = top_eigenvalues(op, k=3, which=which, tol=TOL, seed=0, quiet=True)
    assert res.converged
    ref = _reference(lam, which, 3)
    np.testing.assert_array_less(np.abs(res.eigenvalues - ref), TOL * np.abs(ref))


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]


class _Recording(LinearOperator):
    """A dense symmetric operator that records the BLAS thread counts in force during its products."""

    def __init__(self, A):
        super().__init__(A.shape[0], "float64", symmetric=True)
        self.A, self.seen = A, []

    def _matmat(self, V):
        self.seen.append(_blas_threads())
        return self.A @ V.numpy()


@pytest.fixture
def two_blas_threads():
    """Two BLAS threads for the test's duration (so there is a limit to apply), restored afterwards."""
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        if not before:
            pytest.skip("no BLAS library found by threadpoolctl")
        yield before


def test_host_threads_block_limits_and_restores(two_blas_threads):
    host = HostThreads(100)
    with host():
        assert _blas_threads() == [1] * len(two_blas_threads)
    assert _blas_threads() == two_blas_threads
    with pytest.raises(ZeroDivisionError), host():
        1 / 0  # noqa: B018
    assert _blas_threads() == two_blas_threads
    with HostThreads(10**7)():  # large operators: no limit
        assert _blas_threads() == two_blas_threads


def test_blocks_overlapping_across_threads_restore_the_first_counts(two_blas_threads):
    a, b = HostThreads(100)(), HostThreads(50)()
    a.__enter__()
    b.__enter__()  # e.g. a second thread's solver
    a.__exit__(None, None, None)  # the first leaves while the second still computes: still one thread
    assert _blas_threads() == [1] * len(two_blas_threads)
    b.__exit__(None, None, None)
    assert _blas_threads() == two_blas_threads


@pytest.mark.parametrize("solver", ["top_eigenvalues", "lanczos", "power_iteration"])
def test_solvers_limit_only_their_host_arithmetic(two_blas_threads, monkeypatch, solver):
    A, lam = matrix("indefinite")
    op = _Recording(A)
    in_host = []
    module = L if solver == "lanczos" else E

    def recording_orthogonalize(Q, w):
        in_host.append(_blas_threads())
        return _ORTHOGONALIZE(Q, w)

    monkeypatch.setattr(module, "orthogonalize", recording_orthogonalize, raising=False)
    if solver == "top_eigenvalues":
        res = top_eigenvalues(op, k=2, tol=1e-8, quiet=True)
        np.testing.assert_allclose(res.eigenvalues, [7.0, 4.5], rtol=1e-7)
    elif solver == "lanczos":
        L.lanczos(op, 10, quiet=True)
    else:
        power_iteration(op, tol=1e-10, max_matvecs=30, quiet=True)
    assert _blas_threads() == two_blas_threads  # restored after the call
    assert op.seen and all(s == two_blas_threads for s in op.seen)  # the products ran unlimited
    if solver != "power_iteration":
        assert in_host and all(s == [1] * len(two_blas_threads) for s in in_host)


def test_thread_limit_restored_after_an_exception(two_blas_threads, monkeypatch):
    A, _ = matrix("fast")
    calls = []

    def failing_orthogonalize(Q, w):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom in the host arithmetic")
        return _ORTHOGONALIZE(Q, w)

    monkeypatch.setattr(E, "orthogonalize", failing_orthogonalize)
    with pytest.raises(RuntimeError, match="boom in the host arithmetic"):
        top_eigenvalues(A, k=2, quiet=True)
    assert _blas_threads() == two_blas_threads

    class Failing(_Recording):
        def _matmat(self, V):
            if len(self.seen) == 4:
                raise ValueError("boom in the product")
            return super()._matmat(V)

    with pytest.raises(ValueError, match="boom in the product"):
        top_eigenvalues(Failing(A), k=2, quiet=True)
    assert _blas_threads() == two_blas_threads
