"""Per-layer traces and the diagonal from shared probes, against the dense nested-tape Hessian in float64."""

from __future__ import annotations

import numpy as np
import pytest

from tests import models as M
from tests.estimators.spectra import dense_hessian
from tfpartials import InputError
from tfpartials.estimators import layerwise_trace, top_eigenvalues


@pytest.fixture(scope="module")
def mlp_case():
    from tfpartials.linalg.curvature import HessianOperator

    model, x, y = M.mlp(hidden=8)
    H = dense_hessian(model, x, y)  # nested tapes on a float64 clone: independent of the operator
    op = HessianOperator(model, (x, y), loss="sparse_categorical_crossentropy", from_logits=True,
                         precision="float64")
    space = op.space
    layers: dict[str, list[int]] = {}
    for name, start, stop in zip(space.names, space.offsets[:-1], space.offsets[1:]):
        layers.setdefault(name.rsplit("/", 1)[0], []).extend(range(start, stop))
    exact = {layer: float(np.trace(H[np.ix_(idx, idx)])) for layer, idx in layers.items()}
    return op, H, exact


def _coverage(results, exact, total):
    hits, count = 0, 0
    for est in results:
        for b in est.blocks:
            hits += abs(b.value - exact[b.name]) <= 3 * b.std_error
            count += 1
        hits += abs(est.value - total) <= 3 * est.std_error
        count += 1
    return hits / count


def test_per_layer_traces_from_shared_probes_cover_the_exact_blocks(mlp_case):
    op, H, exact = mlp_case
    total = float(np.trace(H))
    # on the model's own Hessian operator: 40 seeded runs of 32 probes each, every block from the same products
    runs = [layerwise_trace(op, rel_tol=1e-9, max_matvecs=32, block_size=32, seed=s, quiet=True) for s in range(40)]
    assert all(r.num_matvecs == 32 and r.stopped == "matvecs" for r in runs)
    assert {b.name for b in runs[0].blocks} == set(exact)
    assert _coverage(runs, exact, total) >= 0.95
    # per-layer estimates sum to the whole-model one (same samples, a partition of the coordinates)
    np.testing.assert_allclose(sum(b.value for b in runs[0].blocks), runs[0].value, rtol=1e-10)
    # more trials on the dense matrix (same estimator, fast): coverage of the 3-sigma interval
    dense_blocks = {name: np.asarray(idx) for name, idx in _layer_indices(op).items()}
    runs = [layerwise_trace(H, dense_blocks, rel_tol=1e-9, max_matvecs=24, seed=s, quiet=True) for s in range(300)]
    assert _coverage(runs, exact, total) >= 0.95


def _layer_indices(op):
    out: dict[str, list[int]] = {}
    for name, start, stop in zip(op.space.names, op.space.offsets[:-1], op.space.offsets[1:]):
        out.setdefault(name.rsplit("/", 1)[0], []).extend(range(start, stop))
    return out


def test_diagonal_from_the_same_probes_matches_the_dense_diagonal(mlp_case):
    op, H, _ = mlp_case
    est = layerwise_trace(op, rel_tol=1e-9, max_matvecs=128, block_size=32, seed=1, quiet=True)
    d = np.diag(H)
    within = np.abs(est.diagonal - d) <= 3 * est.diagonal_std_error + 1e-12
    assert within.mean() >= 0.95
    assert set(est.diagonal_dict()) == set(op.space.names)


def test_stops_at_the_requested_relative_error_and_says_why():
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((60, 60)))
    A = (Q * np.linspace(1.0, 3.0, 60)) @ Q.T   # PSD, not diagonal: every sample is noisy
    est = layerwise_trace(A, rel_tol=0.02, max_matvecs=2000, seed=0, quiet=True)
    assert est.stopped == "tolerance" and est.std_error <= 0.02 * abs(est.value)
    assert est.num_matvecs < 2000 and abs(est.value - np.trace(A)) <= 4 * est.std_error
    short = layerwise_trace(A, rel_tol=1e-6, max_matvecs=16, seed=0, quiet=True)
    assert short.stopped == "matvecs" and short.num_matvecs == 16
    timed = layerwise_trace(A, rel_tol=1e-6, max_matvecs=2000, time_budget=1e-9, block_size=4, seed=0, quiet=True)
    assert timed.stopped == "time" and timed.num_matvecs == 4
    # the first probes are the same whatever ends the run
    again = layerwise_trace(A, rel_tol=1e-6, max_matvecs=4, block_size=4, seed=0, quiet=True)
    assert again.value == timed.value


def test_error_paths():
    A = np.eye(4)
    with pytest.raises(InputError, match="rel_tol: expected"):
        layerwise_trace(A, rel_tol=0.0)
    with pytest.raises(InputError, match="blocks by name need an operator with a parameter space"):
        layerwise_trace(A, ["dense"])
    with pytest.raises(InputError, match="block 'x' expected indices in"):
        layerwise_trace(A, {"x": np.array([0, 7])})
    with pytest.raises(TypeError, match="blocks: expected"):
        layerwise_trace(A, 3)
    with pytest.raises(InputError, match="name: expected one of"):
        layerwise_trace(A, {"a": slice(0, 2)}).block("b")


def test_eigenvalue_tolerance_is_honoured_and_a_loose_one_costs_fewer_matvecs(mlp_case):
    _, H, _ = mlp_case
    lam = np.sort(np.linalg.eigvalsh(H))[::-1][:3]
    loose = top_eigenvalues(H, k=3, tol=1e-3, seed=0, quiet=True)
    tight = top_eigenvalues(H, k=3, tol=1e-10, seed=0, quiet=True)
    assert loose.converged and tight.converged
    assert loose.num_matvecs < tight.num_matvecs
    # residual-based stop: each eigenvalue is within its residual (<= tol |lambda|) of a true one
    assert np.all(np.abs(loose.eigenvalues - lam) <= 1e-3 * np.abs(lam))
    np.testing.assert_allclose(tight.eigenvalues, lam, rtol=1e-8)
