"""Turn the audit's ``results.json`` into ``docs/soundness.md``.

    TFPARTIALS_AUDIT_WRITE=1 python -m pytest tests/soundness -q     # writes tests/soundness/results.json
    python tests/soundness/render.py                                 # writes docs/soundness.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ("gradient", "hvp_forward", "hvp_reverse", "hvp_loop", "hessian", "ggn", "per_example",
         "input_jacobian", "input_hessian", "laplacian")
HEADER = {"gradient": "gradient", "hvp_forward": "HVP fwd", "hvp_reverse": "HVP rev", "hvp_loop": "HVP loop",
          "hessian": "Hessian", "ggn": "GGN·v", "per_example": "per-example", "input_jacobian": "input J",
          "input_hessian": "input H", "laplacian": "Laplacian"}
SYMBOL = {"exact": "✓", "exact-via-fallback": "✓ᶠ", "refused": "refused", "n/a": "–", "FAILED": "**FAILED**"}

INTRO = """# Soundness of tfpartials on the Keras layer catalogue

Every built-in Keras layer with weights or a nonlinearity, and every activation Keras knows, sits in a tiny
model (at most a few hundred parameters, {batch} examples) with a scalar loss. Each quantity below is computed
by tfpartials' public API and compared with an **independent reference**: the same saved `.keras` file loaded
on Keras' **JAX** backend in a separate process, rebuilt in float64, and differentiated with `jax.grad`,
`jax.jvp` (forward-over-reverse HVP), `jax.hessian`, `jax.vmap(jax.grad)` and `jax.jacrev` on
`model.stateless_call` (no TensorFlow involved). A few cells are also checked against float64 central
differences of the loss.

A cell passes when the relative error, per parameter block, is within **1e-9** for `precision="float64"`
and **1e-4** in float32; a block that is zero by symmetry (an attention key bias) is compared in absolute
terms against the norm of the whole vector. Each cell shows its float64 result (float32 where only that ran):

* ✓ exact · ✓ᶠ exact through a slower path that tfpartials names in a `FallbackWarning` (listed below)
* refused: tfpartials raises a one-line `InputError` naming the layer, instead of computing something wrong
* – not applicable (integer token inputs have no input derivatives; training-mode batch statistics couple
  the examples, so per-example and input derivatives are undefined)

Regenerate with `TFPARTIALS_AUDIT_WRITE=1 python -m pytest tests/soundness` then
`python tests/soundness/render.py`. The audit runs in CI (`tests/soundness/`).
"""


def _worst(rows: list[dict]) -> dict:
    rank = {"FAILED": 0, "refused": 1, "exact-via-fallback": 2, "exact": 3, "n/a": 4}
    return sorted(rows, key=lambda r: (rank.get(r["status"], 0), r["precision"] != "float64"))[0]


def render(data: dict) -> str:
    cells = data["cells"]
    layers: dict[str, str] = {}
    by: dict[tuple[str, str], list[dict]] = {}
    for r in cells:
        layers.setdefault(r["case"], r["layer"])
        by.setdefault((r["case"], r["quantity"]), []).append(r)
    lines = [INTRO.format(batch=data.get("batch", 4)), "## Matrix", "",
             "| layer | " + " | ".join(HEADER[q] for q in ORDER) + " |",
             "|---|" + "---|" * len(ORDER)]
    fallbacks: dict[str, set] = {}
    refusals, failures = [], []
    for case, layer in layers.items():
        row = []
        for q in ORDER:
            rows = by.get((case, q))
            if not rows:
                row.append(" ")
                continue
            r = _worst(rows)
            row.append(SYMBOL.get(r["status"], r["status"]))
            for f in r.get("fallbacks", []):
                fallbacks.setdefault(f, set()).add(layer)
            if r["status"] == "refused":
                refusals.append((layer, HEADER[q], r.get("reason", "")))
            if r["status"] == "FAILED":
                failures.append((layer, HEADER[q], r["precision"], r.get("reason", "")))
        lines.append(f"| {layer} | " + " | ".join(row) + " |")
    lines += ["", "## Fallbacks", ""]
    if fallbacks:
        lines += [f"* {', '.join(sorted(v))}: {k}" for k, v in sorted(fallbacks.items())]
    else:
        lines.append("None: every cell ran on the fastest path.")
    lines += ["", "## Refusals", ""]
    lines += [f"* {a} ({q}): {why}" for a, q, why in refusals] or ["None."]
    if failures:
        lines += ["", "## Open failures", ""]
        lines += [f"* {a} ({q}, {p}): {why}" for a, q, p, why in failures]
    notes = data.get("notes", [])
    if notes:
        lines += ["", "## Notes", ""] + [f"* {n}" for n in notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    src = Path(argv[0]) if argv else HERE / "results.json"
    dst = Path(argv[1]) if len(argv) > 1 else HERE.parents[1] / "docs" / "soundness.md"
    dst.write_text(render(json.loads(src.read_text())))
    print(f"wrote {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
