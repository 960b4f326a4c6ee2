"""Curvature spectrum: matvecs to the top Hessian eigenvalue, Lanczos vs power iteration; Hutch++ vs Hutchinson.

The model is a briefly trained MLP (a few thousand parameters) with softmax cross-entropy on synthetic data; the
operator is its loss Hessian in float64 and the reference eigenvalues come from the dense Hessian built from
the same operator (``eigvalsh(op.to_dense())``).

- "matvecs to 1e-3": the fewest matvecs after which the top Ritz value (Lanczos: the same Krylov sequence
  ``top_eigenvalues`` builds, read off ``lanczos()`` step by step) or the power-iteration estimate is within
  1e-3 relative error of the reference; median over start vectors (seeds).
- "stopping rules": what each method spends with its own stopping rule at tol 1e-3 (Lanczos: Ritz residual
  <= tol |theta|, which bounds the error; PyHessian: relative change of the estimate), and the error reached.
- trace: mean relative error of Hutch++ vs Hutchinson at equal matvecs, over seeds.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_rows, row, write  # noqa: E402

TARGET_MATVECS = 30


def _problem(quick: bool):
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    d, h1, h2, c, n = (10, 24, 16, 4, 256) if quick else (16, 48, 32, 8, 512)
    x = rng.normal(size=(n, d)).astype("float32")
    w = rng.normal(size=(d, c))
    y = np.argmax(x @ w + 0.5 * rng.normal(size=(n, c)), axis=1).astype("int32")
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(h1, activation="tanh", name="h1"),
                              keras.layers.Dense(h2, activation="tanh", name="h2"), keras.layers.Dense(c, name="logits")])
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=5 if quick else 10, batch_size=64, verbose=0)
    return model, x, y


def _first_within(estimates: np.ndarray, ref: float, rel: float) -> int | None:
    """1-based index of the first estimate within ``rel`` of ``ref`` that stays within it afterwards."""
    ok = np.abs(estimates - ref) <= rel * abs(ref)
    if not ok[-1]:
        return None
    bad = np.nonzero(~ok)[0]
    return int(bad[-1] + 2) if bad.size else 1


def run(quick: bool = False) -> list[dict]:
    from tfpartials.estimators import (
        hutchinson_trace,
        hutchpp_trace,
        lanczos,
        power_iteration,
        top_eigenvalues,
    )
    from tfpartials.linalg.curvature import HessianOperator

    model, x, y = _problem(quick)
    op = HessianOperator(model, (x, y), loss="sparse_categorical_crossentropy", from_logits=True, precision="float64",
                         batch_size=len(x))
    n = op.n
    t0 = time.perf_counter()
    H = op.to_dense().numpy()
    dense_seconds = time.perf_counter() - t0
    lam = np.linalg.eigvalsh((H + H.T) / 2)
    ref, true_trace = float(lam[-1]), float(lam.sum())
    seeds = range(3 if quick else 5)
    steps, power_cap, rel = 60, 2000 if quick else 4000, 1e-3

    lz, pw = [], []
    for s in seeds:
        dec = lanczos(op, steps, seed=s, keep_basis=False, quiet=True)
        ritz_top = np.array([np.linalg.eigvalsh(dec.tridiagonal()[:j, :j])[-1] for j in range(1, dec.num_steps + 1)])
        lz.append(_first_within(ritz_top, ref, rel) or np.inf)
        trail: list[float] = []
        power_iteration(op, tol=0.0, max_matvecs=power_cap, seed=s, quiet=True,
                        callback=lambda i, v, t=trail: t.append(v))
        pw.append(_first_within(np.array(trail), ref, rel) or np.inf)
    lz_med, pw_med = float(np.median(lz)), float(np.median(pw))
    case = f"MLP Hessian, n={n}"
    rows = [row("spectrum", f"matvecs to top eigenvalue at 1e-3 rel. error ({case})", lz_med, "matvecs",
                "power iteration", pw_med, f"<= {TARGET_MATVECS} and fewer than power iteration",
                bool(lz_med <= TARGET_MATVECS and lz_med < pw_med), per_seed=[float(v) for v in lz],
                baseline_per_seed=[float(v) for v in pw], reference_eigenvalue=ref)]

    # each method with its own stopping rule at tol = 1e-3
    t0 = time.perf_counter()
    ours = top_eigenvalues(op, k=1, tol=rel, seed=0, quiet=True)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = power_iteration(op, tol=rel, max_matvecs=power_cap, seed=0, quiet=True)
    t_theirs = time.perf_counter() - t0
    err_ours = abs(float(ours.eigenvalues[0]) - ref) / abs(ref)
    err_theirs = abs(float(theirs.eigenvalues[0]) - ref) / abs(ref)
    rows.append(row("spectrum", f"top_eigenvalues(tol=1e-3) matvecs, own stopping rule ({case})",
                    float(ours.num_matvecs), "matvecs", "power iteration, PyHessian rule tol=1e-3",
                    float(theirs.num_matvecs), "error <= 1e-3 guaranteed by the residual", bool(err_ours <= rel),
                    error=err_ours, baseline_error=err_theirs, seconds=t_ours, baseline_seconds=t_theirs))
    top3 = top_eigenvalues(op, k=3, tol=1e-6, seed=0, quiet=True)
    err3 = float(np.max(np.abs(top3.eigenvalues - lam[::-1][:3]) / np.abs(lam[::-1][:3])))
    rows.append(row("spectrum", f"top-3 eigenvalues at tol 1e-6: matvecs ({case})", float(top3.num_matvecs),
                    "matvecs", "dense Hessian (n matvecs)", float(n), "max rel. error <= 1e-6", bool(err3 <= 1e-6),
                    max_rel_error=err3, dense_seconds=dense_seconds))

    # trace: Hutch++ vs Hutchinson at equal matvecs
    m, trials = 99, (5 if quick else 10)
    e_pp = np.mean([abs(hutchpp_trace(op, m, seed=s, quiet=True).value - true_trace) for s in range(trials)])
    e_h = np.mean([abs(hutchinson_trace(op, m, seed=s, quiet=True).value - true_trace) for s in range(trials)])
    rows.append(row("spectrum", f"trace rel. error at {m} matvecs, Hutch++ ({case})", float(e_pp / abs(true_trace)),
                    "rel. error", "Hutchinson", float(e_h / abs(true_trace)), "below Hutchinson", bool(e_pp < e_h)))
    return rows


if __name__ == "__main__":
    t0 = time.perf_counter()
    rows = run(quick="--quick" in sys.argv)
    print_rows(rows)
    print(f"wrote {write('spectrum', rows)} in {time.perf_counter() - t0:.0f} s")
