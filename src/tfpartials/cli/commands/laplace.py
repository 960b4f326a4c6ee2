"""tfpartials laplace MODEL --data TRAIN --eval TEST [--subset last-layer|all|GLOB] [--structure full|diag|kfac|lowrank]
[--optimize marglik|gridsearch|none] [--prior-precision P] --out la.json [--plot reliability.png]"""

from __future__ import annotations

HELP = "Laplace approximation: calibrated predictive uncertainty and model evidence"
DESCRIPTION = (
    "Fit a Laplace approximation (Gaussian posterior over the weights at the trained optimum, the Gauss-Newton "
    "curvature of the summed negative log-likelihood as its precision), tune the prior precision by the log "
    "marginal likelihood or a validation grid search, and compare the MAP network with the linearised Laplace "
    "predictive on held-out data (--eval): NLL, ECE, Brier score and accuracy for classification, NLL and RMSE "
    "for regression.")


def add_arguments(p) -> None:
    from ..common import add_data_args, add_model_args, add_output_args

    add_model_args(p)
    add_data_args(p)
    add_output_args(p, help="write the results to this .json")
    p.add_argument("--eval", required=True, metavar="TEST", help="held-out data (same formats as --data)")
    p.add_argument("--val", default=None, metavar="VAL", help="validation data for --optimize gridsearch")
    p.add_argument("--likelihood", choices=["classification", "regression"], default=None,
                   help="default: classification for cross-entropy losses, regression for mse")
    p.add_argument("--subset", default="all", metavar="last-layer|all|GLOB",
                   help="weights with a posterior: all (default), last-layer, or a variable name / glob")
    p.add_argument("--structure", choices=["full", "diag", "kfac", "lowrank"], default="full",
                   help="curvature structure (default full; kfac and diag scale to large layers)")
    p.add_argument("--optimize", choices=["marglik", "gridsearch", "none"], default="marglik",
                   help="tune the prior precision: log marginal likelihood (default), validation NLL, or not")
    p.add_argument("--prior-precision", type=float, default=1.0, metavar="P",
                   help="prior precision (the start for --optimize; default 1)")
    p.add_argument("--sigma-noise", type=float, default=1.0, metavar="S",
                   help="observation noise standard deviation (regression; optimised with --optimize marglik)")
    p.add_argument("--link", choices=["probit", "mc"], default="probit",
                   help="classification: probit approximation (default) or Monte Carlo over the logits")
    p.add_argument("--samples", type=int, default=100, help="Monte Carlo samples for --link mc (default 100)")
    p.add_argument("--rank", type=int, default=20, help="eigenpairs kept by --structure lowrank (default 20)")
    p.add_argument("--bins", type=int, default=15, help="confidence bins of the calibration error (default 15)")
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="memory limit of the dense structure (default 2GiB)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of Lanczos and Monte Carlo (default 0)")
    p.add_argument("--plot", default=None, metavar="PNG", help="draw the MAP vs Laplace reliability diagram here")


def _validate(args) -> None:
    from ..._checks import InputError, check_positive_float

    check_positive_float("--prior-precision", args.prior_precision)
    check_positive_float("--sigma-noise", args.sigma_noise)
    for flag in ("samples", "rank", "bins"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag}: expected a positive integer, got {getattr(args, flag)}")
    if args.seed < 0:
        raise InputError(f"--seed: expected a non-negative integer, got {args.seed}")
    if args.plot is not None and not str(args.plot).lower().endswith(".png"):
        raise InputError(f"--plot: expected a .png file name, got {args.plot!r}")
    if args.optimize == "gridsearch" and args.val is None:
        raise InputError("--optimize gridsearch needs validation data: --val VAL")


def _likelihood(args) -> str:
    from ..._checks import InputError

    if args.likelihood is not None:
        return args.likelihood
    if args._loss.name in ("sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy"):
        return "classification"
    if args._loss.name == "mse":
        return "regression"
    raise InputError(f"cannot tell the likelihood from loss {args._loss.name!r}; use a cross-entropy or mse loss "
                     "(--loss) or pass --likelihood")


def _subset(args):
    if args.wrt:
        return list(args.wrt)
    return "last_layer" if args.subset.replace("_", "-") == "last-layer" else args.subset


def _regression_metrics(mean, var, y) -> dict:
    import numpy as np

    y = np.asarray(y, np.float64).reshape(mean.shape)
    nll = float(np.mean(np.sum(0.5 * np.log(2 * np.pi * var) + 0.5 * (y - mean) ** 2 / var, axis=1)))
    return {"nll": nll, "rmse": float(np.sqrt(np.mean((y - mean) ** 2)))}


def _labels(y, loss_name: str):
    import numpy as np

    y = np.asarray(y)
    if loss_name == "categorical_crossentropy":
        return y.argmax(axis=-1)
    if loss_name == "binary_crossentropy":
        return y.reshape(-1).astype(np.int64)
    return y.reshape(-1)


def run(args) -> int:
    import numpy as np

    from ...bayes import Laplace, calibration, plot_reliability
    from ...io.data import load_data
    from ...reports.writers import check_output_path, save_json
    from ..common import load_model_and_data, print_table

    _validate(args)
    for path in (args.out, args.plot):
        if path:
            check_output_path(path, args.overwrite)
    model, data = load_model_and_data(args)
    likelihood = _likelihood(args)
    if args.plot and likelihood == "regression":
        from ..._checks import InputError

        raise InputError("--plot draws a reliability diagram, which needs --likelihood classification")
    test = load_data(args.eval, target=args.target, model=model, loss_name=args._loss.name,
                     allow_nan=args.allow_nan)
    x_test, y_test = test.arrays()
    la = Laplace(model, data, likelihood=likelihood, subset=_subset(args), structure=args.structure,
                 prior_precision=args.prior_precision, sigma_noise=args.sigma_noise, loss=args._loss,
                 rank=args.rank, batch_size=args.batch_size, precision=args.precision,
                 max_memory=args.max_memory, seed=args.seed, quiet=args.quiet)
    if args.optimize == "marglik":
        la.optimize_prior_precision("marglik", optimize_sigma=likelihood == "regression")
    elif args.optimize == "gridsearch":
        val = load_data(args.val, target=args.target, model=model, loss_name=args._loss.name,
                        allow_nan=args.allow_nan)
        la.optimize_prior_precision("gridsearch", val_data=val.arrays(), link=args.link, n_samples=args.samples)
    prior = la.prior_precision
    result: dict = {"likelihood": likelihood, "structure": args.structure, "subset": args.subset,
                    "loss": args._loss.name, "parameters": la.space.names, "num_parameters": la.n_params,
                    "num_train": la.num_examples, "num_eval": test.num_examples, "optimize": args.optimize,
                    "prior_precision": prior if isinstance(prior, float) else np.asarray(prior).tolist(),
                    "log_marginal_likelihood": la.log_marginal_likelihood(),
                    "log_likelihood": la.log_likelihood()}
    if likelihood == "regression":
        result["sigma_noise"] = la.sigma_noise
        pred = la.predictive(x_test)
        result["map"] = _regression_metrics(pred.f_mean, np.full_like(pred.f_mean, la.sigma_noise**2), y_test)
        result["laplace"] = _regression_metrics(pred.mean, pred.variance, y_test)
        keys = ["nll", "rmse"]
    else:
        labels = _labels(y_test, args._loss.name)
        map_cal = calibration(la.predict_map(x_test), labels, bins=args.bins)
        probs = la.predictive(x_test, link=args.link, n_samples=args.samples, seed=args.seed).probs
        la_cal = calibration(probs, labels, bins=args.bins)
        result["link"] = args.link
        result["map"], result["laplace"] = map_cal.as_dict(), la_cal.as_dict()
        keys = ["nll", "ece", "mce", "brier", "accuracy"]
    if not args.quiet:
        rows = [[k, result["map"][k], result["laplace"][k]] for k in keys]
        rows.append(["log marginal likelihood", "", result["log_marginal_likelihood"]])
        print_table(args, f"MAP vs Laplace ({args.structure}, {la.n_params} parameters, prior precision "
                    f"{prior if isinstance(prior, float) else 'per layer'})", ["held-out", "MAP", "Laplace"], rows)
    if args.out:
        save_json(args.out, result, overwrite=args.overwrite)
    if args.plot:
        plot_reliability({"MAP": map_cal, "Laplace": la_cal}, args.plot, overwrite=args.overwrite,
                         title=f"Reliability: MAP vs Laplace ({args.structure})")
    return 0
