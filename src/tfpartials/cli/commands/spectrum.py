"""tfpartials spectrum MODEL --data D [--operator hessian|ggn|fisher|kfac|ekfac] [--top-k K] [--trace] [--diagonal]
[--density] [--seed S] [--out s.json] [--plot density.png]"""

from __future__ import annotations

HELP = "curvature without the matrix: top eigenvalues, trace, diagonal and spectral density"
DESCRIPTION = (
    "Top eigenvalues (Lanczos), trace (Hutch++ or Hutchinson), diagonal (Hutchinson) and eigenvalue density "
    "(stochastic Lanczos quadrature) of the loss Hessian, the generalised Gauss-Newton matrix or the Fisher, "
    "from matrix-vector products only. With no quantity flag the top eigenvalues are computed. An operator with "
    "no more parameters than --num-matvecs (and no --max-matvecs below that) is summarised exactly from its "
    "dense matrix instead ('exact': true in the output), by the same rule as the report's curvature section.")


def add_arguments(p) -> None:
    from ..common import add_data_args, add_model_args, add_output_args

    add_model_args(p)
    add_data_args(p)
    add_output_args(p, help="write the results to this .json (eigenvalues, trace, density, diagonal)")
    p.add_argument("--operator", choices=["hessian", "ggn", "fisher", "kfac", "ekfac"], default="hessian",
                   help="curvature matrix: loss Hessian (default), generalised Gauss-Newton, Fisher, or their "
                        "Kronecker-factored (KFAC) / eigenvalue-corrected (EKFAC) approximations")
    p.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="number of top eigenvalues (default 3 when nothing else is asked, else 0)")
    p.add_argument("--which", choices=["largest", "smallest", "magnitude"], default="largest",
                   help="which end of the spectrum for --top-k (default largest)")
    p.add_argument("--tol", type=float, default=1e-6,
                   help="relative residual tolerance of the eigenvalues (float32 models are limited to about 1e-5: "
                        "use --precision float64 for tighter)")
    p.add_argument("--max-matvecs", type=int, default=None, metavar="M",
                   help="stop the eigenvalue solver after M matvecs (default: until converged, at most 25x basis)")
    p.add_argument("--trace", action="store_true", help="estimate the trace with standard error")
    p.add_argument("--trace-method", choices=["hutchpp", "hutchinson"], default="hutchpp",
                   help="trace estimator (default Hutch++)")
    p.add_argument("--diagonal", action="store_true", help="estimate the diagonal (per parameter) with errors")
    p.add_argument("--density", action="store_true", help="eigenvalue density by stochastic Lanczos quadrature")
    p.add_argument("--num-matvecs", type=int, default=99, metavar="M",
                   help="matrix-vector products for --trace and --diagonal each (default 99); operators with at "
                        "most this many parameters are summarised exactly from the dense matrix")
    p.add_argument("--num-probes", type=int, default=4, help="random probes for --density (default 4)")
    p.add_argument("--num-lanczos", type=int, default=64, help="Lanczos steps per probe for --density (default 64)")
    p.add_argument("--per-layer", action="store_true", help="also the top eigenvalue of each layer's block")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of every random probe (default 0)")
    p.add_argument("--plot", default=None, metavar="PNG", help="draw the density (implies --density) to this .png")


def _validate(args) -> None:
    from ..._checks import InputError
    from ..common import check_outputs

    if args.top_k is not None and args.top_k < 0:
        raise InputError(f"--top-k: expected a non-negative integer, got {args.top_k}")
    if args.num_matvecs < 1:
        raise InputError(f"--num-matvecs: expected a positive integer, got {args.num_matvecs}")
    if args.trace and args.trace_method == "hutchpp" and args.num_matvecs < 3:
        raise InputError(f"--num-matvecs: Hutch++ needs at least 3, got {args.num_matvecs}")
    for flag in ("num_probes", "num_lanczos"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')}: expected a positive integer, got {getattr(args, flag)}")
    if args.max_matvecs is not None and args.max_matvecs < 1:
        raise InputError(f"--max-matvecs: expected a positive integer, got {args.max_matvecs}")
    if args.seed < 0:
        raise InputError(f"--seed: expected a non-negative integer, got {args.seed}")
    if not args.tol > 0:
        raise InputError(f"--tol: expected a number > 0, got {args.tol}")
    check_outputs(args)
    if args.plot:
        args.density = True
    if args.top_k is None:
        args.top_k = 0 if (args.trace or args.diagonal or args.density) else 3
    if not (args.top_k or args.trace or args.diagonal or args.density or args.per_layer):
        raise InputError("nothing to compute: ask for --top-k K (K >= 1), --trace, --diagonal or --density")


def _operator(args, model, data):
    from ...linalg.curvature import ColumnLoopOperator, FisherOperator, GGNOperator, HessianOperator
    from ..common import current_strategy

    if args.operator in ("kfac", "ekfac"):
        from ...linalg.kfac import EKFACOperator, KFACOperator

        cls = KFACOperator if args.operator == "kfac" else EKFACOperator
        return cls(model, data, loss=args._loss, wrt=args.wrt, precision=args.precision, quiet=args.quiet)
    cls = {"hessian": HessianOperator, "ggn": GGNOperator, "fisher": FisherOperator}[args.operator]
    # one column per product, as in the report: one compiled function whatever width an estimator multiplies
    return ColumnLoopOperator(cls(model, data, loss=args._loss, wrt=args.wrt, batch_size=args.batch_size,
                                  precision=args.precision, strategy=current_strategy()))


def run(args) -> int:
    from ...estimators import layer_names, per_layer, summarize_curvature
    from ...io.writers import check_output_path, save_json
    from ..common import load_model_and_data, print_table

    _validate(args)
    if args.out:
        check_output_path(args.out, args.overwrite)
    if args.plot:
        check_output_path(args.plot, args.overwrite)
    model, data = load_model_and_data(args)
    op = _operator(args, model, data)
    n, quiet = op.n, args.quiet
    result: dict = {"operator": args.operator, "loss": args._loss.name, "num_parameters": n,
                    "num_examples": data.num_examples, "parameters": list(op.space.names) if op.space else None,
                    "seed": args.seed}
    rows: list[list] = []
    summary = None
    if args.top_k or args.trace or args.diagonal or args.density:
        summary = _quietly(summarize_curvature, op, top_k=args.top_k, which=args.which, tol=args.tol,
                           max_matvecs=args.max_matvecs, trace=args.trace, trace_method=args.trace_method,
                           num_matvecs=args.num_matvecs, diagonal=args.diagonal, density=args.density,
                           density_probes=args.num_probes, density_steps=args.num_lanczos, seed=args.seed,
                           quiet=quiet)
        result.update(summary.to_json())
        rows += _rows(summary, result, args.which)
        if summary.eigen is not None and not summary.eigen.converged:
            _note(f"the top eigenvalues did not reach --tol {args.tol:g} in {summary.eigen.num_matvecs} matvecs; "
                  "the residual norms bound their errors (see 'eigen' in the output)")
    if args.per_layer and op.space is not None:
        layers = {}
        for name, res in per_layer(lambda block: _block_top(block, args), op, layer_names(op.space)).items():
            layers[name] = res
            if res["eigenvalues"]:
                rows.append([f"layer {name}: top eigenvalue", res["eigenvalues"][0], res["residual_norms"][0],
                             res["num_matvecs"]])
        result["per_layer"] = layers
    result["num_matvecs"] = int(op.num_matvecs)
    if not quiet:
        print_table(args, f"{args.operator.capitalize()} spectrum ({n} parameters, {data.num_examples} examples, "
                    f"loss {args._loss.name})", ["quantity", "value", "error", "matvecs"], rows)
    if args.out:
        save_json(args.out, result, overwrite=args.overwrite)
    if args.plot:
        from ...reports.plots_spectrum import plot_density

        plot_density(summary.density, args.plot, result.get("eigenvalues"),
                     title=f"{args.operator.capitalize()} eigenvalue density", overwrite=args.overwrite)
    return 0


def _block_top(block, args) -> dict:
    """Top eigenvalue of one layer's block, by the same rules as the whole operator's (exact if small)."""
    from ...estimators import summarize_curvature

    res = _quietly(summarize_curvature, block, top_k=1, which=args.which, tol=args.tol,
                   max_matvecs=args.max_matvecs, num_matvecs=args.num_matvecs, seed=args.seed, quiet=args.quiet)
    eig = res.to_json()
    return {"eigenvalues": eig["eigenvalues"], "residual_norms": eig["eigen"]["residual_norms"],
            "num_matvecs": res.num_matvecs, "num_parameters": block.n, "converged": eig["eigen"]["converged"]}


def _rows(summary, result: dict, which: str) -> list[list]:
    """The printed table: quantity, value, error, matvecs."""
    import numpy as np

    rows: list[list] = []
    if "eigenvalues" in result:
        e = result["eigen"]
        rows += [[f"eigenvalue {i + 1} ({which})", v, r, e["num_matvecs"]]
                 for i, (v, r) in enumerate(zip(result["eigenvalues"], e["residual_norms"]))]
    if summary.trace is not None:
        tr = summary.trace
        rows.append([f"trace ({summary.trace_method})", tr.value, tr.std_error, tr.num_matvecs])
    if summary.diagonal is not None:
        dg = summary.diagonal
        rows.append(["diagonal: sum", float(dg.values.sum()), float(np.sqrt(np.sum(dg.std_error**2))),
                     dg.num_matvecs])
    if summary.density is not None:
        d = summary.density
        per_probe = np.sum(d.ritz_weights * d.ritz_values, axis=1)
        se = float(per_probe.std(ddof=1) / np.sqrt(per_probe.size)) if per_probe.size > 1 else float("nan")
        rows.append(["density: mean eigenvalue (trace/n)", d.moment(1), se, d.num_matvecs])
    return rows


def _quietly(fn, *args, **kwargs):
    """Call an eigen solver with its not-converged RuntimeWarning silenced (the command reports it itself)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="top_eigenvalues: not converged", category=RuntimeWarning)
        return fn(*args, **kwargs)


def _note(message: str) -> None:
    import sys

    sys.stderr.write(f"tfpartials: note: {message}\n")
