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
    from ..common import check_outputs

    check_positive_float("--prior-precision", args.prior_precision)
    check_positive_float("--sigma-noise", args.sigma_noise)
    for flag in ("samples", "rank", "bins"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag}: expected a positive integer, got {getattr(args, flag)}")
    if args.seed < 0:
        raise InputError(f"--seed: expected a non-negative integer, got {args.seed}")
    check_outputs(args)
    if args.optimize == "gridsearch" and args.val is None:
        raise InputError("--optimize gridsearch needs validation data: --val VAL")


def _subset(args):
    if args.wrt:
        return list(args.wrt)
    return "last_layer" if args.subset.replace("_", "-") == "last-layer" else args.subset


def run(args) -> int:
    from ..._checks import InputError
    from ...bayes import plot_reliability
    from ...bayes.summary import likelihood_for, uncertainty_summary
    from ...io.writers import check_output_path, save_json
    from ..common import load_model_and_data, print_table

    _validate(args)
    for path in (args.out, args.plot):
        if path:
            check_output_path(path, args.overwrite)
    model, data = load_model_and_data(args)
    likelihood = args.likelihood or likelihood_for(args._loss.name)
    if args.plot and likelihood == "regression":
        raise InputError("--plot draws a reliability diagram, which needs --likelihood classification")
    result, la, cals = uncertainty_summary(
        model, data, args.eval, likelihood=likelihood, subset=_subset(args), structure=args.structure,
        optimize=args.optimize, val_data=args.val, prior_precision=args.prior_precision,
        sigma_noise=args.sigma_noise, link=args.link, n_samples=args.samples, bins=args.bins, loss=args._loss,
        seed=args.seed, target=args.target, rank=args.rank, batch_size=args.batch_size, precision=args.precision,
        max_memory=args.max_memory, quiet=args.quiet)
    result["subset"] = args.subset
    if not args.quiet:
        keys = ["nll", "rmse"] if likelihood == "regression" else ["nll", "ece", "mce", "brier", "accuracy"]
        rows = [[k, result["map"][k], result["laplace"][k]] for k in keys]
        rows.append(["log marginal likelihood", "", result["log_marginal_likelihood"]])
        prior = la.prior_precision
        print_table(args, f"MAP vs Laplace ({args.structure}, {la.n_params} parameters, prior precision "
                    f"{f'{prior:.4g}' if isinstance(prior, float) else 'per layer'})", ["held-out", "MAP", "Laplace"], rows)
    if args.out:
        save_json(args.out, result, overwrite=args.overwrite)
    if args.plot:
        plot_reliability(cals, args.plot, overwrite=args.overwrite,
                         title=f"Reliability: MAP vs Laplace ({args.structure})")
    return 0
