"""tfpartials kfac MODEL --data D [--fisher type-2|mc|empirical] [--kfac-approx expand|reduce] --out factors.npz"""

from __future__ import annotations

HELP = "Kronecker factors (KFAC) of the Gauss-Newton/Fisher matrix, per layer"
DESCRIPTION = (
    "Kronecker-factored approximate curvature of the mean loss: for every Dense, EinsumDense, Conv1D/2D, "
    "Embedding layer (and each input channel of a DepthwiseConv1D/2D, labelled L[c]; the projections of a "
    "MultiHeadAttention M, labelled M/query, M/key, M/value, M/attention_output) the input factor A and the "
    "output-gradient factor B (block = kron(A, B) on the row-major "
    "kernel-with-bias), and the exact diagonal for normalisation layers. The .npz holds, per layer L, `L/A`, "
    "`L/B` and `L/indices` (flat parameter positions), per normalisation parameter P (e.g. `ln/gamma`) `P/diag` "
    "and `P/indices`, plus `layers` (the block labels L or P, in order) and `num_examples`.")


def add_arguments(p) -> None:
    from ..common import add_data_args, add_model_args, add_output_args

    add_model_args(p)
    add_data_args(p)
    add_output_args(p, help="write the factors to this .npz")
    p.add_argument("--fisher", choices=["type-2", "mc", "empirical"], default="type-2",
                   help="output curvature: exact (type-2, default), Monte-Carlo targets, or observed targets")
    p.add_argument("--kfac-approx", choices=["expand", "reduce"], default="expand",
                   help="weight sharing (sequences, convolutions): expand (default) or reduce")
    p.add_argument("--mc-samples", type=int, default=1, metavar="M", help="targets per example for --fisher mc")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the Monte-Carlo targets (default 0)")
    p.add_argument("--max-memory", default="2GiB", metavar="SIZE",
                   help="refuse when the factors would exceed this (default 2GiB)")


def run(args) -> int:
    import numpy as np

    from ..._checks import InputError
    from ...io.writers import check_output_path, save_npz
    from ..common import load_model_and_data, print_table

    if args.mc_samples < 1:
        raise InputError(f"--mc-samples: expected a positive integer, got {args.mc_samples}")
    if args.seed < 0:
        raise InputError(f"--seed: expected a non-negative integer, got {args.seed}")
    if args.out:
        check_output_path(args.out, args.overwrite)
    model, data = load_model_and_data(args)
    from ...linalg.kfac import KFACOperator

    op = KFACOperator(model, data, loss=args._loss, wrt=args.wrt, fisher=args.fisher, mc_samples=args.mc_samples,
                      seed=args.seed, kfac_approx=args.kfac_approx, precision=args.precision, quiet=args.quiet,
                      max_memory=args.max_memory)
    # a diagonal block holds one parameter of a normalisation layer (gamma and beta are two): keyed by its name
    labels = [b.layer if b.kind == "kronecker" else b.names[0] for b in op.blocks]
    arrays: dict = {"layers": np.array(labels), "num_examples": np.array(op.num_examples)}
    rows = []
    for b, label in zip(op.blocks, labels):
        arrays[f"{label}/indices"] = b.indices
        if b.kind == "kronecker":
            arrays[f"{b.layer}/A"], arrays[f"{b.layer}/B"] = b.A, b.B
            rows.append([b.layer, ", ".join(b.names), f"{b.A.shape[0]}x{b.A.shape[0]}",
                         f"{b.B.shape[0]}x{b.B.shape[0]}", float(np.trace(b.A) * np.trace(b.B))])
        else:
            arrays[f"{label}/diag"] = b.diag
            rows.append([label, ", ".join(b.names), "diagonal", "", float(b.diag.sum())])
    if not args.quiet:
        print_table(args, f"KFAC factors ({args.fisher}, {args.kfac_approx}; {op.n} parameters, "
                    f"{op.num_examples} examples, loss {args._loss.name})",
                    ["layer", "parameters", "A", "B", "trace"], rows)
    if args.out:
        save_npz(args.out, arrays, overwrite=args.overwrite)
    return 0
