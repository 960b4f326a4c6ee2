"""Session fixtures of the audit: the committed catalogue models and their committed JAX reference.

``fixtures/`` holds every catalogue model saved as ``.keras`` and the float64 JAX reference of every quantity
(``reference.npz``), both written by ``python -m tests.soundness.regenerate``; ``test_oracle.py`` re-runs the
live JAX reference on a few of them so the pipeline itself stays checked. Cells whose computation could crash
the interpreter (vectorised paths through attention layers) run in a child process, restarted after a crash
(see ``isolated.py``). With ``TFPARTIALS_AUDIT_WRITE=1`` the session writes every cell's record to
``tests/soundness/results.json`` (``render.py`` turns it into ``docs/soundness.md``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.soundness import catalogue as C
from tests.soundness.regenerate import DENSE_HESSIAN_LIMIT, FIXTURES, SECOND_OPINION  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).with_name("results.json")


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
    entry: dict       # the model's line in fixtures/manifest.json


class Audit:
    """The committed models and their JAX reference arrays."""

    def __init__(self, built: dict, reference: dict, manifest: dict):
        self.built, self.reference, self.manifest = built, reference, manifest
        self.arrays = str(FIXTURES / "arrays.npz")

    def ref(self, key: str, name: str):
        return self.reference.get(f"{key}:{name}")


def _load_all() -> Audit:
    import tfpartials as tp

    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    entries = {e["key"]: e for e in manifest["models"]}
    with np.load(FIXTURES / "arrays.npz") as f:
        arrays = {k: f[k] for k in f.files}
    with np.load(FIXTURES / "reference.npz") as f:
        reference = {k: f[k] for k in f.files if k.split(":", 1)[0] in C.CASES}
    built = {}
    for case in C.CASES.values():
        if case.key not in entries:
            pytest.fail(f"no committed fixture for {case.key}: run python -m tests.soundness.regenerate")
        path = str(FIXTURES / entries[case.key]["path"])
        model = tp.load_model(path)
        names = list(tp.ParameterSpace(model).names)
        n = int(sum(int(np.prod(v.shape)) for v in model.trainable_variables))
        k = case.key
        built[k] = Built(case, model, arrays[f"{k}:x"], arrays[f"{k}:y"], arrays[f"{k}:v"], arrays[f"{k}:u"],
                         path, names, n, entries[k])
    return Audit(built, reference, manifest)


@pytest.fixture(scope="session")
def audit():
    """Every committed catalogue model loaded once, with its reference arrays."""
    return _load_all()


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
