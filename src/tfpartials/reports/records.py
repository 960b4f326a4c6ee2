"""The report's record: results of every section plus provenance, as one JSON-ready dict.

Layout of ``results.json`` (format ``tfpartials-report/1``)::

    {"format", "title",
     "model":    {"name", "num_parameters", "num_variables", "inputs", "outputs"},
     "data":     {"num_examples", "kind", "feature_names"},
     "loss":     {"name", "value"},
     "summary":  {...headline numbers...},
     "sections": {"gradients": {"title", "status", "reason", "results", "plots"}, ...},
     "provenance": {"software", "platform", "model_file", "data_file", "seed", "settings", "timing"}}

Everything outside ``provenance.timing`` is a deterministic function of the model, the data and the settings:
re-running with the same seed gives byte-identical numbers. Wall-clock times and dates live only in
``provenance.timing``. Lists of records (``[{"name": ..., "norm": ...}, ...]``) are used instead of dicts keyed
by parameter names, so every number has a plain dotted path such as ``sections.gradients.results.per_variable.0.norm``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import InputError
from ..io.writers import to_jsonable

__all__ = ["REPORT_FORMAT", "SECTIONS", "SECTION_TITLES", "Section", "Status", "canonical_section", "file_sha256",
           "array_sha256", "software_versions", "provenance", "lookup", "now_iso", "load_results",
           "numeric_part", "summary_rows"]

REPORT_FORMAT = "tfpartials-report/1"

#: section keys in report order
SECTIONS: tuple[str, ...] = ("gradients", "per_example", "curvature", "attributions", "uncertainty", "influence",
                             "sensitivity", "check")

SECTION_TITLES: dict[str, str] = {
    "gradients": "Gradients per variable and layer",
    "per_example": "Per-example gradient norms",
    "curvature": "Curvature: Hessian eigenvalues, trace and spectral density",
    "attributions": "Input sensitivities (attributions)",
    "uncertainty": "Uncertainty: MAP vs Laplace calibration on held-out data",
    "influence": "Influence of training examples",
    "sensitivity": "Global sensitivity of the output to each input feature (DGSM)",
    "check": "Finite-difference check",
}

# names accepted by --skip / skip=, mapped to the section key
_ALIASES: dict[str, str] = {
    "gradients": "gradients", "gradient": "gradients",
    "per_example": "per_example", "per-example": "per_example", "per-example-gradients": "per_example",
    "curvature": "curvature", "spectrum": "curvature", "hessian": "curvature", "density": "curvature",
    "attributions": "attributions", "attribution": "attributions", "saliency": "attributions",
    "check": "check", "verification": "check", "finite-differences": "check",
    "uncertainty": "uncertainty", "laplace": "uncertainty", "calibration": "uncertainty",
    "influence": "influence", "self-influence": "influence",
    "sensitivity": "sensitivity", "dgsm": "sensitivity",
}

Status = str  # "ok" | "skipped" | "failed"


def canonical_section(name: str) -> str:
    """The section key for a user-facing name (``"spectrum"`` -> ``"curvature"``); InputError if unknown."""
    if not isinstance(name, str):
        raise TypeError(f"skip: expected section names (str), got {name!r}")
    key = _ALIASES.get(name.strip().lower().replace(" ", "-"))
    if key is None:
        raise InputError(f"skip: unknown section {name!r}; expected one of {', '.join(s.replace('_', '-') for s in SECTIONS)}"
                         " (aliases: spectrum, hessian, attribution, verification)")
    return key


@dataclass
class Section:
    """One section's outcome: ``status`` ``ok``/``skipped``/``failed``, its numbers, plots and
    ``notes`` (warnings raised while it ran, e.g. a slower fallback path) and ``reduced`` (settings cut to fit
    the time budget: ``{"what", "asked", "used"}``)."""

    key: str
    status: Status = "ok"
    reason: str | None = None
    results: dict[str, Any] = field(default_factory=dict)
    plots: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reduced: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"title": SECTION_TITLES.get(self.key, self.key), "status": self.status, "reason": self.reason,
                "notes": list(self.notes), "reduced": to_jsonable(self.reduced),
                "results": to_jsonable(self.results), "plots": list(self.plots)}


# ------------------------------------------------------------------------------------------------- hashes
def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, or of a directory (its files' relative paths and contents, in sorted order)."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(str(f.relative_to(p)).encode("utf-8") + b"\0")
            _update_file(h, f)
    else:
        _update_file(h, p)
    return h.hexdigest()


def _update_file(h, path: Path) -> None:
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)


def array_sha256(*arrays: Any) -> str:
    """SHA-256 over arrays' dtypes, shapes and bytes (nested lists of arrays allowed; None skipped)."""
    h = hashlib.sha256()

    def feed(a):
        if a is None:
            return
        if isinstance(a, list | tuple):
            for e in a:
                feed(e)
            return
        if isinstance(a, Mapping):
            for k in sorted(a):
                h.update(str(k).encode())
                feed(a[k])
            return
        arr = np.ascontiguousarray(np.asarray(a))
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())

    for a in arrays:
        feed(a)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- provenance
def software_versions() -> dict[str, str]:
    """Versions of tfpartials, TensorFlow, Keras, numpy, scipy, matplotlib and Python."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for label, dist in (("tfpartials", "tfpartials"), ("tensorflow", None), ("keras", "keras"),
                        ("numpy", "numpy"), ("scipy", "scipy"), ("matplotlib", "matplotlib")):
        try:
            if dist is None:
                import tensorflow as tf

                out[label] = str(tf.__version__)
            else:
                out[label] = version(dist)
        except (PackageNotFoundError, ImportError):  # pragma: no cover - optional pieces
            out[label] = "not installed"
    out["python"] = sys.version.split()[0]
    return out


def now_iso() -> str:
    """Current UTC time as ISO 8601 (seconds)."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def provenance(*, model_file: str | os.PathLike | None, model_digest: str | None,
               data_file: str | os.PathLike | None, data_digest: str | None, seed: int,
               settings: Mapping[str, Any], weights_digest: str | None = None) -> dict[str, Any]:
    """Everything needed to reproduce a report (``timing`` is filled in by the pipeline).

    ``model_file.sha256`` hashes the file as given; ``model_weights_sha256`` hashes the weights the numbers
    were computed from (also for a model passed in memory); ``data_file.sha256`` hashes the data file, or
    the arrays when the data came from memory.
    """
    return {
        "software": software_versions(),
        "platform": {"system": platform.system(), "machine": platform.machine(),
                     "python_implementation": platform.python_implementation()},
        "model_file": {"path": None if model_file is None else str(model_file), "sha256": model_digest},
        "model_weights_sha256": weights_digest,
        "data_file": {"path": None if data_file is None else str(data_file), "sha256": data_digest},
        "seed": int(seed),
        "settings": to_jsonable(dict(settings)),
        "timing": {},
    }


# ---------------------------------------------------------------------------------------------- reading
def lookup(results: Mapping[str, Any], key: str) -> Any:
    """The value at a dotted path such as ``"sections.gradients.results.per_variable.0.norm"``."""
    node: Any = results
    for part in key.split("."):
        if isinstance(node, list):
            node = node[int(part)]
        elif isinstance(node, Mapping):
            node = node[part]
        else:
            raise KeyError(key)
    return node


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``results.json`` (a report directory or the file itself).

    Example:
        >>> import os, tempfile, tfpartials as tp
        >>> from tfpartials.io.writers import save_json
        >>> tmp = tempfile.TemporaryDirectory()
        >>> _ = save_json(os.path.join(tmp.name, "results.json"), {"summary": {"gradient_norm": 3.0}})
        >>> tp.load_results(tmp.name)["summary"]                  # the directory ...
        {'gradient_norm': 3.0}
        >>> tp.load_results(os.path.join(tmp.name, "results.json")) == tp.load_results(tmp.name)   # ... or the file
        True
        >>> tmp.cleanup()
    """
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    with open(p) as fh:
        return json.load(fh)


def numeric_part(results: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``results`` without ``provenance.timing`` (the only part that changes between re-runs)."""
    out = json.loads(json.dumps(to_jsonable(results)))
    out.get("provenance", {}).pop("timing", None)
    return out


def _g(v: Any) -> str:
    return "n/a" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def summary_rows(results: Mapping[str, Any]) -> list[list[str]]:
    """One ``[section, status, headline]`` row per section, for the terminal summary table."""
    rows = []
    for key, sec in results.get("sections", {}).items():
        r = sec.get("results") or {}
        status = sec.get("status", "?")
        if status != "ok":
            text = sec.get("reason") or ""
        elif key == "gradients":
            text = f"loss {_g(r.get('loss'))}, gradient norm {_g(r.get('total_norm'))}"
            small = min(r.get("per_layer") or [{}], key=lambda e: e.get("norm", np.inf))
            if small.get("layer") is not None:
                text += f", smallest layer norm {_g(small.get('norm'))} ({small['layer']})"
        elif key == "per_example":
            n = r.get("norm", {})
            text = f"median norm {_g(n.get('median'))}, max {_g(n.get('max'))} over {_g(r.get('num_examples'))} examples"
        elif key == "curvature":
            ev = r.get("eigenvalues") or []
            tr = r.get("trace") or {}
            text = (f"top eigenvalues {', '.join(_g(e) for e in ev)}; trace {_g(tr.get('value'))}"
                    f" ± {_g(tr.get('std_error'))}")
        elif key == "attributions":
            text = f"{_g(r.get('num_attributed'))} examples; IG completeness delta ≤ {_g(r.get('max_completeness_delta'))}"
            top = (r.get("per_feature") or [{}])[0].get("feature")
            if top is not None:
                text += f"; most influential feature {top}"
        elif key == "uncertainty":
            cal = {c.get("metric"): c for c in r.get("calibration") or []}
            ece, nll = cal.get("ece", {}), cal.get("nll", {})
            text = (f"held-out ECE {_g(ece.get('map'))} (MAP) vs {_g(ece.get('laplace'))} (Laplace), NLL "
                    f"{_g(nll.get('map'))} vs {_g(nll.get('laplace'))}")
        elif key == "influence":
            hi = (r.get("self_influence") or {}).get("highest") or [{}]
            text = (f"{r.get('method')} over {_g(r.get('num_train'))} training examples; highest self-influence "
                    f"example {_g(hi[0].get('example'))}")
        elif key == "sensitivity":
            top = (r.get("per_feature") or [{}])[0]
            text = f"most sensitive feature {top.get('feature')} (share {_g(top.get('share'))})"
        elif key == "check":
            text = ("all derivatives agree with finite differences" if r.get("passed")
                    else "MISMATCH with finite differences: see the report")
            worst = max((c.get("max_rel_error") or 0.0 for c in r.get("checks") or []), default=None)
            if worst is not None:
                text += f" (max relative error {_g(worst)})"
        else:
            text = ""
        rows.append([key.replace("_", "-"), status, text])
    return rows
