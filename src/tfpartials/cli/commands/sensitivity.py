"""tfpartials sensitivity MODEL --data X [--output O] [--component C] [--bounds LO:HI,...]
[--variances V,...] [--n-bootstrap N] [--confidence P] [--seed S] [--out s.json] [--plot s.png]"""

from __future__ import annotations

HELP = "global sensitivity of an output to each input (DGSM) with bootstrap intervals and Sobol bounds"
DESCRIPTION = (
    "Derivative-based global sensitivity measures nu_i = E[(df/dx_i)^2] over a sample of inputs (--data must "
    "be a sample of the input distribution), from exact gradients, with bootstrap intervals, normalised "
    "shares, mean |df/dx_i| and mean df/dx_i. With --bounds (uniform inputs) or --variances (normal inputs) "
    "also upper bounds on the Sobol total indices (Sobol' & Kucherenko 2009; Kucherenko & Iooss 2016). "
    "Write negative bounds with '=': --bounds=-3.1416:3.1416.")


def add_arguments(p) -> None:
    from ..common import add_data_args, add_model_args, add_output_args

    add_model_args(p)
    add_data_args(p, targets=False)
    add_output_args(p, help="write the measures to this .json")
    p.add_argument("--output", default=None, metavar="NAME", help="output name or index (multi-output models)")
    p.add_argument("--component", default=None, metavar="C",
                   help="output unit (flat index); required when the output has several")
    p.add_argument("--input", default=None, metavar="NAME",
                   help="input name or index (multi-input models; the other inputs keep their sampled values)")
    p.add_argument("--bounds", default=None, metavar="LO:HI[,LO:HI...]",
                   help="support of uniform inputs: one LO:HI for all, or one per input coordinate")
    p.add_argument("--variances", default=None, metavar="V[,V...]",
                   help="variances of normal inputs: one for all, or one per input coordinate")
    p.add_argument("--n-bootstrap", type=int, default=1000, metavar="N", help="bootstrap replicates (default 1000)")
    p.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the bootstrap (default 0)")
    p.add_argument("--max-memory", default=None, metavar="SIZE", help="working-memory budget, e.g. 1GiB")
    p.add_argument("--plot", default=None, metavar="PNG", help="draw ranked bars with intervals to this .png")


def _name_or_index(value: str | None):
    if value is None:
        return None
    text = value.strip()
    return int(text) if text.lstrip("-").isdigit() else text


def _numbers(flag: str, text: str) -> list[float]:
    from ..._checks import InputError

    try:
        return [float(t) for t in text.split(",")]
    except ValueError:
        raise InputError(f"{flag}: expected numbers separated by commas, got {text!r}") from None


def parse_bounds(text: str | None):
    """``"0:1"`` -> ``(0.0, 1.0)``; ``"0:1,-2:2"`` -> ``[(0.0, 1.0), (-2.0, 2.0)]``."""
    from ..._checks import InputError

    if text is None:
        return None
    pairs = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition(":")
        try:
            if not sep:
                raise ValueError
            pairs.append((float(lo), float(hi)))
        except ValueError:
            raise InputError(f"--bounds: expected LO:HI or LO:HI,LO:HI,... (one pair per input), got {text!r}"
                             ) from None
    return pairs[0] if len(pairs) == 1 else pairs


def sensitivity_figure(result, *, top_k: int = 20, dpi: int = 100):
    """Ranked horizontal bars: DGSM share with its interval and, when present, the Sobol total-index bounds."""
    import numpy as np

    from ...reports.plots import _new_figure

    order = result.ranking()[:top_k]
    k = len(order)
    panels = 2 if result.sobol_bound is not None else 1
    fig = _new_figure(4.2 * panels, 1.2 + 0.32 * k, dpi)
    pos = np.arange(k)[::-1].astype(float)
    labels = [result.names[i] for i in order]

    def bars(ax, value, interval, colour, xlabel):
        lo = np.maximum(value[order] - interval[order, 0], 0)
        hi = np.maximum(interval[order, 1] - value[order], 0)
        ax.barh(pos, value[order], color=colour, xerr=np.vstack([lo, hi]), ecolor="#333333", capsize=2)
        ax.set_yticks(pos)
        ax.set_yticklabels(labels, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.spines[["top", "right"]].set_visible(False)

    ax = fig.add_subplot(1, panels, 1)
    level = f"{100 * result.confidence:g}%"
    bars(ax, result.share, result.share_interval, "#c44e52", f"DGSM share nu_i / sum nu ({level} interval)")
    ax.set_title(f"global sensitivity of {result.output}[{result.component}] ({result.num_examples} examples)",
                 fontsize=10)
    if result.sobol_bound is not None:
        ax2 = fig.add_subplot(1, panels, 2)
        bound = np.minimum(result.sobol_bound, 1.0)
        interval = np.minimum(result.sobol_bound_interval, 1.0)
        bars(ax2, bound, interval, "#4c72b0", f"upper bound on Sobol S_T ({result.distribution}; capped at 1)")
        ax2.set_xlim(0, 1.05)
    fig.tight_layout()
    return fig


def run(args) -> int:
    from ..._checks import InputError
    from ...inputs.sensitivity import sensitivity
    from ...io.writers import save_json
    from ..common import check_outputs, load_model_and_data, print_table

    check_outputs(args)
    if args.bounds is not None and args.variances is not None:
        raise InputError("--bounds (uniform inputs) and --variances (normal inputs) exclude each other")
    bounds = parse_bounds(args.bounds)
    variances = None
    if args.variances is not None:
        variances = _numbers("--variances", args.variances)
        variances = variances[0] if len(variances) == 1 else variances
    component = None
    if args.component is not None:
        try:
            component = int(args.component)
        except ValueError:
            raise InputError(f"--component: expected an integer index, got {args.component!r}") from None
    model, data = load_model_and_data(args, targets=False)
    x, _ = data.arrays()
    result = sensitivity(model, x, _name_or_index(args.output), component, input=_name_or_index(args.input),
                         bounds=bounds, distribution="normal" if variances is not None else "uniform",
                         variances=variances, feature_names=data.feature_names, n_bootstrap=args.n_bootstrap,
                         confidence=args.confidence, seed=args.seed, precision=args.precision,
                         max_memory=args.max_memory, batch_size=args.batch_size, quiet=args.quiet)
    if not args.quiet:
        columns = ["input", "DGSM nu", "interval", "share", "mean |df/dx|", "mean df/dx"]
        if result.sobol_bound is not None:
            columns.append("S_T <=")
        rows = []
        for i in result.ranking()[:30]:
            lo, hi = result.dgsm_interval[i]
            row = [result.names[i], float(result.dgsm[i]), f"{lo:.3g}..{hi:.3g}", float(result.share[i]),
                   float(result.mean_abs[i]), float(result.mean[i])]
            if result.sobol_bound is not None:
                row.append(float(result.sobol_bound[i]))
            rows.append(row)
        print_table(args, f"Global sensitivity of {result.output}[{result.component}] ({result.num_examples} "
                          f"examples, Var f = {result.variance:.4g})", columns, rows)
    if args.out:
        record = result.to_dict()
        record["model_file"], record["data_file"] = str(args.model), str(args.data)
        save_json(args.out, record, overwrite=args.overwrite)
    if args.plot:
        from ...reports.plots import save_figure

        save_figure(sensitivity_figure(result), args.plot, overwrite=args.overwrite)
    return 0
