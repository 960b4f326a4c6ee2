"""Laplace approximation on the bundled digits CNN: MAP vs last-layer Laplace (probit) on held-out digits.

The CNN is the bundled example (trained on 80% of scikit-learn's 1797 digits; 15 epochs by default, and an
over-trained 100-epoch copy). The Laplace approximation is fitted on the same training split (last layer, 1,290
weights). Its prior precision is chosen either by the log marginal likelihood on the training data ("marglik")
or by the NLL on a validation part of the held-out images ("gridsearch", the first 120 of the 359); every metric
is measured on the remaining 239 test images: negative log-likelihood, expected calibration error (15 bins),
Brier score and accuracy, with the MAP network's values as the baseline of each row. Structures: KFAC, full,
diag on the last layer and KFAC on all layers (6,090 weights); fit and predict times are recorded too (``OPENBLAS_NUM_THREADS`` is recorded with them: on a loaded
2-core machine a single BLAS thread is several times faster for the dense eigendecomposition).

Usage: python benchmarks/bench_laplace.py [--epochs 15 100] [--structures kfac full diag]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_rows, row, write  # noqa: E402

BENCH = "laplace"
N_VAL = 120
GRID = [10.0 ** (k / 6) for k in range(-12, 37)]  # 1e-2 .. 1e6, 6 per decade: wide enough to tie the MAP


def _one_model(epochs: int, structures, rows: list[dict]) -> None:
    import tfpartials as tp
    from tfpartials.examples.digits import _split, digits_arrays

    model, x_held, y_held = tp.digits_cnn(epochs=epochs)
    x_all, y_all = digits_arrays()
    train, _ = _split(len(x_all), 0, 0.2)
    x_train, y_train = x_all[train], y_all[train]
    x_val, y_val, x_test, y_test = x_held[:N_VAL], y_held[:N_VAL], x_held[N_VAL:], y_held[N_VAL:]
    tag = f"digits CNN {epochs} epochs"
    map_cal = None
    for spec in structures:
        structure, _, subset = spec.partition(":")
        subset = subset or "last_layer"
        where = "last-layer" if subset == "last_layer" else f"{subset}-layers"
        t0 = time.perf_counter()
        try:
            la = tp.Laplace(model, (x_train, y_train), likelihood="classification", subset=subset,
                            structure=structure)
        except Exception as exc:  # noqa: BLE001 - a structure that fails is a row saying why, not a crash
            rows.append(row(BENCH, f"{tag}: {where} {structure}: failed", float("nan"), "",
                            error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"))
            continue
        t_fit = time.perf_counter() - t0
        if map_cal is None:
            map_cal = tp.calibration(la.predict_map(x_test), y_test)
            for key in ("nll", "ece", "brier", "accuracy"):
                rows.append(row(BENCH, f"{tag}: MAP {key}", getattr(map_cal, key), key))
        for method in ("marglik", "gridsearch"):
            t0 = time.perf_counter()
            if method == "marglik":
                la.optimize_prior_precision("marglik")
            else:
                la.optimize_prior_precision("gridsearch", val_data=(x_val, y_val), grid=GRID)
            t_opt = time.perf_counter() - t0
            t0 = time.perf_counter()
            probs = la.predictive(x_test, link="probit").probs
            t_pred = time.perf_counter() - t0
            cal = tp.calibration(probs, y_test)
            extra = {"model": tag, "structure": structure, "subset": subset, "prior_method": method,
                     "prior_precision": la.prior_precision, "log_marginal_likelihood": la.log_marginal_likelihood(),
                     "num_parameters": la.n_params, "num_train": la.num_examples, "num_test": int(len(y_test)),
                     "fit_seconds": t_fit, "optimize_seconds": t_opt, "predict_seconds": t_pred,
                     "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS")}
            for key, lower_better in (("nll", True), ("ece", True), ("brier", True), ("accuracy", False)):
                ours, base = getattr(cal, key), getattr(map_cal, key)
                meets = ours < base if lower_better else abs(ours - base) <= 0.005
                rows.append(row(BENCH, f"{tag}: {where} {structure} ({method}) {key}", ours, key,
                                baseline="MAP", baseline_value=base,
                                target="below MAP" if lower_better else "MAP +- 0.5%", meets_target=meets, **extra))
        rows.append(row(BENCH, f"{tag}: {where} {structure} fit", t_fit, "s", model=tag, structure=structure,
                        subset=subset, num_parameters=la.n_params))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, nargs="+", default=[15, 100])
    p.add_argument("--structures", nargs="+", default=["kfac", "full", "diag", "kfac:all"],
                   help="structure[:subset], subset last_layer (default) or all")
    args = p.parse_args(argv)
    rows: list[dict] = []
    for epochs in args.epochs:
        _one_model(epochs, args.structures, rows)
    print_rows(rows)
    print(f"wrote {write(BENCH, rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
