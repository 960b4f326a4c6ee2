"""Laplace calibration on the bundled digits CNN across training length and seeds, with an independent reference.

For each (epochs, seed) of ``tp.digits_cnn`` (trained on its own 80% split; the held-out 20% is split into the
first 120 images for validation and the remaining 239 for test, as in bench_laplace.py): the MAP, and last-layer
Laplace with the probit predictive, its prior precision by the log marginal likelihood ("marglik") or by the
validation NLL over 49 log-spaced values 1e-2..1e6 ("grid"). Three computations of each: the library's
last-layer KFAC, and an independent numpy float64 reference written here (no tfpartials Laplace code) for the
exact last-layer GGN ``sum_i kron(a_i a_i^T, Lam_i)`` and for its KFAC ``N kron(mean a a^T, mean Lam_i)``, with
``a = [features, 1]`` from Keras, the evidence from eigenvalues, the functional variance from explicit
Jacobians and the probit by hand. The first setting also checks the library against the reference at fixed
priors (probabilities, log evidence, the dense GGN). Diagnostics: the training NLL, the number of GGN
eigenvalues above 1, ``|theta|^2``, and the temperature that minimises the MAP's validation NLL (above 1: the
MAP is over-confident on validation; Laplace's probit can only soften).

Usage: python benchmarks/bench_laplace_calibration.py [--settings 15:0 15:1 ...]   (epochs:seed)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import optimize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_rows, row, write  # noqa: E402

BENCH = "laplace_calibration"
SETTINGS = ["15:0", "15:1", "15:2", "50:0", "50:1", "50:2", "100:0", "200:0", "200:1", "200:2"]

N_VAL = 120
GRID = np.logspace(-2, 6, 49)


def sm(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def metrics(p, y, bins=15):
    """NLL, ECE (``bins`` equal-width confidence bins), accuracy and mean confidence, in numpy."""
    conf = p.max(1)
    acc = p.argmax(1) == y
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(acc[m].mean() - conf[m].mean())
    return dict(nll=float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1)))), ece=float(ece),
                acc=float(acc.mean()), conf=float(conf.mean()))


def _reference(H, theta, nll_train, Wa):
    """Evidence and probit predictive of the posterior N(theta, (H + d I)^-1), numpy float64."""
    ev, V = np.linalg.eigh(0.5 * (H + H.T))
    ev = np.maximum(ev, 0)
    D1, C = Wa.shape

    def lml(d):
        return -nll_train - 0.5 * (d * theta @ theta + np.sum(np.log(ev + d)) - theta.size * np.log(d))

    def pred(A, d):
        S4 = ((V / (ev + d)) @ V.T).reshape(D1, C, D1, C)
        fv = np.einsum("bd,dcec,be->bc", A, S4, A, optimize=True)   # diag of J Sigma J^T, J = I_C (x) a^T
        return sm((A @ Wa) / np.sqrt(1 + np.pi / 8 * fv))

    r = optimize.minimize_scalar(lambda t: -lml(np.exp(t)), bounds=(np.log(1e-6), np.log(1e6)), method="bounded")
    return dict(ml=float(np.exp(r.x)), lml=lml, pred=pred)


def run(epochs, seed, check=False):
    import keras

    import tfpartials as tp
    from tfpartials.examples.digits import _split, digits_arrays

    out = dict(epochs=epochs, seed=seed)
    t0 = time.time()
    model, xh, yh = tp.digits_cnn(epochs=epochs, seed=seed)
    out["train_s"] = time.time() - t0
    xa, ya = digits_arrays()
    tr, _ = _split(len(xa), seed, 0.2)
    xt, yt = xa[tr], ya[tr]
    xv, yv, xs, ys = xh[:N_VAL], yh[:N_VAL], xh[N_VAL:], yh[N_VAL:]
    feat = keras.Model(model.inputs, model.get_layer("flatten").output)
    W, b = [np.asarray(v, np.float64) for v in model.get_layer("logits").get_weights()]
    D, C = W.shape

    def aug(x):
        return np.concatenate([np.asarray(feat.predict(x, verbose=0), np.float64), np.ones((len(x), 1))], 1)

    At, Av, As = aug(xt), aug(xv), aug(xs)
    Wa = np.concatenate([W, b[None]], 0)               # (D+1, C): flat order (d, c) = kernel then bias
    theta = Wa.reshape(-1)
    P, N = theta.size, len(yt)
    pt = sm(At @ Wa)
    Lam = np.einsum("bc,cd->bcd", pt, np.eye(C)) - np.einsum("bc,bd->bcd", pt, pt)
    nll_train = float(-np.sum(np.log(pt[np.arange(N), yt])))
    out["train_nll_mean"] = nll_train / N
    out["train_acc"] = float((pt.argmax(1) == yt).mean())
    # exact GGN and KFAC, independent
    H_full = np.tensordot(np.einsum("bd,be->bde", At, At).reshape(N, -1).T, Lam.reshape(N, -1), axes=1)
    H_full = H_full.reshape(D + 1, D + 1, C, C).transpose(0, 2, 1, 3).reshape(P, P)
    H_kfac = N * np.kron(At.T @ At / N, Lam.mean(0))
    res_i = {"full": _reference(H_full, theta, nll_train, Wa), "kfac": _reference(H_kfac, theta, nll_train, Wa)}
    eig = np.linalg.eigvalsh(H_full)
    out["ggn_top_eig"] = float(eig[-1])
    out["ggn_eig_gt1"] = int(np.sum(eig > 1))
    out["theta_sq"] = float(theta @ theta)
    out["MAP"] = metrics(sm(As @ Wa), ys)
    out["MAP_val_nll"] = metrics(sm(Av @ Wa), yv)["nll"]
    # temperature that minimises validation NLL (diagnostic: T < 1 means the MAP is under-confident on val)
    r = optimize.minimize_scalar(lambda lt: metrics(sm(Av @ Wa / np.exp(lt)), yv)["nll"], bounds=(-3, 3),
                                 method="bounded")
    out["val_temperature"] = float(np.exp(r.x))
    for name, ri in res_i.items():
        out[f"indep_{name}_marglik"] = dict(prior=ri["ml"], **metrics(ri["pred"](As, ri["ml"]), ys))
        val = [metrics(ri["pred"](Av, d), yv)["nll"] for d in GRID]
        dg = float(GRID[int(np.argmin(val))])
        out[f"indep_{name}_grid"] = dict(prior=dg, val_nll=float(min(val)), **metrics(ri["pred"](As, dg), ys))
    # the library: last-layer KFAC, probit
    t0 = time.time()
    la = tp.Laplace(model, (xt, yt), likelihood="classification", subset="last_layer", structure="kfac")
    out["fit_s"] = time.time() - t0
    if check:   # the library against the independent reference at fixed priors
        for d in (1.0, 100.0):
            la.prior_precision = d
            pl = la.predictive(xs, link="probit").probs
            out[f"check_kfac_prior{d:g}"] = dict(
                max_abs_prob=float(np.abs(pl - res_i["kfac"]["pred"](As, d)).max()),
                lml_ours=la.log_marginal_likelihood(), lml_ref=float(res_i["kfac"]["lml"](d)))
        la.prior_precision = 1.0
    la.optimize_prior_precision("marglik")
    out["lib_kfac_marglik"] = dict(prior=la.prior_precision, **metrics(la.predictive(xs, link="probit").probs, ys))
    la.optimize_prior_precision("gridsearch", val_data=(xv, yv), grid=GRID)
    out["lib_kfac_grid"] = dict(prior=la.prior_precision, **metrics(la.predictive(xs, link="probit").probs, ys))
    if check:
        la2 = tp.Laplace(model, (xt, yt), likelihood="classification", subset="last_layer", structure="full")
        out["check_full_H_rel"] = float(np.abs(la2._posterior.H1 - H_full).max() / np.abs(H_full).max())
        la2.prior_precision = 1.0
        out["check_full_prior1"] = dict(
            max_abs_prob=float(np.abs(la2.predictive(xs, link="probit").probs - res_i["full"]["pred"](As, 1.0)).max()),
            lml_ours=la2.log_marginal_likelihood(), lml_ref=float(res_i["full"]["lml"](1.0)))
    return out


METHODS = {"lib_kfac_grid": "last-layer KFAC, grid", "lib_kfac_marglik": "last-layer KFAC, marglik",
           "indep_kfac_grid": "reference KFAC, grid", "indep_kfac_marglik": "reference KFAC, marglik",
           "indep_full_grid": "reference full GGN, grid", "indep_full_marglik": "reference full GGN, marglik"}


def rows_for(r: dict) -> list[dict]:
    """Benchmark rows of one setting: the MAP's metrics, then each method's against them."""
    tag = f"digits CNN {r['epochs']} epochs seed {r['seed']}"
    facts = {k: r[k] for k in ("epochs", "seed", "train_nll_mean", "train_acc", "ggn_top_eig", "ggn_eig_gt1",
                               "theta_sq", "MAP_val_nll", "val_temperature")}
    facts.update({k: v for k, v in r.items() if k.startswith("check")})
    out = [row(BENCH, f"{tag}: MAP {k}", r["MAP"][k], k, **facts) for k in ("nll", "ece", "acc", "conf")]
    for key, label in METHODS.items():
        m = r[key]
        for k, lower in (("nll", True), ("ece", True), ("acc", None), ("conf", None)):
            base = r["MAP"][k]
            meets = (m[k] < base) if lower else (abs(m[k] - base) <= 0.005 if k == "acc" else None)
            target = "below MAP" if lower else ("MAP +- 0.5%" if k == "acc" else None)
            out.append(row(BENCH, f"{tag}: {label} {k}", m[k], k, baseline="MAP", baseline_value=base,
                           target=target, meets_target=meets, prior_precision=m["prior"],
                           val_nll=m.get("val_nll"), epochs=r["epochs"], seed=r["seed"]))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", nargs="+", default=SETTINGS, help="epochs:seed of tp.digits_cnn")
    args = p.parse_args(argv)
    rows: list[dict] = []
    for i, s in enumerate(args.settings):
        e, sd = (int(v) for v in s.split(":"))
        r = run(e, sd, check=(i == 0))
        print(json.dumps(r), flush=True)
        rows += rows_for(r)
    print_rows(rows)
    print(f"wrote {write(BENCH, rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
