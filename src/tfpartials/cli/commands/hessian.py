"""tfpartials hessian MODEL --data D [--loss L] [--wrt GLOB]... [--max-memory 2GiB] [--out H.npz]"""

from __future__ import annotations

HELP = "dense loss Hessian w.r.t. all or some variables, exact over the dataset (refused if too big)"
DESCRIPTION = (
    "Dense Hessian of the dataset loss with respect to the chosen variables, with per-block norms. Refused "
    "before any work when the matrix plus working space exceeds --max-memory (default 2GiB): use "
    "`tfpartials spectrum` for eigenvalues, trace and density without the matrix, or --wrt for fewer variables. "
    "The .npz holds `hessian` (n, n), `names` and `offsets` (start of each variable, then n).")
_MAX_ROWS = 24


def add_arguments(p) -> None:
    from ..common import add_data_args, add_model_args, add_output_args

    add_model_args(p)
    add_data_args(p)
    add_output_args(p, help="write the Hessian to this .npz (keys hessian, names, offsets)")
    p.add_argument("--max-memory", default="2GiB", metavar="SIZE",
                   help="refuse when the matrix plus working space would exceed this (default 2GiB)")
    p.add_argument("--method", choices=["auto", "forward", "reverse", "loop"], default="auto",
                   help="differentiation mode (default auto: forward-over-reverse, falling back)")
    p.add_argument("--unconnected", choices=["error", "zero"], default="error",
                   help="variables the loss does not depend on: error (default) or zero")
    p.add_argument("--no-regularization", action="store_true", help="leave out the model's regularisation losses")


def _table_rows(result) -> list[list]:
    import numpy as np

    norms = result.block_norms()
    names, m = result.names, len(result.names)
    rows = []
    for i in range(m):
        for j in range(i, m):
            blk = result.block(names[i], names[j])
            rows.append([names[i] if i == j else f"{names[i]} x {names[j]}", f"{blk.shape[0]}x{blk.shape[1]}",
                         float(norms[i, j]), float(np.max(np.abs(blk))) if blk.size else 0.0])
    if len(rows) > _MAX_ROWS:  # keep the diagonal blocks and the largest off-diagonal ones
        diagonal = [r for r in rows if " x " not in r[0]]
        rest = sorted((r for r in rows if " x " in r[0]), key=lambda r: -r[2])
        rows = diagonal[:_MAX_ROWS] + rest[:max(0, _MAX_ROWS - len(diagonal))]
    return rows


def run(args) -> int:
    import numpy as np

    from ...io.writers import check_output_path, save_npz
    from ..common import load_model_and_data, print_table

    if args.out:
        check_output_path(args.out, args.overwrite)
    model, data = load_model_and_data(args)
    from ...autodiff.hessian import hessian
    from ..common import current_strategy

    result = hessian(model, data, loss=args._loss, wrt=args.wrt, max_memory=args.max_memory,
                     precision=args.precision, method=args.method, unconnected=args.unconnected,
                     include_regularization=not args.no_regularization, quiet=args.quiet,
                     strategy=current_strategy())
    H = result.matrix
    if not args.quiet:
        rows = _table_rows(result)
        rows.append(["total", f"{H.shape[0]}x{H.shape[1]}", float(np.linalg.norm(H.astype(np.float64))),
                     float(np.max(np.abs(H))) if H.size else 0.0])
        print_table(args, f"Loss Hessian blocks ({data.num_examples} examples, loss {args._loss.name}, "
                          f"{H.dtype.name})", ["block", "shape", "Frobenius norm", "max |h|"], rows)
    if args.out:
        save_npz(args.out, {"hessian": H, "names": np.array(result.names), "offsets": np.array(result.offsets)},
                 overwrite=args.overwrite)
    return 0
