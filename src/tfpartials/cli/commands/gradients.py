"""tfpartials gradients MODEL --data D [--loss L] [--wrt GLOB]... [--out g.npz]"""

from __future__ import annotations

HELP = "loss gradient for all or some variables, exact over the dataset"


def add_arguments(p) -> None:
    from ..common import add_data_args, add_model_args, add_output_args

    add_model_args(p)
    add_data_args(p)
    add_output_args(p, help="write gradients to this .npz (one array per parameter name)")
    p.add_argument("--unconnected", choices=["error", "zero"], default="error",
                   help="variables the loss does not depend on: error (default) or zero")
    p.add_argument("--no-regularization", action="store_true", help="leave out the model's regularisation losses")
    p.add_argument("--per-example", action="store_true", help="per-example gradient norms (with --full: gradients)")
    p.add_argument("--full", action="store_true", help="with --per-example, write the full per-example gradients")


def run(args) -> int:
    import numpy as np

    from ...io.writers import check_output_path, save_npz
    from ..common import current_strategy, load_model_and_data, print_table

    if args.out:
        check_output_path(args.out, args.overwrite)
    model, data = load_model_and_data(args)
    if args.per_example:
        from .per_example import run_per_example

        return run_per_example(args, model, data)
    from ...autodiff.gradient import gradients

    g = gradients(model, data, loss=args._loss, wrt=args.wrt, precision=args.precision,
                  include_regularization=not args.no_regularization, unconnected=args.unconnected,
                  quiet=args.quiet, strategy=current_strategy())
    rows = [[name, str(tuple(a.shape)), float(np.linalg.norm(a)), float(np.max(np.abs(a))) if a.size else 0.0]
            for name, a in g.items()]
    total = float(np.sqrt(sum(np.sum(np.square(a, dtype=np.float64)) for a in g.values())))
    rows.append(["total", str(sum(a.size for a in g.values())), total, max(r[3] for r in rows)])
    if not args.quiet:
        print_table(args, f"Loss gradient ({data.num_examples} examples, loss {args._loss.name})",
                    ["parameter", "shape", "L2 norm", "max |g|"], rows)
    if args.out:
        save_npz(args.out, g, overwrite=args.overwrite)
    return 0
