"""Run every benchmark in this folder, print one table, write results.json and BENCHMARKS.md.

Usage: python benchmarks/run.py [--quick] [--only NAME ...]

Each ``bench_<topic>.py`` exposes ``run(quick) -> rows``; every row is a ratio against a baseline measured in the
same run (fixed nested tapes, Python loops, and JAX / torch.func on identical weights when the ``bench`` extra is
installed).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import RESULTS, machine, peers, print_rows  # noqa: E402

ROOT = HERE.parent


def _fmt(v, digits=4):
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def write_markdown(result: dict, path: Path) -> None:
    m = result["machine"]
    v = m["versions"]
    lines = [
        "# Benchmarks",
        "",
        "Produced by `python benchmarks/run.py` (raw numbers in `benchmarks/results.json`). Every row is measured",
        "against a baseline in the same run; peers (JAX, torch.func) run on identical weights when the `bench`",
        "extra is installed. Wall-clock times, best of several repeats after a warm-up.",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM, no GPU",
        f"- Software: Python {m['python']}, TensorFlow {v.get('tensorflow')}, Keras {v.get('keras')}, "
        f"NumPy {v.get('numpy')}, JAX {v.get('jax') or 'not installed'}, torch {v.get('torch') or 'not installed'}",
        f"- Date: {m['date']}; mode: {'quick' if result.get('quick') else 'full'}"
        + ("; rows collected from each topic's own latest run (some measured while other work shared the "
           "cores: re-run for clean numbers)" if result.get("collected") else ""),
        "",
        "| benchmark | case | value | unit | baseline | baseline value | ratio | target | meets |",
        "|---|---|---:|---|---|---:|---:|---|---|",
    ]
    for r in result["rows"]:
        lines.append("| " + " | ".join([
            r["benchmark"], r["case"], _fmt(r["value"]), r["unit"], r.get("baseline") or "",
            _fmt(r.get("baseline_value")), _fmt(r.get("ratio"), 3), r.get("target") or "",
            _fmt(r.get("meets_target"))]) + " |")
    if result.get("errors"):
        lines += ["", "## Benchmarks that failed to run", ""]
        lines += [f"- `{name}`: {err}" for name, err in result["errors"].items()]
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller problems, fewer repeats")
    ap.add_argument("--only", nargs="*", default=None, help="topics to run (e.g. hessian per_example)")
    ap.add_argument("--no-markdown", action="store_true", help="do not rewrite BENCHMARKS.md")
    ap.add_argument("--from-results", action="store_true",
                    help="do not run anything: collect benchmarks/results/<topic>.json from earlier runs")
    args = ap.parse_args(argv)
    topics = sorted(p.stem[len("bench_"):] for p in HERE.glob("bench_*.py"))
    if args.only:
        topics = [t for t in topics if t in args.only]
    rows, errors = [], {}
    t0 = time.perf_counter()
    if args.from_results:
        for topic in topics:
            path = RESULTS / f"{topic}.json"
            if path.exists():
                rows.extend(json.loads(path.read_text())["rows"])
            else:
                errors[topic] = "no results yet (run python benchmarks/bench_" + topic + ".py)"
        topics = []
    for topic in topics:
        print(f"== {topic}", flush=True)
        try:
            mod = importlib.import_module(f"bench_{topic}")
            got = mod.run(quick=args.quick)
            print_rows(got)
            rows.extend(got)
            from _common import write

            write(topic, got)
        except Exception as exc:  # one failing benchmark does not hide the others
            traceback.print_exc()
            errors[topic] = f"{type(exc).__name__}: {exc}"
    result = {"machine": machine(), "peers": peers(), "quick": args.quick, "collected": args.from_results,
              "rows": rows, "errors": errors,
              "seconds": time.perf_counter() - t0}
    (HERE / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_markdown:
        write_markdown(result, ROOT / "BENCHMARKS.md")
    print(f"\n{len(rows)} rows, {len(errors)} errors, {result['seconds']:.0f} s; wrote benchmarks/results.json"
          + ("" if args.no_markdown else " and BENCHMARKS.md"))
    RESULTS.mkdir(exist_ok=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
