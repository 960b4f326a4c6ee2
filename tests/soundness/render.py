"""Turn the audit's ``results.json`` into ``docs/soundness.md``.

    python -m tests.soundness.regenerate                             # after a catalogue change: fixtures
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
SYMBOL = {"exact": "✓", "exact-via-fallback": "✓ᶠ", "refused": "refused", "n/a": "–", "FAILED": "**FAILED**",
          "known-failure": "✗ known"}

INTRO = """# Soundness of tfpartials on the Keras layer catalogue

Every built-in Keras layer with weights or a nonlinearity, and every activation Keras knows, sits in a tiny
model (at most a few hundred parameters, {batch} examples) with a scalar loss. Each quantity below is computed
by tfpartials' public API and compared with an **independent reference**: the same saved `.keras` file loaded
on Keras' **JAX** backend in a separate process, rebuilt in float64, and differentiated with `jax.grad`,
`jax.jvp` (forward-over-reverse HVP), `jax.hessian`, `jax.vmap(jax.grad)` and `jax.jacrev` on
`model.stateless_call` (no TensorFlow involved). Keras' JAX backend is patched in that process only where it
would compute in float32 (type promotion of float64, the attention softmax), and the reference checks its own
traced program holds no float32 value. A few models are also checked against float64 central differences of
the loss, independent of both autodiff engines.

The saved models and the reference arrays are committed (`tests/soundness/fixtures/`, written by
`python -m tests.soundness.regenerate`), so CI runs no JAX for the matrix; a test re-runs the live JAX
reference on two of the files and requires the committed arrays back (to 1e-10), and another rebuilds every
catalogue model from its seed and requires the committed weights and data exactly.

A cell passes when the relative error, per parameter block, is within **1e-9** for `precision="float64"`
and **1e-4** in float32; a block that is zero by symmetry (an attention key bias) is compared in absolute
terms against the norm of the whole vector. Every quantity runs in float64 on every model; float32 (the
default) runs for the gradient on every model and for every quantity on Dense,
LayerNormalization and the transformer block. Each cell shows its worst result over the precisions that ran:

* ✓ exact · ✓ᶠ exact through a slower path that tfpartials names in a `FallbackWarning` (listed below)
* refused: tfpartials raises a one-line `InputError` naming the layer, instead of computing something wrong
* ✗ known: a known failure, an `xfail` in the audit, listed below with what is known of its cause
* – not applicable (integer token inputs have no input derivatives; training-mode batch statistics couple
  the examples, so per-example and input derivatives are undefined)

Regenerate this page with `TFPARTIALS_AUDIT_WRITE=1 python -m pytest tests/soundness` then
`python tests/soundness/render.py`. The audit runs in CI (`tests/soundness/`, {cells} cells).
"""


NOTES = [
    "Float64 attention (found by this audit, fixed): Keras' TensorFlow backend applies the attention scale "
    "1/sqrt(key_dim) with `tf.cast(scale, logits.dtype)`, and `tf.cast` of a Python float goes through a float32 "
    "tensor, so in a float64 model MultiHeadAttention and GroupQueryAttention scaled their logits by a float32 "
    "constant (relative error 1.7e-8 for key_dim=2). tfpartials' float64 copy (`precision=\"float64\"`) now "
    "holds the scale as a float64 scalar; a model built natively in float64 by the user still goes through "
    "Keras' rounding.",
    "Moments (LayerNormalization, GroupNormalization, BatchNormalization in training): Keras' TensorFlow backend "
    "takes the variance around `stop_gradient(mean)`, which drops a term of every second derivative; tfpartials "
    "computes the statistics without it while it traces its own functions, which is what the ✓ above checks.",
    "Native crashes: oneDNN's broadcasting `BatchMatMulV2` kernel crashed `tf.vectorized_map` through an attention "
    "projection (per-example gradients of MultiHeadAttention); tfpartials rewrites that op while it vectorises. "
    "The audit runs the attention models' per-example and Hessian cells in a child process restarted after a "
    "crash, so a regression would show here as FAILED instead of killing the test run.",
]


def _worst(rows: list[dict]) -> dict:
    rank = {"FAILED": 0, "known-failure": 0.5, "refused": 1, "exact-via-fallback": 2, "exact": 3, "n/a": 4}
    return sorted(rows, key=lambda r: (rank.get(r["status"], 0), r["precision"] != "float64"))[0]


def render(data: dict) -> str:
    cells = data["cells"]
    layers: dict[str, str] = {}
    by: dict[tuple[str, str], list[dict]] = {}
    for r in cells:
        layers.setdefault(r["case"], r["layer"])
        by.setdefault((r["case"], r["quantity"]), []).append(r)
    counts: dict[str, int] = {}
    for r in cells:
        if r["status"] != "n/a":
            counts[r["status"]] = counts.get(r["status"], 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    lines = [INTRO.format(batch=data.get("batch", 4), cells=sum(counts.values())), "## Matrix", "",
             f"Cells checked (one per layer, quantity and precision): {summary}.", "",
             "| layer | " + " | ".join(HEADER[q] for q in ORDER) + " |",
             "|---|" + "---|" * len(ORDER)]
    fallbacks: dict[str, set] = {}
    refusals, failures, known = [], [], []
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
            if r["status"] == "known-failure":
                known.append((layer, HEADER[q], r["precision"], r.get("reason", "")))
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
    if known:
        lines += ["", "## Known failures", ""]
        lines += [f"* {a} ({q}, {p}): {why}" for a, q, p, why in known]
    if failures:
        lines += ["", "## Open failures", ""]
        lines += [f"* {a} ({q}, {p}): {why}" for a, q, p, why in failures]
    notes = [*data.get("notes", []), *NOTES]
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
