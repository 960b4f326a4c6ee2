"""tfpartials hvp MODEL --data D --vector v.npy|v.npz [--loss L] [--wrt GLOB]... [--out hv.npz]"""

from __future__ import annotations

HELP = "Hessian-vector product H v of the dataset loss (v from .npy, or .npz keyed by parameter name)"
DESCRIPTION = (
    "Hessian-vector product of the dataset loss, exact, by forward-over-reverse differentiation. The vector is a "
    ".npy holding the flat vector (parameters in model order) or an .npz with one array per parameter name. "
    "The output .npz has one array per parameter name, like `tfpartials gradients`.")


def add_arguments(p) -> None:
    from ..common import add_data_args, add_model_args, add_output_args

    add_model_args(p)
    add_data_args(p)
    p.add_argument("--vector", required=True, metavar="V",
                   help="v: .npy (flat, length n) or .npz (one array per parameter name, or a single array)")
    add_output_args(p, help="write H v to this .npz (one array per parameter name)")
    p.add_argument("--method", choices=["auto", "forward", "reverse", "loop"], default="auto",
                   help="differentiation mode (default auto: forward-over-reverse, falling back)")
    p.add_argument("--unconnected", choices=["error", "zero"], default="error",
                   help="variables the loss does not depend on: error (default) or zero")
    p.add_argument("--no-regularization", action="store_true", help="leave out the model's regularisation losses")


def read_vector(path: str):
    """A flat vector from .npy, or a dict (or a flat vector) from .npz; InputError for anything else."""
    from pathlib import Path

    import numpy as np

    from ..._checks import InputError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"--vector: no such file: {path}")
    suffix = p.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise InputError(f"--vector: expected a .npy or .npz file, got {p.name!r}")
    try:
        loaded = np.load(p, allow_pickle=False)
    except Exception as exc:  # corrupt file, object arrays
        raise InputError(f"--vector: cannot read {p.name} as {suffix} ({type(exc).__name__})") from None
    if suffix == ".npy":
        return loaded
    with loaded:
        arrays = {k: loaded[k] for k in loaded.files}
    if len(arrays) == 1:
        (only,) = arrays.values()
        if only.ndim == 1:
            return only
    return arrays


def run(args) -> int:
    import numpy as np

    from ...io.writers import check_output_path, save_npz
    from ..common import load_model_and_data, print_table

    if args.out:
        check_output_path(args.out, args.overwrite)
    v = read_vector(args.vector)
    model, data = load_model_and_data(args)
    from ...autodiff.hvp import hvp
    from ...autodiff.problem import prepare

    obj, data = prepare(model, data, args._loss, args.wrt, precision=args.precision,
                        include_regularization=not args.no_regularization, unconnected=args.unconnected)
    flat_v = obj.space.vector_from(v, obj.dtype).numpy()
    from ..common import current_strategy

    hv = hvp(obj, data, flat_v, method=args.method, quiet=args.quiet, strategy=current_strategy())
    if not args.quiet:
        rows = []
        for name, a in hv.items():
            vi = flat_v[obj.space.slice_of(name)].astype(np.float64)
            rows.append([name, str(tuple(a.shape)), float(np.linalg.norm(a)), float(vi @ a.ravel())])
        flat_hv = np.concatenate([a.ravel() for a in hv.values()]).astype(np.float64)
        vv = float(flat_v.astype(np.float64) @ flat_v)
        rows.append(["total", str(flat_hv.size), float(np.linalg.norm(flat_hv)), float(flat_v @ flat_hv)])
        title = f"Hessian-vector product ({data.num_examples} examples, loss {obj.loss.name})"
        if vv > 0:
            title += f"; v^T H v / v^T v = {float(flat_v @ flat_hv) / vv:.6g}"
        print_table(args, title, ["parameter", "shape", "L2 norm of Hv", "v.Hv"], rows)
    if args.out:
        save_npz(args.out, hv, overwrite=args.overwrite)
    return 0
