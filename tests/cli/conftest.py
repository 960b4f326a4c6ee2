"""Saved models and data shared by the command-line tests (the in-process runner ``cli`` is in tests/conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests import models as M


@dataclass
class Files:
    root: Path
    lin_keras: Path      # linear regression y = xW + b, compiled with mse
    lin_h5: Path
    lin_npz: Path        # x (37, 4), y (37, 1)
    lin_csv: Path        # columns a..d, target t
    mlp_keras: Path      # 3-class logits, compiled with sparse categorical crossentropy (from logits)
    mlp_npz: Path        # x (29, 5), integer labels y (29,)
    x: np.ndarray
    y: np.ndarray
    W: np.ndarray
    b: np.ndarray


@pytest.fixture(scope="session")
def files(tmp_path_factory) -> Files:
    import keras

    root = tmp_path_factory.mktemp("cli_models")
    model, x, y = M.linear_regression(n=37, d=4)
    model.compile(loss="mse")
    model.save(root / "lin.keras")
    model.save(root / "lin.h5")
    np.savez(root / "lin.npz", x=x, y=y)
    rows = ["a,b,c,d,t"] + [",".join(f"{v:.9g}" for v in (*xi, yi[0])) for xi, yi in zip(x, y)]
    (root / "lin.csv").write_text("\n".join(rows) + "\n")
    mlp, xm, ym = M.mlp()
    mlp.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    mlp.save(root / "mlp.keras")
    np.savez(root / "mlp.npz", x=xm, y=ym)
    lin = model.get_layer("lin")
    return Files(root, root / "lin.keras", root / "lin.h5", root / "lin.npz", root / "lin.csv",
                 root / "mlp.keras", root / "mlp.npz", x, y, lin.kernel.numpy().astype(np.float64),
                 lin.bias.numpy().astype(np.float64))


def closed_form_gradient(files: Files) -> dict[str, np.ndarray]:
    """∇ of (1/N) Σ (x W + b - y)² : (2/N) Xᵀ r and (2/N) Σ r."""
    x = files.x.astype(np.float64)
    r = x @ files.W + files.b - files.y
    return {"lin/kernel": 2 * x.T @ r / len(x), "lin/bias": 2 * r.sum(0) / len(x)}
