"""tfpartials demo [--out DIR] [--overwrite] [--quick]: the report on two bundled models, offline."""

from __future__ import annotations

HELP = "the report on two small bundled models (digits CNN, diabetes MLP); offline, about a minute"
DESCRIPTION = (
    "Trains (seeded, seconds; cached after the first run) a CNN on scikit-learn's bundled 8x8 digits and an "
    "MLP on scikit-learn's bundled diabetes table, runs the full report on each, and writes DIR/digits/, "
    "DIR/tabular/ (each with index.html, results.json and PNGs) and DIR/index.html linking both. Needs no "
    "network. --quick trains for fewer epochs and uses smaller probe sets and fewer matvecs.")

DEFAULT_OUT = "tfpartials-demo"


def add_arguments(p) -> None:
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DIR")
    p.add_argument("--quick", action="store_true", help="smaller budgets (for a smoke test)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the estimators")
    p.add_argument("--quiet", action="store_true", help="no progress or summary")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def budgets(quick: bool) -> dict:
    """Report settings of the demo: full (default) or quick."""
    if quick:
        return {"num_matvecs": 12, "top_k": 2, "probe_examples": 64, "per_example_examples": 64,
                "max_examples": 256, "time_budget": 120.0, "density_probes": 2, "density_steps": 16,
                "check_examples": 16, "check_directions": 2, "check_what": ("gradients", "hvp")}
    return {"num_matvecs": 60, "top_k": 3, "probe_examples": 256, "per_example_examples": 360,
            "max_examples": None, "time_budget": 150.0}


def build_demo(out, *, quick: bool = False, seed: int = 0, quiet: bool = False, overwrite: bool = False) -> dict:
    """Write the demo reports under ``out``; returns ``{"format", "title", "reports": [...]}`` (DIR/results.json)."""
    from pathlib import Path

    from ...examples import diabetes_mlp, digits_cnn
    from ...io.writers import atomic_directory, check_output_path, save_json
    from ...reports.html import render_index
    from ...reports.records import load_results
    from ...reports.run import normal_permissions, plan_report, run_plan

    check_output_path(out, overwrite, directory=True)
    say = (lambda m: None) if quiet else _say
    settings = budgets(quick)
    say("demo: loading (or training, seeded, a few seconds) the digits CNN ...")
    digits = digits_cnn(epochs=5 if quick else 15, seed=0)
    say("demo: loading (or training) the diabetes MLP ...")
    tab = diabetes_mlp(epochs=20 if quick else 60, seed=0)
    cut = int(0.6 * len(digits.x))  # the report's data, and held-out images for the uncertainty section
    plans = [
        ("digits", plan_report(digits.model, (digits.x[:cut], digits.y[:cut]), "sparse_categorical_crossentropy",
                               from_logits=True, seed=seed, quiet=quiet, eval_data=(digits.x[cut:], digits.y[cut:]),
                               title="Digits CNN on scikit-learn's handwritten digits (held-out images)",
                               **settings)),
        ("tabular", plan_report(tab.model, (tab.x, tab.y), "mse", feature_names=tab.feature_names, seed=seed,
                                quiet=quiet, title="Diabetes MLP on scikit-learn's diabetes table (held-out rows)",
                                **settings)),
    ]
    with atomic_directory(out, overwrite=overwrite) as tmp:
        entries = []
        for name, plan in plans:
            say(f"demo: report on the {name} model")
            sub = Path(tmp) / name
            sub.mkdir()
            run_plan(plan, sub)
            res = load_results(sub)
            entries.append({"href": f"{name}/index.html", "title": res["title"], "summary": res["summary"]})
        index = {"format": "tfpartials-demo/1", "title": "tfpartials demo", "reports": entries}
        save_json(Path(tmp) / "results.json", index)
        (Path(tmp) / "index.html").write_text(render_index(index["title"], entries), encoding="utf-8")
        normal_permissions(tmp)
    return index


def _say(msg: str) -> None:
    import sys

    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def run(args) -> int:
    import os

    from ...reports.records import load_results
    from .report import print_summary

    build_demo(args.out, quick=args.quick, seed=args.seed, quiet=args.quiet, overwrite=args.overwrite)
    for name in ("digits", "tabular"):
        print_summary(args, load_results(os.path.join(args.out, name)), os.path.join(args.out, name, "index.html"))
    if not args.quiet:
        from ..common import console

        console(args).print(f"Open {os.path.join(args.out, 'index.html')}", highlight=False, soft_wrap=True)
    return 0
