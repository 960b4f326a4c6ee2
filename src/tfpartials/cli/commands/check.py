"""tfpartials check MODEL --data D [--what gradients,hvp,jacobian] [--directions K] [--full] [--seed S]
[--rtol R] [--atol A] [--out check.json] [--overwrite]

Exit 0 when every check passes, 1 when one fails, 2 on bad input.
"""

from __future__ import annotations

HELP = "verify derivatives against float64 finite differences (exit 1 if a check fails)"
DESCRIPTION = ("Compare the library's gradients, Hessian-vector products and input Jacobians with central "
               "finite differences on a float64 copy of the model, and report what breaks derivatives (None "
               "gradients and the op that cut them, NaN/Inf, layers that depend on training mode). "
               "Exit 0 when every check passes, 1 when one fails, 2 on bad input.")


def add_arguments(p) -> None:
    from ..common import add_data_args, add_model_args, add_output_args

    add_model_args(p)
    add_data_args(p)
    add_output_args(p, help="write the results to this .json file")
    p.add_argument("--what", default="gradients,hvp,jacobian", metavar="LIST",
                   help="comma-separated checks among gradients, hvp, jacobian (default: all three)")
    p.add_argument("--directions", type=int, default=4, metavar="K",
                   help="random unit directions per variable in fast mode (default 4)")
    p.add_argument("--full", action="store_true", default=None,
                   help="check every coordinate (default: automatic, every coordinate up to 128)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the directions (default 0)")
    p.add_argument("--rtol", type=float, default=None, metavar="R",
                   help="relative tolerance (default by dtype: 1e-3 float32, 1e-6 float64)")
    p.add_argument("--atol", type=float, default=None, metavar="A",
                   help="absolute tolerance (default by dtype: 1e-5 float32, 1e-9 float64)")
    p.add_argument("--unconnected", choices=["error", "zero"], default="error",
                   help="a variable with a None gradient fails the check (error, default) or counts as zero")


def _validate(args) -> None:
    from ..._checks import InputError

    if args.directions < 1:
        raise InputError(f"--directions: expected a positive integer, got {args.directions}")
    if args.seed < 0:
        raise InputError(f"--seed: expected a non-negative integer, got {args.seed}")
    for flag in ("rtol", "atol"):
        value = getattr(args, flag)
        if value is not None and not (value >= 0 and value != float("inf")):
            raise InputError(f"--{flag}: expected a finite number >= 0, got {value}")
    if args.rtol is not None and args.rtol == 0:
        raise InputError("--rtol: expected a finite number > 0, got 0")


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def run(args) -> int:
    from ...io.writers import check_output_path, save_json
    from ...verification.checks import _parse_what, check
    from ..common import console, load_model_and_data, print_table

    _validate(args)
    what = _parse_what(args.what)
    if args.out:
        check_output_path(args.out, args.overwrite)
    model, data = load_model_and_data(args)
    report = check(model, data, loss=args._loss, what=what, wrt=args.wrt, directions=args.directions,
                   full=args.full, seed=args.seed, rtol=args.rtol, atol=args.atol, precision=args.precision,
                   unconnected=args.unconnected)
    if not args.quiet:
        rows = []
        for r in report.results:
            if r.skipped:
                rows.append([r.name, "skipped", "-", "-", "-", "-", r.skipped])
                continue
            mode = "all" if isinstance(r.directions, str) else f"{args.directions}/block"
            rows.append([r.name, "passed" if r.passed else "FAILED", _fmt(r.max_abs_error),
                         _fmt(r.max_rel_error), f"{r.details['rtol']:.0e}", mode, str(r.worst_variable)])
        print_table(args, f"Derivative checks against float64 finite differences ({data.num_examples} examples)",
                    ["check", "result", "abs err", "rel err", "rtol", "dirs", "worst"], rows)
        out = console(args)
        diag = report.diagnostics
        for cut in diag.gradient_cuts:
            out.print(f"None gradient: {cut.message}", markup=False)
        for bad in diag.non_finite:
            out.print(f"NaN/Inf: {bad.message}", markup=False)
        for dep in diag.training_dependent:
            out.print(f"training mode: layer {dep.layer!r} ({dep.class_name}) {dep.reason}; checks use "
                      "training=False", markup=False)
        for r in report.results:
            if "failure" in r.details:
                out.print(f"{r.name}: {r.details['failure']}", markup=False)
        out.print("all checks passed" if report.passed else "a check FAILED", markup=False)
    if args.out:
        save_json(args.out, {"model": args.model, "data": args.data, **report.to_dict()}, overwrite=args.overwrite)
    return 0 if report.passed else 1
