"""tfpartials jacobian MODEL --data X [--order 1|2] [--output NAME] [--input NAME] [--mode M] [--out J.npz]"""

from __future__ import annotations

HELP = "per-example Jacobian (and Hessian) of an output with respect to an input"
DESCRIPTION = ("Per-example derivatives of a model output with respect to its input, in inference mode: "
               "the Jacobian (B, out, in) and with --order 2 the Hessian of every output component "
               "(B, out, in, in); output and input dimensions are flattened in the file.")


def add_arguments(p) -> None:
    from ..common import add_data_args, add_model_args, add_output_args

    add_model_args(p)
    add_data_args(p, targets=False)
    add_output_args(p, help="write outputs, jacobian (and hessian) to this .npz")
    p.add_argument("--order", type=int, choices=[1, 2], default=1,
                   help="1: Jacobian; 2: Jacobian and Hessian of every output component")
    p.add_argument("--output", default=None, metavar="NAME", help="output name or index (multi-output models)")
    p.add_argument("--input", default=None, metavar="NAME",
                   help="input name or index (multi-input models; the other inputs are held fixed)")
    p.add_argument("--mode", choices=["auto", "forward", "reverse"], default="auto",
                   help="Jacobian mode (auto: forward when the input has fewer entries than the output)")
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="memory budget for results and working memory, e.g. 2GiB (default: half of free memory)")


def _name_or_index(value: str | None):
    if value is None:
        return None
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    return text


def run(args) -> int:
    import numpy as np

    from ...inputs import input_hessian, input_jacobian
    from ...inputs._model_fn import get_function
    from ...io.precision import with_precision
    from ...io.writers import check_output_path, save_npz
    from ..common import load_model_and_data, print_table

    if args.out:
        check_output_path(args.out, args.overwrite)
    model, data = load_model_and_data(args, targets=False)
    x, _ = data.arrays()
    model = with_precision(model, args.precision)  # one copy, shared by every pass below
    output, which_input = _name_or_index(args.output), _name_or_index(args.input)
    common = dict(output=output, input=which_input, max_memory=args.max_memory,
                  batch_size=args.batch_size, quiet=args.quiet)
    fn = get_function(model, which_input, output)
    prep = fn.prepare(x)
    B, n_in, n_out = prep.num_examples, prep.n_in, prep.n_out
    outputs = fn.outputs(prep, args.batch_size)
    J = input_jacobian(model, x, mode=args.mode, **common).reshape(B, n_out, n_in)
    arrays = {"outputs": outputs, "jacobian": J,
              "input_shape": np.array(prep.in_shape, np.int64), "output_shape": np.array(prep.out_shape, np.int64)}
    rows = [["jacobian", f"({B}, {n_out}, {n_in})", float(np.mean(np.abs(J))) if J.size else 0.0,
             float(np.max(np.abs(J))) if J.size else 0.0]]
    if args.order == 2:
        H = input_hessian(model, x, index="all", **common).reshape(B, n_out, n_in, n_in)
        arrays["hessian"] = H
        rows.append(["hessian", f"({B}, {n_out}, {n_in}, {n_in})", float(np.mean(np.abs(H))) if H.size else 0.0,
                     float(np.max(np.abs(H))) if H.size else 0.0])
    if not args.quiet:
        print_table(args, f"Derivatives of output {fn.output_name!r} w.r.t. input {fn.input_name!r} "
                          f"({B} examples, mode {args.mode})", ["quantity", "shape", "mean |.|", "max |.|"], rows)
    if args.out:
        save_npz(args.out, arrays, overwrite=args.overwrite)
    return 0
