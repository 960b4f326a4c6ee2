"""tfpartials report MODEL --data D [--eval E] [--loss L] --out DIR [--skip SECTION]... [--time-budget S] [--seed S]"""

from __future__ import annotations

HELP = "the whole picture in one HTML report: gradients, curvature, attributions, finite-difference check"
DESCRIPTION = (
    "Writes DIR/index.html (self-contained: plots embedded, opens offline), DIR/results.json (every number, "
    "with provenance) and the plots as PNGs. Sections: gradients, per-example, curvature (alias spectrum), "
    "attributions, uncertainty (with --eval held-out data), influence, sensitivity (tabular), check; skip any "
    "with --skip. Each section plans its work from the measured cost of one product to fit its share of "
    "--time-budget and says what it reduced; a section that starts after the budget is spent still runs, at "
    "its smallest size. Bad input fails before any work with exit 2 and no DIR; a "
    "section that fails is shown in the report and the others still run.")

SKIP_CHOICES = ["gradients", "per-example", "curvature", "spectrum", "attributions", "uncertainty", "influence",
                "sensitivity", "check"]


def add_arguments(p) -> None:
    from ...reports.run import DEFAULT_NUM_MATVECS, DEFAULT_PROBE_EXAMPLES, DEFAULT_TIME_BUDGET
    from ..common import add_data_args, add_model_args

    add_model_args(p)
    add_data_args(p)
    p.add_argument("--eval", default=None, metavar="E",
                   help="held-out data (same format as --data) for the uncertainty section: MAP vs Laplace "
                        "calibration")
    p.add_argument("--out", required=True, metavar="DIR", help="report directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DIR")
    p.add_argument("--skip", action="append", default=[], metavar="SECTION", choices=SKIP_CHOICES,
                   help=f"leave a section out (repeatable): {', '.join(SKIP_CHOICES)}")
    p.add_argument("--top-k", type=int, default=3, metavar="K", help="top Hessian eigenvalues (default 3)")
    p.add_argument("--num-matvecs", type=int, default=DEFAULT_NUM_MATVECS, metavar="M",
                   help=f"Hutch++ matvecs per trace estimate (default {DEFAULT_NUM_MATVECS})")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of every randomised estimator")
    p.add_argument("--max-examples", type=int, default=None, metavar="N",
                   help="use only the first N examples of the data (default all)")
    p.add_argument("--probe-examples", type=int, default=DEFAULT_PROBE_EXAMPLES, metavar="N",
                   help=f"examples in the curvature probe batch (default {DEFAULT_PROBE_EXAMPLES})")
    p.add_argument("--time-budget", type=float, default=DEFAULT_TIME_BUDGET, metavar="SECONDS",
                   help="seconds for the whole command, TensorFlow's start-up and loading included; sections "
                        f"size their work to fit what is left (default {DEFAULT_TIME_BUDGET:g})")
    p.add_argument("--title", default=None, help="title of the report page")


def run(args) -> int:
    from ...reports.run import build_report
    from ..common import current_strategy

    results = build_report(
        args.model, args.data, args.loss, args.out, skip=args.skip, top_k=args.top_k,
        num_matvecs=args.num_matvecs, seed=args.seed, time_budget=args.time_budget, quiet=args.quiet,
        overwrite=args.overwrite, batch_size=args.batch_size, max_examples=args.max_examples,
        probe_examples=args.probe_examples, wrt=args.wrt, precision=args.precision,
        from_logits=args.from_logits, target=args.target, allow_nan=args.allow_nan, trust=args.trust,
        title=args.title, strategy=current_strategy(), eval_data=args.eval, started=getattr(args, "started", None))
    print_summary(args, results, f"{args.out}/index.html")
    return 0


def print_summary(args, results, index: str) -> None:
    """The terminal summary: one row per section (status and headline numbers), then the path of the page."""
    from rich.table import Table

    from ...reports.records import summary_rows
    from ..common import console

    if getattr(args, "quiet", False):
        return
    table = Table(title=str(results.get("title", "report")), title_justify="left")
    table.add_column("section", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("result")
    styles = {"ok": "green", "failed": "red", "skipped": "yellow", "unavailable": "yellow"}
    for section, status, text in summary_rows(results):
        table.add_row(section, f"[{styles.get(status, 'white')}]{status}[/]", text)
    out = console(args)
    out.print(table)
    out.print(f"Report: {index}", highlight=False, soft_wrap=True)
