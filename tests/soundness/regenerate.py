"""Regenerate the audit's fixtures: the saved catalogue models and their float64 JAX reference arrays.

    python -m tests.soundness.regenerate            # every catalogue model (a few minutes: JAX traces them all)

Writes ``tests/soundness/fixtures/``:

* ``<key>.keras``      every catalogue model (``catalogue.make``: seeded weights), saved by Keras;
* ``arrays.npz``       per model its data ``x``, ``y`` and the directions ``v`` (HVP, GGN) and ``u`` (central
  differences), keyed ``<key>:<name>``;
* ``reference.npz``    the JAX reference (``jax_reference.py``, ``KERAS_BACKEND=jax``, float64) of every quantity,
  keyed ``<key>:<quantity>``;
* ``manifest.json``    what the reference process read (loss, training mode, variable paths, ...) and the versions.

The audit (``test_matrix.py``) compares tfpartials with ``reference.npz`` without starting JAX; ``test_oracle.py``
re-runs the live JAX reference on a few of these files and checks it still gives the committed arrays, and that
``catalogue.make`` still builds the committed models. Run this script after changing the catalogue.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FIXTURES = HERE / "fixtures"
DENSE_HESSIAN_LIMIT = 300
SECOND_OPINION = ("dense", "layer_norm", "batch_norm_training", "group_norm", "multi_head_attention",
                  "transformer")


def manifest_entry(case, model, path: str) -> dict:
    n = int(sum(int(np.prod(v.shape)) for v in model.trainable_variables))
    return {"key": case.key, "path": path, "loss": case.loss, "training": case.training,
            "float_input": case.float_input, "dense_hessian": n <= DENSE_HESSIAN_LIMIT,
            "fd": case.key in SECOND_OPINION, "n": n, "paths": [v.path for v in model.trainable_variables]}


def directions(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([7, n])
    return rng.normal(size=n), rng.normal(size=n)


def run_jax_reference(manifest: dict, workdir: Path, timeout: float = 3600) -> dict[str, np.ndarray]:
    """Run ``jax_reference.py`` on ``manifest`` in a child process; every reference array, keyed ``key:name``."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "manifest.json").write_text(json.dumps(manifest))
    (workdir / "reference").mkdir(exist_ok=True)
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "tests.soundness.jax_reference", str(workdir / "manifest.json"),
                           str(workdir / "reference")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the JAX reference process failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    out: dict[str, np.ndarray] = {}
    for entry in manifest["models"]:
        with np.load(workdir / "reference" / f"{entry['key']}.npz") as f:
            for k in f.files:
                if k.endswith(":error"):
                    raise RuntimeError(f"the JAX reference failed on {entry['key']}: {f[k]}")
                out[k] = f[k]
    return out


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ.get("TFPARTIALS_AUDIT_ONLY"):
        print("unset TFPARTIALS_AUDIT_ONLY: the fixtures hold the whole catalogue", file=sys.stderr)
        return 2
    from importlib.metadata import version

    import keras

    from tests.soundness import catalogue as C

    FIXTURES.mkdir(exist_ok=True)
    arrays, entries = {}, []
    for case in C.CASES.values():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # LayerNormalization(rms_scaling=True) is deprecated, and audited
            model, x, y = C.make(case)
        path = FIXTURES / f"{case.key}.keras"
        model.save(path)
        # the variable paths as loading gives them (both sides load the file; Bidirectional's differ when built)
        entry = manifest_entry(case, keras.saving.load_model(path, compile=False), str(path))
        v, u = directions(entry["n"])
        for k, a in (("x", x), ("y", y), ("v", v), ("u", u)):
            arrays[f"{case.key}:{k}"] = a
        entries.append(entry)
        print(f"saved {path.name} ({entry['n']} parameters)")
    np.savez(FIXTURES / "arrays.npz", **arrays)
    manifest = {"arrays": str(FIXTURES / "arrays.npz"), "models": entries}
    with tempfile.TemporaryDirectory() as tmp:
        reference = run_jax_reference(manifest, Path(tmp), timeout=3 * 3600)
    np.savez_compressed(FIXTURES / "reference.npz", **reference)
    for e in entries:  # committed with file names only
        e["path"] = Path(e["path"]).name
    (FIXTURES / "manifest.json").write_text(json.dumps(
        {"keras": keras.__version__, "jax": version("jax"), "batch": C.BATCH, "models": entries}, indent=1) + "\n")
    print(f"wrote {FIXTURES}: {len(entries)} models, {len(reference)} reference arrays")
    return 0


if __name__ == "__main__":
    sys.exit(main())
