"""Session fixtures of the audit: every catalogue model built, saved, and differentiated once by JAX.

The JAX reference runs in ONE child process (``KERAS_BACKEND=jax``) for the whole matrix. Cells whose
computation could crash the interpreter (vectorised paths through attention layers) run in another child,
restarted after a crash (see ``isolated.py``). With ``TFPARTIALS_AUDIT_WRITE=1`` the session writes every cell's
record to ``tests/soundness/results.json`` (``render.py`` turns it into ``docs/soundness.md``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.soundness import catalogue as C

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).with_name("results.json")
DENSE_HESSIAN_LIMIT = 300
SECOND_OPINION = ("dense", "layer_norm", "batch_norm_training", "group_norm", "multi_head_attention",
                  "transformer")


@dataclass
class Built:
    case: C.Case
    model: object
    x: np.ndarray
    y: np.ndarray
    v: np.ndarray     # the HVP / GGN direction (float64, flat)
    u: np.ndarray     # a second direction for the central-difference check
    path: str
    names: list       # tfpartials' parameter names, in trainable_variables order
    n: int


class Audit:
    """The built models and the JAX reference, read model by model as the reference process writes it."""

    def __init__(self, built: dict, root: Path, proc: subprocess.Popen, timeout: float = 600.0):
        self.built, self.root, self.proc, self.timeout = built, root, proc, timeout
        self.reference: dict[str, dict] = {}

    def _load(self, key: str) -> dict:
        if key not in self.reference:
            path = self.root / "reference" / f"{key}.npz"
            deadline = time.monotonic() + self.timeout
            while not path.exists():
                if self.proc.poll() is not None and not path.exists():
                    err = (self.root / "jax_stderr.txt").read_text()
                    pytest.fail(f"the JAX reference process ended (exit {self.proc.returncode}) without "
                                f"{key}:\n{err[-3000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"no JAX reference for {key} after {self.timeout:.0f} s")
                time.sleep(0.05)
            with np.load(path) as f:
                self.reference[key] = {k.split(":", 1)[1]: f[k] for k in f.files}
        return self.reference[key]

    def ref(self, key: str, name: str):
        ref = self._load(key)
        if "error" in ref:
            pytest.fail(f"the JAX reference failed on {key}: {ref['error']}")
        return ref.get(name)


def _build_all(root: Path) -> tuple[dict, dict]:
    import tfpartials as tp

    built, arrays, entries = {}, {}, []
    for case in C.CASES.values():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # LayerNormalization(rms_scaling=True) is deprecated, and audited
            model, x, y = C.make(case)
        path = str(root / f"{case.key}.keras")
        model.save(path)
        names = list(tp.ParameterSpace(model).names)
        n = int(sum(int(np.prod(v.shape)) for v in model.trainable_variables))
        rng = np.random.default_rng([7, n])
        v, u = rng.normal(size=n), rng.normal(size=n)
        built[case.key] = Built(case, model, x, y, v, u, path, names, n)
        for k, a in (("x", x), ("y", y), ("v", v), ("u", u)):
            arrays[f"{case.key}:{k}"] = a
        entries.append({"key": case.key, "path": path, "loss": case.loss, "training": case.training,
                        "float_input": case.float_input, "dense_hessian": n <= DENSE_HESSIAN_LIMIT,
                        "fd": case.key in SECOND_OPINION,
                        "paths": [v.path for v in model.trainable_variables]})
    np.savez(root / "arrays.npz", **arrays)
    return built, {"arrays": str(root / "arrays.npz"), "models": entries}


@pytest.fixture(scope="session")
def audit(tmp_path_factory):
    """Build and save every model, then start the JAX reference process (it runs alongside the tests)."""
    root = tmp_path_factory.mktemp("soundness")
    built, manifest = _build_all(root)
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "reference").mkdir()
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    log = open(root / "jax_stderr.txt", "w")  # a file, not a pipe: a full pipe would block the child
    proc = subprocess.Popen([sys.executable, "-m", "tests.soundness.jax_reference", str(root / "manifest.json"),
                             str(root / "reference")], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
    yield Audit(built, root, proc)
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    log.close()


_RECORDS: list[dict] = []


@pytest.fixture(scope="session")
def records():
    return _RECORDS


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("TFPARTIALS_AUDIT_WRITE") == "1" and _RECORDS:
        order = {k: i for i, k in enumerate(C.CASES)}
        from tests.soundness.test_matrix import not_applicable

        rows = sorted(_RECORDS + not_applicable(),
                      key=lambda r: (order.get(r["case"], 1e9), r["quantity"], r["precision"]))
        RESULTS.write_text(json.dumps({"batch": C.BATCH, "cells": rows}, indent=1) + "\n")
