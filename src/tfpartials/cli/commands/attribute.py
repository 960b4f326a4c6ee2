"""tfpartials attribute MODEL --data X --method saliency|gradient-x-input|integrated-gradients|smoothgrad
[--target T] [--layer NAME] [--vocab VOCAB.txt] [--steps N] [--baseline zeros|mean] [--samples N] [--noise STD]
[--seed S] [--out A.npz] [--plot A.png]"""

from __future__ import annotations

HELP = "attributions of an output to the inputs: saliency, gradient x input, integrated gradients, SmoothGrad"
DESCRIPTION = (
    "Attribute one output per example to every input element. --data holds inputs only (.npz 'x', .npy, or "
    ".csv with --label-column for a column to leave out). The .npz output has 'attributions' (the shape of x), "
    "'targets' (the output index explained per example) and, for integrated gradients, 'delta' (the "
    "completeness error sum(attributions) - (f(x) - f(baseline))). --layer NAME attributes at a layer's output "
    "instead of the inputs, summed over its feature axis: with token ids and --layer at the embedding, one score "
    "per token; --vocab (one token per line, line i = id i) adds the token strings ('tokens') and prints each "
    "example's top tokens. --plot draws heatmaps for image inputs and per-feature bars for tabular inputs.")

METHOD_CHOICES = ["saliency", "gradient-x-input", "integrated-gradients", "smoothgrad"]
# flag (dest) -> (constructor option, methods it applies to)
_OPTIONS = {
    "absolute": ("absolute", {"saliency"}),
    "steps": ("steps", {"integrated-gradients"}),
    "baseline": ("baseline", {"integrated-gradients"}),
    "rule": ("rule", {"integrated-gradients"}),
    "internal_batch_size": ("internal_batch_size", {"integrated-gradients"}),
    "samples": ("num_samples", {"smoothgrad"}),
    "noise": ("noise_std", {"smoothgrad"}),
    "seed": ("seed", {"smoothgrad"}),
    "inner": ("inner", {"smoothgrad"}),
}


def add_arguments(p) -> None:
    from ..common import add_model_args, add_output_args

    add_model_args(p)
    p.add_argument("--data", required=True, metavar="X",
                   help="inputs: .npz ('x' or the model input name), .npy, or .csv (header = feature names)")
    p.add_argument("--label-column", dest="target", action="append", default=None, metavar="COL",
                   help="CSV column to leave out of the inputs, e.g. the label (repeatable)")
    p.set_defaults(batch_size=None, allow_nan=False)
    p.add_argument("--method", required=True, choices=METHOD_CHOICES, help="attribution method")
    p.add_argument("--target", dest="attr_target", default=None, metavar="T",
                   help="what to explain: a class index, an output name, or NAME:INDEX (default: the predicted "
                        "class of a classifier, the single output of a regressor)")
    p.add_argument("--layer", default=None, metavar="NAME",
                   help="attribute at this layer's output (e.g. the embedding of a token model): one score per "
                        "position, summed over the feature axis")
    p.add_argument("--vocab", default=None, metavar="VOCAB.txt",
                   help="token strings, one per line (line i is token id i): written to the .npz as 'tokens' "
                        "and shown in the top tokens printed per example")
    p.add_argument("--top", type=int, default=5, help="tokens shown per example with --vocab (default 5)")
    g = p.add_argument_group("method options")
    g.add_argument("--absolute", action="store_true", default=None, help="saliency: |gradient|")
    g.add_argument("--steps", type=int, default=None, help="integrated gradients: quadrature steps (default 64)")
    g.add_argument("--baseline", choices=["zeros", "mean"], default=None,
                   help="integrated gradients: baseline input (default zeros; mean = mean input of --data)")
    g.add_argument("--rule", choices=["riemann_trapezoid", "gauss_legendre"], default=None,
                   help="integrated gradients: quadrature rule (default riemann_trapezoid)")
    g.add_argument("--internal-batch-size", type=int, default=None,
                   help="integrated gradients: interpolation points per compiled call (default: planned)")
    g.add_argument("--samples", type=int, default=None, help="smoothgrad: noisy copies averaged (default 32)")
    g.add_argument("--noise", type=float, default=None,
                   help="smoothgrad: noise std as a fraction of each input's value range (default 0.1)")
    g.add_argument("--seed", type=int, default=None, help="smoothgrad: seed of the noise (default 0)")
    g.add_argument("--inner", choices=[m for m in METHOD_CHOICES if m != "smoothgrad"], default=None,
                   help="smoothgrad: the method averaged (default saliency)")
    p.add_argument("--max-memory", default=None, help="working-memory budget, e.g. 1GiB (default: half of free)")
    add_output_args(p, help="write attributions, targets (and IG delta) to this .npz")
    p.add_argument("--plot", default=None, metavar="A.png", help="draw the attributions to this PNG")
    p.add_argument("--max-images", type=int, default=8, help="images drawn in the plot (default 8)")


def parse_target(text: str | None):
    """``"3"`` -> 3, ``"score"`` -> ``"score"``, ``"score:2"`` -> ``("score", 2)``."""
    from ..._checks import InputError

    if text is None:
        return None
    text = text.strip()
    name, _, index = text.rpartition(":") if ":" in text else ("", "", text)
    try:
        value = int(index)
    except ValueError:
        if name:
            raise InputError(f"--target: expected NAME:INDEX with an integer index, got {text!r}") from None
        return text
    if value < 0:
        raise InputError(f"--target: expected a non-negative index, got {value}")
    return (name, value) if name else value


def method_options(args) -> dict:
    """Constructor options from the flags given, refusing flags that do not apply to --method."""
    from ..._checks import InputError

    method = args.method
    applies = {method}
    if method == "smoothgrad":
        applies.add(args.inner or "saliency")
    options = {}
    for dest, (option, methods) in _OPTIONS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if not methods & applies:
            flag = "--" + dest.replace("_", "-")
            raise InputError(f"{flag} applies to {', '.join(sorted(methods))}, not to --method {method}"
                             + (f" with --inner {args.inner or 'saliency'}" if method == "smoothgrad" else ""))
        options[option] = value
    if args.max_memory is not None:
        options["max_memory"] = args.max_memory
    if args.layer is not None:
        options["layer"] = args.layer
    return options


def read_vocab(path: str) -> list[str]:
    """The tokens of a vocabulary file, one per line (line i is token id i)."""
    from pathlib import Path

    from ..._checks import InputError

    file = Path(path)
    if not file.is_file():
        raise InputError(f"--vocab: no such file {path!r}")
    try:
        tokens = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"--vocab: expected a UTF-8 text file with one token per line, got {path!r}") from None
    if not tokens:
        raise InputError(f"--vocab: {path!r} is empty")
    return tokens


def token_strings(x, vocab: list[str]):
    """The token string of every id in ``x`` (same shape); InputError for ids outside the vocabulary."""
    import numpy as np

    from ..._checks import InputError

    if not np.issubdtype(x.dtype, np.integer):
        raise InputError(f"--vocab: the inputs are not token ids (dtype {x.dtype}); --vocab needs integer inputs")
    bad = (x < 0) | (x >= len(vocab))
    if np.any(bad):
        raise InputError(f"--vocab: token id {int(x[bad][0])} is outside the vocabulary of {len(vocab)} lines")
    return np.asarray(vocab, dtype=str)[x]


def run(args) -> int:
    import numpy as np

    from ..._checks import InputError
    from ...io.writers import save_npz
    from ..common import check_outputs, load_model_and_data, print_table

    check_outputs(args)
    if args.max_images < 1:
        raise InputError(f"--max-images: expected a positive integer, got {args.max_images}")
    if args.top < 1:
        raise InputError(f"--top: expected a positive integer, got {args.top}")
    vocab = read_vocab(args.vocab) if args.vocab else None
    target = parse_target(args.attr_target)
    options = method_options(args)
    model, data = load_model_and_data(args, targets=False)
    from ...attribution.registry import make_method
    from ...io.precision import with_precision

    model = with_precision(model, args.precision)
    x, _ = data.arrays()
    method = make_method(args.method, model, **options)
    xs = method.check_inputs(x)
    tokens = token_strings(xs, vocab) if vocab is not None else None
    indices = method.targets(xs, target)  # resolved once: the predicted class is not recomputed below
    resolved = (target if isinstance(target, str) else target[0], indices) if isinstance(
        target, str | tuple) else indices
    if args.method == "integrated-gradients":
        attributions, delta = method.attribute(xs, resolved, return_delta=True)
    else:
        attributions = method.attribute(xs, resolved)
    arrays = {"attributions": attributions, "targets": indices}
    rows = [["examples", len(xs)], ["input shape", str(tuple(xs.shape[1:]))]]
    if args.layer is not None:
        rows += [["layer", args.layer], ["attribution shape", str(tuple(attributions.shape[1:]))]]
    rows += [["mean |attribution|", float(np.mean(np.abs(attributions)))],
             ["max |attribution|", float(np.max(np.abs(attributions)))]]
    if args.method == "integrated-gradients":
        arrays["delta"] = delta
        change = np.abs(attributions.reshape(len(xs), -1).sum(axis=1, dtype=np.float64) - delta)
        rows += [["max |delta|", float(np.max(np.abs(delta)))],
                 ["max |delta| / |f(x) - f(baseline)|", float(np.max(np.abs(delta) / np.maximum(change, 1e-12)))]]
    per_input = attributions.shape == xs.shape
    if args.plot and not per_input:
        raise InputError(f"--plot: attributions at layer {args.layer!r} have shape "
                         f"{tuple(attributions.shape[1:])}, not the input's; drop --plot")
    if data.feature_names is not None and xs.ndim == 2 and per_input:
        arrays["feature_names"] = np.asarray(data.feature_names, dtype=str)
    if tokens is not None:
        arrays["tokens"] = tokens
    if not args.quiet:
        print_table(args, f"{args.method} ({model.name})", ["quantity", "value"], rows)
        if tokens is not None and per_input:
            top = []
            for i in range(min(len(xs), 5)):
                order = np.argsort(-np.abs(attributions[i].reshape(-1)), kind="stable")[:args.top]
                top += [[i, r + 1, str(tokens[i].reshape(-1)[j]), float(attributions[i].reshape(-1)[j])]
                        for r, j in enumerate(order)]
            print_table(args, "top tokens (by |attribution|)", ["example", "rank", "token", "score"], top)
        elif xs.ndim == 2 and per_input and args.layer is None:
            names = data.feature_names or [f"x{j}" for j in range(xs.shape[1])]
            imp = np.abs(attributions).mean(axis=0)
            order = np.argsort(-imp, kind="stable")[:15]
            print_table(args, "mean |attribution| per feature", ["feature", "mean |A|", "mean A"],
                        [[names[j], float(imp[j]), float(attributions[:, j].mean())] for j in order])
    if args.out:
        save_npz(args.out, arrays, overwrite=args.overwrite)
    if args.plot:
        from ...reports.plots import plot_attributions

        labels = [f"target {int(t)}" for t in indices]
        extra = {"max_images": args.max_images, "labels": labels} if xs.ndim in (3, 4) else {}
        plot_attributions(xs, {args.method: attributions}, args.plot, feature_names=data.feature_names,
                          overwrite=args.overwrite, **extra)
    return 0
