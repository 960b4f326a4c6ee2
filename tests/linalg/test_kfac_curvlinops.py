"""KFAC against curvlinops' ``KFACLinearOperator`` on twin PyTorch models (same weights, same data), float64.

Needs the bench extra (torch, curvlinops-for-pytorch); skipped otherwise.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch")
curvlinops = pytest.importorskip("curvlinops")

from tfpartials.linalg.kfac import KFACOperator  # noqa: E402


class _NHWC(torch.nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1)   # flatten in Keras' (h, w, c) order


def _twins(kind: str, rng):
    if kind == "mlp":
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="tanh", name="h"),
                                  keras.layers.Dense(3, name="out")])
        net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
        x = rng.normal(size=(14, 4))
    else:
        model = keras.Sequential([keras.Input((5, 5, 2)), keras.layers.Conv2D(3, 3, activation="tanh", name="conv"),
                                  keras.layers.Flatten(), keras.layers.Dense(3, name="out")])
        net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.Tanh(), _NHWC(), torch.nn.Flatten(),
                                  torch.nn.Linear(27, 3))
        x = rng.normal(size=(10, 5, 5, 2))
    for v in model.trainable_variables:
        v.assign(rng.normal(size=v.shape) * 0.5)
    net = net.double()
    return model, net, x, rng.integers(0, 3, size=len(x))


def _to_torch_layout(values: list[np.ndarray]) -> list[np.ndarray]:
    """Keras variables (kernel, bias per layer) -> torch parameters (weight, bias per layer)."""
    out = []
    for v in values:
        if v.ndim == 2:
            out.append(v.T)
        elif v.ndim == 4:
            out.append(v.transpose(3, 2, 0, 1))
        else:
            out.append(v)
    return out


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("fisher", ["type-2", "empirical"])
@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_same_matrix_as_curvlinops(kind, fisher, approx):
    rng = np.random.default_rng(11)
    model, net, x, y = _twins(kind, rng)
    keras_values = [v.numpy().astype(np.float64) for v in model.trainable_variables]
    with torch.no_grad():
        for p, val in zip(net.parameters(), _to_torch_layout(keras_values)):
            p.copy_(torch.from_numpy(np.ascontiguousarray(val)))
    # flat keras index of every torch coordinate (layout permutation), from labelled weights
    labels, start = [], 0
    for v in keras_values:
        labels.append(np.arange(start, start + v.size).reshape(v.shape))
        start += v.size
    perm = np.concatenate([t.ravel() for t in _to_torch_layout(labels)])

    K = KFACOperator(model, (x, y), loss="sparse_categorical_crossentropy", from_logits=True, fisher=fisher,
                     kfac_approx=approx, precision="float64", batch_size=4, quiet=True).to_dense().numpy()
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy() if x.ndim == 4 else x)
    yt = torch.from_numpy(y).long()
    data = [(xt[i:i + 4], yt[i:i + 4]) for i in range(0, len(x), 4)]
    params = list(net.parameters())
    ref = curvlinops.KFACLinearOperator(net, torch.nn.CrossEntropyLoss(), params, data, fisher_type=fisher,
                                        kfac_approx=approx, separate_weight_and_bias=False,
                                        check_deterministic=False)
    Kt = _dense(ref, params, sum(p.numel() for p in params))
    np.testing.assert_allclose(K[np.ix_(perm, perm)], Kt, rtol=1e-5, atol=1e-7 * np.abs(Kt).max())


def _dense(op, params, n):
    """The dense matrix of a curvlinops operator (columns from products with identity blocks)."""
    eye = torch.eye(n, dtype=torch.float64)
    sizes = [p.numel() for p in params]
    cols = []
    for j in range(n):
        parts = [c.reshape(p.shape) for c, p in zip(torch.split(eye[:, j], sizes), params)]
        out = op @ parts
        cols.append(torch.cat([o.reshape(-1) for o in out]).numpy())
    return np.stack(cols, axis=1)
