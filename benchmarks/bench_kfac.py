"""KFAC: building the factors and one inverse-vector product, against curvlinops on twin PyTorch models and
against the dense route (dense GGN, then a linear solve), on an MLP and a CNN (float32, CPU).

- "build": KFAC factors over the dataset (type-2, expand). tfpartials cold = first construction (includes
  tracing); warm = a second construction (compiled functions reused). curvlinops = ``KFACLinearOperator`` +
  ``compute_kronecker_factors()`` on the twin torch model (same weights, data, batch size).
- "inverse matvec": ``(K + 1e-3 I)^-1 v`` through the eigenbases (tfpartials ``inverse``, curvlinops
  ``KFACInverseLinearOperator(use_exact_damping=True)``); the first product (which eigendecomposes) timed.
- "dense route": ``GGNOperator.to_dense()`` and ``np.linalg.solve`` (the exact GGN) — what KFAC replaces.
Ratios are against curvlinops measured in the same run. ``--quick`` uses smaller problems.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_rows, row, write  # noqa: E402


def _problem(kind: str, quick: bool):
    import keras

    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    if kind == "mlp":
        d, h, c, n = (16, 32, 10, 512) if quick else (32, 64, 10, 2048)
        model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(h, activation="tanh", name="h1"),
                                  keras.layers.Dense(h, activation="tanh", name="h2"), keras.layers.Dense(c, name="out")])
        x = rng.normal(size=(n, d)).astype("float32")
    else:
        s, c, n = (8, 10, 256) if quick else (12, 10, 1024)
        model = keras.Sequential([keras.Input((s, s, 3)), keras.layers.Conv2D(8, 3, activation="tanh", name="c1"),
                                  keras.layers.Conv2D(8, 3, activation="tanh", name="c2"), keras.layers.Flatten(),
                                  keras.layers.Dense(c, name="out")])
        x = rng.normal(size=(n, s, s, 3)).astype("float32")
    y = rng.integers(0, c, size=n).astype("int32")
    return model, x, y


def _torch_twin(kind, model, x):
    import torch

    class NHWC(torch.nn.Module):
        def forward(self, t):
            return t.permute(0, 2, 3, 1)

    mods = []
    for layer in model.layers:
        if isinstance(layer, __import__("keras").layers.Dense):
            mods += [torch.nn.Linear(*layer.kernel.shape)]
        elif hasattr(layer, "kernel"):
            kh, kw, ci, co = layer.kernel.shape
            mods += [torch.nn.Conv2d(ci, co, (kh, kw))]
        else:
            mods += [NHWC(), torch.nn.Flatten()]
        if getattr(layer, "activation", None) is not None and layer.activation.__name__ == "tanh":
            mods.append(torch.nn.Tanh())
    net = torch.nn.Sequential(*mods)
    vals = [v.numpy() for v in model.trainable_variables]
    with torch.no_grad():
        for p, v in zip(net.parameters(), vals):
            t = v.T if v.ndim == 2 else (v.transpose(3, 2, 0, 1) if v.ndim == 4 else v)
            p.copy_(torch.from_numpy(np.ascontiguousarray(t)))
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy() if x.ndim == 4 else x)
    return net, xt


def run(quick: bool = False) -> list[dict]:
    import tfpartials as tp

    rows = []
    batch, lam = 128, 1e-3
    for kind in ("mlp", "cnn"):
        model, x, y = _problem(kind, quick)
        t0 = time.perf_counter()
        K = tp.KFACOperator(model, (x, y), loss="sparse_categorical_crossentropy", from_logits=True,
                            batch_size=batch, quiet=True)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        K = tp.KFACOperator(model, (x, y), loss="sparse_categorical_crossentropy", from_logits=True,
                            batch_size=batch, quiet=True)
        warm = time.perf_counter() - t0
        v = np.random.default_rng(1).normal(size=K.n).astype("float32")
        t0 = time.perf_counter()
        ours = (K.inverse(lam) @ v).numpy()
        inv_time = time.perf_counter() - t0
        case = f"{kind} ({K.n} parameters, {len(x)} examples)"
        peer_build = peer_inv = None
        try:
            import curvlinops
            import torch

            torch.set_num_threads(2)
            net, xt = _torch_twin(kind, model, x)
            yt = torch.from_numpy(y).long()
            data = [(xt[i:i + batch], yt[i:i + batch]) for i in range(0, len(x), batch)]
            params = list(net.parameters())
            t0 = time.perf_counter()
            P = curvlinops.KFACLinearOperator(net, torch.nn.CrossEntropyLoss(), params, data, fisher_type="type-2",
                                              separate_weight_and_bias=False, check_deterministic=False)
            P.compute_kronecker_factors()
            peer_build = time.perf_counter() - t0
            Pinv = curvlinops.KFACInverseLinearOperator(P, damping=lam, use_exact_damping=True)
            t0 = time.perf_counter()
            Pinv @ [torch.zeros_like(p) for p in params]
            peer_inv = time.perf_counter() - t0
        except ImportError:
            pass
        rows.append(row("kfac", f"build, cold: {case}", cold, "s", "curvlinops", peer_build))
        rows.append(row("kfac", f"build, warm: {case}", warm, "s", "curvlinops", peer_build))
        rows.append(row("kfac", f"inverse matvec: {case}", inv_time, "s", "curvlinops", peer_inv))
        if K.n <= 6000:
            G = tp.GGNOperator(model, (x, y), loss="sparse_categorical_crossentropy", from_logits=True,
                               batch_size=batch)
            t0 = time.perf_counter()
            Gd = G.to_dense().numpy().astype(np.float64)
            dense = np.linalg.solve(Gd + lam * np.eye(K.n), v)
            dense_time = time.perf_counter() - t0
            cos = float(ours @ dense / (np.linalg.norm(ours) * np.linalg.norm(dense)))
            rows.append(row("kfac", f"dense GGN + solve: {case}", dense_time, "s", "tfpartials KFAC build+inverse",
                            cold + inv_time, cosine_kfac_vs_exact_solution=cos))
    return rows


if __name__ == "__main__":
    t0 = time.perf_counter()
    rows = run(quick="--quick" in sys.argv)
    print_rows(rows)
    print(f"wrote {write('kfac', rows)} in {time.perf_counter() - t0:.0f} s")
