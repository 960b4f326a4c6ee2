"""tfpartials influence MODEL --train TR --test TE [--method exact|cg|lissa|arnoldi|ekfac|tracin] [--top-k K]
[--damping D] [--curvature ggn|hessian] [--self] [--out influence.npz]"""

from __future__ import annotations

HELP = "influence of training examples on test losses (which training data made this prediction)"
DESCRIPTION = (
    "Influence functions (Koh & Liang 2017): scores[j, i] = (1/N) grad l(test_j)^T (H + damping I)^-1 "
    "grad l(train_i), the predicted change in the loss of test example j when training example i is left out "
    "and the model refit; positive = i helped, negative = i hurt. H is the curvature of the training objective "
    "(mean loss + regularisation). With --self, the self-influence of every training example instead "
    "(large = mislabelled or atypical). Writes scores, the top-k helpful and harmful training indices per test "
    "example, and the definition into the .npz.")

METHODS = ("exact", "cg", "lissa", "arnoldi", "ekfac", "tracin")


def add_arguments(p) -> None:
    from ..common import add_model_args, add_output_args

    add_model_args(p)
    p.add_argument("--train", required=True, metavar="TR",
                   help="training data: .npz (x, y), .npy is not enough (targets needed), .csv with --target")
    p.add_argument("--test", default=None, metavar="TE", help="test data (same formats); not with --self")
    p.add_argument("--self", dest="self_influence", action="store_true",
                   help="self-influence of every training example (finds mislabelled data); no --test")
    p.add_argument("--method", choices=METHODS, default="exact",
                   help="inverse curvature: exact (dense), cg, lissa, arnoldi (top eigenpairs), ekfac, or tracin "
                        "(gradient dot products); default exact")
    p.add_argument("--curvature", choices=["ggn", "hessian"], default="ggn",
                   help="H: generalised Gauss-Newton (default) or Hessian of the training objective")
    p.add_argument("--damping", type=float, default=1e-3, metavar="D", help="lambda added to H (default 1e-3)")
    p.add_argument("--top-k", type=int, default=5, metavar="K",
                   help="most helpful / harmful training examples kept per test example (default 5)")
    p.add_argument("--rank", type=int, default=None, metavar="P", help="eigenpairs kept by arnoldi (default 50)")
    p.add_argument("--projection-dim", type=int, default=None, metavar="K",
                   help="random projection of the gradients to K dimensions (seeded; an unbiased estimate)")
    p.add_argument("--seed", type=int, default=0, help="seed of the projection (default 0)")
    p.add_argument("--max-memory", default=None, metavar="SIZE", help="working-memory budget, e.g. 2GiB")
    p.add_argument("--batch-size", type=int, default=None, help="examples per batch (default 128)")
    p.add_argument("--target", action="append", default=None, metavar="COL", help="CSV target column (repeatable)")
    p.add_argument("--allow-nan", action="store_true", help="accept NaN/Inf in the data")
    p.add_argument("--loss", default=None, help="Keras loss name (default: the loss stored with the model)")
    p.add_argument("--from-logits", action="store_true", default=None,
                   help="the model outputs logits (cross-entropy losses)")
    p.add_argument("--wrt", action="append", default=None, metavar="GLOB",
                   help="differentiate with respect to these variables only (name, glob or layer; repeatable)")
    add_output_args(p, default="influence.npz",
                    help="write scores, top-k indices and the definition to this .npz (default influence.npz)")


def _validate(args) -> None:
    import math

    from ..._checks import InputError

    if args.self_influence and args.test is not None:
        raise InputError("--self computes the self-influence of the training set; do not pass --test with it")
    if not args.self_influence and args.test is None:
        raise InputError("--test is required (or pass --self for the self-influence of the training set)")
    if args.top_k < 1:
        raise InputError(f"--top-k: expected a positive integer, got {args.top_k}")
    if not math.isfinite(args.damping) or args.damping < 0:
        raise InputError(f"--damping: expected a finite number >= 0, got {args.damping}")
    for flag in ("rank", "projection_dim", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise InputError(f"--{flag.replace('_', '-')}: expected a positive integer, got {value}")
    if args.seed < 0:
        raise InputError(f"--seed: expected a non-negative integer, got {args.seed}")
    if args.projection_dim is not None and args.self_influence:
        raise InputError("--projection-dim applies to train x test scores, not to --self")
    if not str(args.out).lower().endswith(".npz"):
        raise InputError(f"--out: expected a .npz file name, got {args.out!r}")


def run(args) -> int:
    import numpy as np

    from ... import load_model
    from ...influence import self_influence
    from ...influence.influence import influence
    from ...io.data import load_data
    from ...io.losses import resolve_loss
    from ...io.writers import check_output_path, save_npz
    from ..common import print_table

    _validate(args)
    check_output_path(args.out, args.overwrite)
    model = load_model(args.model, trust=args.trust)
    loss = resolve_loss(args.loss, args.from_logits, model)

    def data(path):
        return load_data(path, batch_size=args.batch_size, target=args.target, model=model, loss_name=loss.name,
                         allow_nan=args.allow_nan, require_targets=True)

    train = data(args.train)
    common = dict(method=args.method, damping=args.damping, curvature=args.curvature, wrt=args.wrt,
                  rank=args.rank, batch_size=args.batch_size, precision=args.precision,
                  max_memory=args.max_memory, quiet=args.quiet)
    header = {"method": np.array(args.method), "curvature": np.array(args.curvature),
              "damping": np.array(args.damping), "num_train": np.array(train.num_examples)}
    if args.self_influence:
        res = self_influence(model, train, loss, **common)
        top = res.top(args.top_k)
        arrays = {"self_influence": res.scores, "top": top, "top_scores": res.scores[top],
                  "definition": np.array(res.definition), **header}
        rows = [[f"train {int(i)}", float(res.scores[i])] for i in top]
        title = f"Largest self-influence ({args.method}, {train.num_examples} training examples)"
        columns = ["example", "self-influence"]
    else:
        test = data(args.test)
        res = influence(model, train, test, loss, projection_dim=args.projection_dim, seed=args.seed, **common)
        top = res.top(args.top_k)
        arrays = {"scores": res.scores, "top_helpful": top.helpful, "top_helpful_scores": top.helpful_scores,
                  "top_harmful": top.harmful, "top_harmful_scores": top.harmful_scores,
                  "definition": np.array(res.definition), **header}
        rows = [[f"test {j}", " ".join(map(str, top.helpful[j].tolist())),
                 " ".join(map(str, top.harmful[j].tolist()))] for j in range(min(res.num_test, 10))]
        title = (f"Influence ({args.method}): most helpful / harmful training examples per test example "
                 "(positive score = the example helped)")
        columns = ["test example", "helpful (train indices)", "harmful (train indices)"]
    if not args.quiet:
        print_table(args, title, columns, rows)
    save_npz(args.out, arrays, overwrite=args.overwrite)
    return 0
