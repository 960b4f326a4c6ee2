"""Peer check against laplace-torch (the PyTorch reference; bench extra): a twin PyTorch model with the same
weights and data must give the same log marginal likelihood and GLM/probit predictive probabilities."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

import numpy as np
import pytest

import tfpartials as tp


def _stub_broken_torchvision() -> None:
    """laplace-torch imports torchmetrics, which imports torchvision when it is installed; a torchvision built
    for another torch fails at import. Nothing here uses torchvision, so serve empty modules in its place."""
    try:
        import torchvision  # noqa: F401
        return
    except ImportError:
        return
    except Exception:  # noqa: BLE001 - e.g. RuntimeError: operator torchvision::nms does not exist
        for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[k]

    class _Stub(types.ModuleType):
        __path__: list = []

        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return _Stub(f"{self.__name__}.{name}")

    class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path, target=None):
            if name == "torchvision" or name.startswith("torchvision."):
                return importlib.machinery.ModuleSpec(name, self, is_package=True)
            return None

        def create_module(self, spec):
            return _Stub(spec.name)

        def exec_module(self, module):
            pass

    sys.meta_path.insert(0, _Finder())


torch = pytest.importorskip("torch")
_stub_broken_torchvision()
laplace = pytest.importorskip("laplace")


def _twins(bias: bool):
    import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = rng.integers(0, 3, 40)
    xt = rng.normal(size=(15, 3))
    km = keras.Sequential([keras.Input((3,), dtype="float64"),
                           keras.layers.Dense(8, activation="tanh", dtype="float64", name="hidden"),
                           keras.layers.Dense(3, use_bias=bias, dtype="float64", name="out")])
    km.set_weights([rng.normal(size=(3, 8)), 0.1 * rng.normal(size=8), rng.normal(size=(8, 3))]
                   + ([0.1 * rng.normal(size=3)] if bias else []))
    tm = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3, bias=bias)).double()
    with torch.no_grad():
        for weights, layer in zip([km.get_layer("hidden").get_weights(), km.get_layer("out").get_weights()],
                                  [tm[0], tm[2]]):
            layer.weight.copy_(torch.from_numpy(weights[0].T.copy()))
            if len(weights) > 1:
                layer.bias.copy_(torch.from_numpy(weights[1].copy()))
    return km, tm, x, y, xt


@pytest.fixture(scope="module")
def twins():
    return _twins(bias=True)


@pytest.fixture(scope="module")
def twins_no_bias():
    return _twins(bias=False)


# laplace-torch's Kronecker blocks keep a bias apart from its kernel (tfpartials appends it to the inputs, as
# KFAC's A factor of ones): the two approximations agree exactly for a last layer without bias
@pytest.mark.parametrize("structure,theirs,fixture", [("full", "full", "twins"), ("diag", "diag", "twins"),
                                                      ("kfac", "kron", "twins_no_bias")])
def test_last_layer_matches_laplace_torch(request, structure, theirs, fixture):
    km, tm, x, y, xt = request.getfixturevalue(fixture)
    prior = 0.7
    ours = tp.Laplace(km, (x, y), likelihood="classification", subset="last_layer", structure=structure,
                      prior_precision=prior, loss="sparse_categorical_crossentropy", from_logits=True)
    ref = laplace.Laplace(tm, "classification", subset_of_weights="last_layer", hessian_structure=theirs,
                          prior_precision=prior)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=16)
    ref.fit(loader)
    for p in (prior, 3.0):
        expected = float(ref.log_marginal_likelihood(prior_precision=torch.tensor(p, dtype=torch.float64)))
        assert ours.log_marginal_likelihood(p) == pytest.approx(expected, rel=1e-4)
    ref.prior_precision = torch.tensor(prior, dtype=torch.float64)
    probs = ref(torch.from_numpy(xt), pred_type="glm", link_approx="probit").detach().numpy()
    np.testing.assert_allclose(ours.predictive(xt, link="probit").probs, probs, rtol=1e-4)
