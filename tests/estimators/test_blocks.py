"""Diagonal blocks (restrict) and per-layer estimators, on a dense operator laid out like a model's parameters."""

from __future__ import annotations

import numpy as np
import pytest

from tests import models as M
from tests.estimators.spectra import matrix
from tfpartials._checks import InputError
from tfpartials.estimators import (
    exact_diagonal,
    hutchpp_trace,
    layer_names,
    per_layer,
    restrict,
    top_eigenvalues,
)
from tfpartials.linalg.dense import DenseOperator
from tfpartials.params import ParameterSpace


@pytest.fixture
def spaced():
    """A dense symmetric operator whose rows follow the parameter layout of a small MLP."""
    model, _, _ = M.regression_mlp()  # h1/kernel (3,5), h1/bias (5,), out/kernel (5,1), out/bias (1,)
    space = ParameterSpace(model)
    A, _ = matrix("indefinite", n=space.size, seed=7)
    return DenseOperator(A, space=space), A, space


def test_restrict_by_layer_is_the_principal_block(spaced):
    op, A, space = spaced
    assert layer_names(space) == ["h1", "out"]
    block = restrict(op, "h1")
    idx = np.arange(space.slice_of("h1/bias").stop)  # h1/kernel then h1/bias, from offset 0
    np.testing.assert_allclose(block.to_dense().numpy(), A[np.ix_(idx, idx)], rtol=1e-12)
    assert block.symmetric and block.space.names == ["h1/kernel", "h1/bias"]
    res = top_eigenvalues(block, k=2)
    np.testing.assert_allclose(res.eigenvalues, np.sort(np.linalg.eigvalsh(A[np.ix_(idx, idx)]))[::-1][:2],
                               rtol=1e-6)
    vec = res.eigenvector_dict(0)
    assert list(vec) == ["h1/kernel", "h1/bias"] and vec["h1/kernel"].shape == (3, 5)
    np.testing.assert_allclose(np.concatenate([v.ravel() for v in vec.values()]), res.eigenvectors[:, 0])


def test_restrict_by_glob_slice_and_indices(spaced):
    op, A, space = spaced
    s = space.slice_of("out/kernel")
    k = restrict(op, ["*/kernel"])
    kidx = np.concatenate([np.arange(space.size)[space.slice_of("h1/kernel")], np.arange(space.size)[s]])
    np.testing.assert_allclose(k.to_dense().numpy(), A[np.ix_(kidx, kidx)], rtol=1e-12)
    np.testing.assert_allclose(restrict(op, s).to_dense().numpy(), A[s, s], rtol=1e-12)
    idx = np.array([3, 0, 7])
    np.testing.assert_allclose(restrict(A, idx).to_dense().numpy(), A[np.ix_(idx, idx)], rtol=1e-12)
    d = exact_diagonal(restrict(op, "out"))
    assert set(d.as_dict()) == {"out/kernel", "out/bias"}
    np.testing.assert_allclose(d.as_dict()["out/kernel"].ravel(), np.diag(A)[s])
    # the parent counts the matvecs too
    assert op.num_matvecs >= d.num_matvecs


def test_per_layer_with_an_operator_and_with_a_factory(spaced):
    op, A, space = spaced
    res = per_layer(top_eigenvalues, op, k=1)
    assert list(res) == ["h1", "out"]
    for name, r in res.items():
        idx = np.concatenate([np.arange(space.size)[space.slice_of(v)] for v in space.matching([name])])
        np.testing.assert_allclose(r.eigenvalues[0], np.linalg.eigvalsh(A[np.ix_(idx, idx)])[-1], rtol=1e-6)
    tr = per_layer(hutchpp_trace, lambda name: restrict(op, name), ["h1/kernel", "out"], num_matvecs=30)
    assert list(tr) == ["h1/kernel", "out"]
    blocks = np.arange(space.size)[space.slice_of("h1/kernel")]
    assert abs(tr["h1/kernel"].value - np.trace(A[np.ix_(blocks, blocks)])) <= 4 * tr["h1/kernel"].std_error + 1e-9


def test_block_errors(spaced):
    op, A, _ = spaced
    with pytest.raises(InputError, match="no parameter of the operator matches 'nope'"):
        restrict(op, "nope")
    with pytest.raises(InputError, match="restrict by name needs an operator with a parameter space"):
        restrict(A, "h1")
    with pytest.raises(InputError, match=r"indices: expected distinct integers in \[0, "):
        restrict(op, np.array([0, 0]))
    with pytest.raises(TypeError, match="names: expected variable names or patterns"):
        restrict(op, [1, 2])
    with pytest.raises(InputError, match="per_layer needs names"):
        per_layer(top_eigenvalues, DenseOperator(A))
    with pytest.raises(InputError, match="per_layer with a make_operator callable needs names"):
        per_layer(top_eigenvalues, lambda n: op)
    with pytest.raises(TypeError, match="source: expected an operator or a make_operator"):
        per_layer(top_eigenvalues, 3, ["a"])


def test_density_plot_writes_a_png(tmp_path):
    from tfpartials.estimators import spectral_density
    from tfpartials.reports.plots_spectrum import density_figure, plot_density

    A, lam = matrix("indefinite")
    d = spectral_density(A, num_probes=2, num_lanczos=20)
    out = plot_density(d, tmp_path / "d.png", eigenvalues=[7.0, 4.5, 3.0])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = density_figure({"grid": d.grid, "values": d.values}, [7.0], log=False)
    ax = fig.axes[0]
    assert any(abs(line.get_xdata()[0] - 7.0) < 1e-12 for line in ax.lines[1:])
    with pytest.raises(InputError, match="plot: expected a .png file name"):
        plot_density(d, tmp_path / "d.pdf")
    with pytest.raises(InputError, match="density: expected grid and values of the same length"):
        density_figure(([0.0, 1.0], [1.0]))
    with pytest.raises(InputError, match="density: expected a SpectralDensity"):
        density_figure(3)


def test_results_are_frozen_and_serialise_without_their_space(spaced):
    import dataclasses
    import json

    from tfpartials.io.writers import to_jsonable

    op, _, space = spaced
    res = top_eigenvalues(op, k=1)
    assert res.space is space and exact_diagonal(op).space is space
    assert "space" not in {f.name for f in dataclasses.fields(res)}
    assert set(json.loads(json.dumps(to_jsonable(res)))) == {"eigenvalues", "eigenvectors", "residual_norms",
                                                           "num_matvecs", "converged", "which"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.num_matvecs = 3
