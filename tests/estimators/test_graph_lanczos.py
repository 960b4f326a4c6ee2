"""top_eigenvalues(compiled=True): the Lanczos steps in one compiled loop give the host loop's results (to
round-off) and the dense Hessian's eigenvalues (numpy eigvalsh of nested float64 tapes), through restarts;
operators without graph products keep the host loop."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from tests import models as M
from tests.estimators.spectra import dense_hessian, matrix
from tfpartials.estimators.eigenvalues import top_eigenvalues
from tfpartials.linalg.curvature import HessianOperator

G = importlib.import_module("tfpartials.estimators._graph_lanczos")
KW = {"loss": "sparse_categorical_crossentropy", "from_logits": True, "precision": "float64"}


@pytest.fixture(scope="module")
def problem():
    model, x, y = M.mlp(hidden=8)
    lam = np.linalg.eigvalsh(dense_hessian(model, x, y))  # nested tapes on a float64 clone
    return model, x, y, lam


@pytest.fixture
def graph_calls(monkeypatch):
    calls = []
    run = G.GraphSteps.run

    def spy(self, *args):
        out = run(self, *args)
        calls.append(out[3])  # matvecs used so far
        return out

    monkeypatch.setattr(G.GraphSteps, "run", spy)
    return calls


@pytest.mark.parametrize("which,num_basis", [("largest", None), ("smallest", None), ("magnitude", 6)])
def test_compiled_steps_match_the_host_loop_and_the_dense_hessian(problem, graph_calls, which, num_basis):
    model, x, y, lam = problem
    results = {}
    for compiled in (False, True):
        op = HessianOperator(model, (x, y), batch_size=len(x), **KW)  # one batch: graph products
        res = top_eigenvalues(op, k=3, which=which, tol=1e-8, num_basis=num_basis, seed=3, quiet=True,
                              compiled=compiled)
        assert res.converged and op.num_matvecs == res.num_matvecs
        results[compiled] = res
    assert graph_calls, "the compiled steps were not used"
    if num_basis is not None:
        assert len(graph_calls) > 2  # several restarts, each ending a compiled call
    host, comp = results[False], results[True]
    assert abs(comp.num_matvecs - host.num_matvecs) <= 1  # same algorithm (a tie at the tolerance may differ)
    np.testing.assert_allclose(comp.eigenvalues, host.eigenvalues, rtol=1e-10)
    order = {"largest": np.argsort(-lam), "smallest": np.argsort(lam), "magnitude": np.argsort(-np.abs(lam))}
    ref = lam[order[which]][:3]
    np.testing.assert_allclose(comp.eigenvalues, ref, rtol=1e-7)
    # eigenvectors: unit, and their residuals against the dense Hessian are the reported bounds' size
    H = dense_hessian(model, x, y)
    Y = comp.eigenvectors
    np.testing.assert_allclose(np.linalg.norm(Y, axis=0), 1.0, rtol=1e-10)
    resid = np.linalg.norm(H @ Y - Y * comp.eigenvalues, axis=0)
    assert np.all(resid <= 1e-8 * np.abs(comp.eigenvalues) + 1e-10)


def test_compiled_at_tol_1e3_is_within_1e3_of_eigvalsh(problem, graph_calls):
    model, x, y, lam = problem
    op = HessianOperator(model, (x, y), batch_size=len(x), **KW)
    res = top_eigenvalues(op, k=3, tol=1e-3, quiet=True, compiled=True)
    assert graph_calls and res.converged
    ref = np.sort(lam)[::-1][:3]
    np.testing.assert_array_less(np.abs(res.eigenvalues - ref), 1e-3 * np.abs(ref))


def test_another_batch_shape_on_the_same_model(problem, graph_calls):
    model, x, y, _ = problem
    for count in (len(x), 17):  # one compiled loop per product: the second is traced for 17 examples
        xs, ys = x[:count], y[:count]
        lam = np.linalg.eigvalsh(dense_hessian(model, xs, ys))
        op = HessianOperator(model, (xs, ys), batch_size=count, **KW)
        res = top_eigenvalues(op, k=2, tol=1e-8, quiet=True, compiled=True)
        np.testing.assert_allclose(res.eigenvalues, np.sort(lam)[::-1][:2], rtol=1e-7)
    assert graph_calls


def test_operators_without_graph_products_keep_the_host_loop(problem, graph_calls):
    model, x, y, lam = problem
    op = HessianOperator(model, (x, y), batch_size=8, **KW)  # several batches: host work per product
    assert op._traceable_product() is None
    res = top_eigenvalues(op, k=2, tol=1e-8, quiet=True, compiled=True)
    np.testing.assert_allclose(res.eigenvalues, np.sort(lam)[::-1][:2], rtol=1e-7)
    A, spec = matrix("indefinite")
    res = top_eigenvalues(A, k=2, tol=1e-10, quiet=True, compiled=True)  # a DenseOperator
    np.testing.assert_allclose(res.eigenvalues, [7.0, 4.5], rtol=1e-9)
    assert not graph_calls


def test_compiled_must_be_a_bool():
    with pytest.raises(TypeError, match="compiled: expected True or False"):
        top_eigenvalues(np.diag([3.0, 2.0, 1.0]), k=1, compiled="yes")
