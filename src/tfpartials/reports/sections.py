"""The report's sections: one small function each, ``run(plan, section, directory, results)``.

Each fills ``section.results`` (JSON-ready numbers, lists of records rather than dicts keyed by names) and
``section.plots`` (``{"file", "caption"}``, the PNG written into ``directory`` when there is one), and may set
headline numbers in ``results["summary"]``. Each imports what it needs inside the function, so a part of
tfpartials that is missing only marks its section as unavailable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .records import Section

__all__ = ["RUNNERS", "ATTRIBUTED_IMAGES", "ATTRIBUTED_ROWS"]

ATTRIBUTED_IMAGES = 4   # images shown with their saliency and integrated-gradients maps
ATTRIBUTED_ROWS = 256   # tabular rows whose attributions are averaged per feature


def _f(x) -> float:
    return float(np.asarray(x, dtype=np.float64))


def _layer_groups(names: list[str]) -> list[tuple[str, list[str]]]:
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(n.rsplit("/", 1)[0] if "/" in n else n, []).append(n)
    return list(groups.items())


def _stats(values: np.ndarray) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": _f(v.mean()), "std": _f(v.std()), "min": _f(v.min()), "median": _f(np.median(v)),
            "max": _f(v.max()),
            "quantiles": [{"q": q, "value": _f(np.quantile(v, q))} for q in (0.05, 0.25, 0.75, 0.95)]}


# --------------------------------------------------------------------------------------------- gradients
def gradients(plan, sec: Section, directory: Path | None, results: dict) -> None:
    """Dataset-exact loss gradient: L2 norm, RMS and max |g| per variable, norm per layer (log bar chart)."""
    from ..autodiff.gradient import value_and_gradient

    obj = plan.objective
    value, flat = value_and_gradient(obj, plan.data, quiet=plan.quiet, description="gradient")
    g = obj.space.to_dict(flat.numpy())
    norms = {n: float(np.linalg.norm(a.astype(np.float64))) for n, a in g.items()}
    largest = max(norms.values()) if norms else 0.0
    per_var = []
    for n, a in g.items():
        a64 = a.astype(np.float64)
        per_var.append({"name": n, "shape": list(a.shape), "size": int(a.size), "norm": norms[n],
                        "rms": _f(np.sqrt(np.mean(a64 ** 2))) if a.size else 0.0,
                        "max_abs": _f(np.max(np.abs(a64))) if a.size else 0.0,
                        "relative_norm": norms[n] / largest if largest > 0 else 0.0})
    per_layer = []
    for layer, names in _layer_groups(list(g)):
        per_layer.append({"layer": layer, "num_parameters": int(sum(g[n].size for n in names)),
                          "norm": float(np.sqrt(sum(norms[n] ** 2 for n in names)))})
    total = float(np.sqrt(sum(v ** 2 for v in norms.values())))
    loss_value = _f(value.numpy())
    sec.results = {"loss": loss_value, "total_norm": total, "num_examples": int(plan.data.num_examples),
                   "per_variable": per_var, "per_layer": per_layer}
    results["loss"]["value"] = loss_value
    results["summary"]["loss"] = loss_value
    results["summary"]["gradient_norm"] = total
    if directory is not None:
        from .plots_gradients import plot_gradient_norms

        plot_gradient_norms([r["name"] for r in per_var], [r["norm"] for r in per_var],
                            directory / "gradients.png")
        sec.plots.append({"file": "gradients.png",
                          "caption": "L2 norm of the loss gradient per variable, log scale: vanishing "
                                     "gradients sit far left of the others, exploding ones far right."})


# ------------------------------------------------------------------------------------------- per example
def per_example(plan, sec: Section, directory: Path | None, results: dict) -> None:
    """Distribution of per-example gradient norms, and per-layer signal-to-noise ratios, on the first examples."""
    from ..autodiff.statistics import gradient_statistics
    from .plots_gradients import histogram

    data = plan.subset(plan.settings["per_example_examples"])
    stats = gradient_statistics(plan.objective, data, quiet=plan.quiet)
    norms = np.asarray(stats.norms, dtype=np.float64)
    counts, edges = histogram(norms)
    per_layer = []
    for layer, names in _layer_groups(list(stats.names)):
        layer_norms = np.sqrt(sum(np.asarray(stats.variable_norms[n], np.float64) ** 2 for n in names))
        per_layer.append({"layer": layer, "median_norm": _f(np.median(layer_norms)),
                          "max_norm": _f(layer_norms.max()), "mean_gradient_norm": _f(stats.layer_norm[layer]),
                          "snr": _f(stats.layer_snr[layer])})
    sec.results = {"num_examples": int(stats.num_examples), "norm": _stats(norms), "snr": _f(stats.total_snr),
                   "per_layer": per_layer, "vectorized": stats.fallback_op is None,
                   "histogram": {"counts": counts.tolist(), "edges": edges.tolist()}}
    if stats.fallback_op is not None:
        sec.results["fallback_op"] = str(stats.fallback_op)
    if directory is not None:
        from .plots_gradients import plot_norm_histogram

        plot_norm_histogram(counts, edges, directory / "per_example.png")
        sec.plots.append({"file": "per_example.png",
                          "caption": "How large each example's loss gradient is: a long right tail means a few "
                                     "examples dominate the mean gradient. A signal-to-noise ratio below one "
                                     "means the examples disagree more than they agree."})


# --------------------------------------------------------------------------------------------- curvature
def curvature(plan, sec: Section, directory: Path | None, results: dict) -> None:
    """Top-k Hessian eigenvalues, Hutch++ trace overall and per layer, and the SLQ spectral density."""
    from ..estimators import hutchpp_trace, layer_names, restrict, spectral_density, top_eigenvalues
    from ..linalg.curvature import HessianOperator

    s = plan.settings
    probe = plan.subset(s["probe_examples"])
    model, loss, wrt = plan.objective.model, plan.loss, s["wrt"]
    op = _one_column_at_a_time(HessianOperator(model, probe, loss=loss, wrt=wrt, strategy=plan.strategy))
    n = int(op.n)
    eig = _top(op, n, int(s["top_k"]), plan.seed("curvature"), top_eigenvalues, plan.quiet)
    eigenvalues = eig["eigenvalues"]
    tr = _trace(op, n, s["num_matvecs"], plan.seed("curvature", 1), hutchpp_trace, plan.quiet)
    out: dict[str, Any] = {
        "num_probe_examples": int(probe.num_examples), "num_parameters": n,
        "eigenvalues": eigenvalues, "eigen_residual_norms": eig["residual_norms"],
        "eigen_converged": eig["converged"], "eigen_num_matvecs": eig["num_matvecs"],
        "trace": tr, "trace_per_parameter": tr["value"] / n,
    }
    layers = []
    for i, layer in enumerate(layer_names(op.space)):
        if plan.out_of_time():
            sec.notes.append("per-layer traces stopped early: the time budget was used up")
            break
        block = restrict(op, layer)
        n_l = int(block.n)
        t_l = _trace(block, n_l, s["num_matvecs"], plan.seed("curvature", 10 + i), hutchpp_trace, plan.quiet)
        layers.append({"layer": layer, "num_parameters": n_l, "trace": t_l["value"],
                       "std_error": t_l["std_error"], "exact": t_l["exact"],
                       "trace_per_parameter": t_l["value"] / n_l})
    out["per_layer"] = layers
    dens = spectral_density(op, num_probes=s["density_probes"], num_lanczos=min(s["density_lanczos_steps"], n),
                            seed=plan.seed("curvature", 2), grid=256, quiet=plan.quiet)
    grid = np.asarray(dens.grid, dtype=np.float64)
    values = np.asarray(dens.values, dtype=np.float64)
    out["density"] = {"num_probes": int(s["density_probes"]), "grid": grid.tolist(), "values": values.tolist(),
                      "num_matvecs": int(getattr(dens, "num_matvecs", 0) or 0)}
    sec.results = out
    results["summary"]["top_eigenvalue"] = eigenvalues[0] if eigenvalues else None
    results["summary"]["trace"] = tr["value"]
    if directory is not None:
        from .plots_spectrum import plot_density

        plot_density(dens, directory / "spectrum.png", eigenvalues=eigenvalues,
                     title="Hessian eigenvalue density (probe batch)")
        sec.plots.append({"file": "spectrum.png",
                          "caption": "Hessian spectral density by stochastic Lanczos quadrature (smoothed), "
                                     "with the top eigenvalues from Lanczos marked."})


def _one_column_at_a_time(op):
    """``op`` with every product taken one column at a time.

    The estimators multiply blocks of different widths (Lanczos one vector, Hutch++ a sketch, then the sketch
    and the probes together); a compiled Hessian-vector product is traced once per width, and on a small
    model a trace costs far more than the products. One width means one trace for the whole section.
    """
    from .._backend import tf
    from ..linalg.operator import LinearOperator

    class OneColumn(LinearOperator):
        def __init__(self, parent):
            super().__init__(parent.n, parent.dtype, symmetric=parent.symmetric, psd=parent.psd,
                             space=parent.space)
            self.parent = parent

        def _matmat(self, V):
            cols = [self.parent.matmat(V[:, j:j + 1]) for j in range(int(V.shape[1]))]
            return tf.concat(cols, axis=1) if cols else tf.zeros_like(V)

    return OneColumn(op)


def _top(op, n: int, k: int, seed: int, top_eigenvalues, quiet: bool) -> dict[str, Any]:
    """Top-k eigenvalues by Lanczos (descending), or all of a tiny operator's from its dense matrix."""
    if k >= n:
        dense = np.asarray(op.to_dense(), dtype=np.float64)
        vals = np.sort(np.linalg.eigvalsh((dense + dense.T) / 2))[::-1]
        return {"eigenvalues": vals.tolist(), "residual_norms": [0.0] * n, "converged": True, "num_matvecs": n}
    eig = top_eigenvalues(op, k=k, seed=seed, quiet=quiet)
    vals = np.asarray(eig.eigenvalues, dtype=np.float64)
    order = np.argsort(-vals, kind="stable")
    return {"eigenvalues": vals[order].tolist(),
            "residual_norms": np.asarray(eig.residual_norms, dtype=np.float64)[order].tolist(),
            "converged": bool(eig.converged), "num_matvecs": int(eig.num_matvecs)}


def _trace(op, n: int, num_matvecs: int, seed: int, hutchpp_trace, quiet: bool) -> dict[str, Any]:
    """Exact trace from ``n`` unit-vector products when that is no dearer than Hutch++, else Hutch++."""
    if n <= num_matvecs:
        dense = np.asarray(op.to_dense(), dtype=np.float64)
        return {"value": float(np.trace(dense)), "std_error": 0.0, "num_matvecs": n, "exact": True}
    est = hutchpp_trace(op, num_matvecs=num_matvecs, seed=seed, quiet=quiet)
    return {"value": _f(est.value), "std_error": _f(est.std_error), "num_matvecs": int(est.num_matvecs),
            "exact": False}


# ------------------------------------------------------------------------------------------ attributions
def attributions(plan, sec: Section, directory: Path | None, results: dict) -> None:
    """Saliency and integrated gradients of the predicted class / output on the first examples."""
    from ..attribution.integrated_gradients import IntegratedGradients
    from ..attribution.saliency import Saliency

    if plan.kind == "multi-input":
        sec.status, sec.reason = "skipped", "attributions need a model with one input"
        return
    if not _floating_input(plan.objective.model):
        sec.status, sec.reason = "skipped", ("the model input is not floating-point (e.g. token ids), so it has no "
                                             "gradient to attribute")
        return
    count = ATTRIBUTED_ROWS if plan.kind == "tabular" else ATTRIBUTED_IMAGES
    x, _ = plan.data.first(count)
    model = plan.objective.model
    sal_m = Saliency(model)
    ig_m = IntegratedGradients(model, steps=plan.settings["integrated_gradients_steps"])
    targets = sal_m.targets(x)
    sal = np.asarray(sal_m.attribute(x), dtype=np.float64)
    ig, delta = ig_m.attribute(x, return_delta=True)
    ig = np.asarray(ig, dtype=np.float64)
    delta = np.abs(np.asarray(delta, dtype=np.float64))
    out: dict[str, Any] = {"num_attributed": int(len(x)), "integrated_gradients_steps":
                           int(plan.settings["integrated_gradients_steps"]),
                           "max_completeness_delta": _f(delta.max()),
                           "mean_abs_saliency": _f(np.mean(np.abs(sal))),
                           "mean_abs_integrated_gradients": _f(np.mean(np.abs(ig)))}
    if targets is not None and _labels(targets, model) is not None:
        out["explained_classes"] = [int(t) for t in np.asarray(targets)]
    if plan.kind == "tabular":
        names = plan.feature_names or [f"x[{i}]" for i in range(x.shape[1])]
        rows = [{"feature": str(names[j]), "mean_abs_saliency": _f(np.mean(np.abs(sal[:, j]))),
                 "mean_abs_integrated_gradients": _f(np.mean(np.abs(ig[:, j])))} for j in range(x.shape[1])]
        rows.sort(key=lambda r: -r["mean_abs_integrated_gradients"])
        out["per_feature"] = rows
    sec.results = out
    if directory is None:
        return
    from . import plots

    if plan.kind == "other":
        return  # sequences and other shapes: numbers only
    if plan.kind == "image":
        plots.plot_image_attributions(x, {"saliency": sal, "integrated gradients": ig},
                                      directory / "attributions.png", labels=_labels(targets, model))
        caption = ("Where the model looks: saliency and integrated gradients of the predicted class, "
                   "red raises the score, blue lowers it.")
    else:
        names = plan.feature_names or [f"x[{i}]" for i in range(x.shape[1])]
        plots.plot_feature_attributions({"integrated gradients": ig, "saliency": sal},
                                        directory / "attributions.png", feature_names=names)
        caption = "Mean absolute attribution per input feature (saliency and integrated gradients)."
    sec.plots.append({"file": "attributions.png", "caption": caption})


def _floating_input(model) -> bool:
    from .._backend import tf

    inputs = getattr(model, "inputs", None) or []
    dtype = getattr(inputs[0], "dtype", None) if inputs else None
    return dtype is None or tf.as_dtype(dtype).is_floating


def _labels(targets, model) -> list[str] | None:
    from ..io.signature import signature

    out = signature(model).output_shapes[0]
    if targets is None or int(np.prod([d or 1 for d in out])) <= 1:
        return None
    return [f"class {int(t)}" for t in np.asarray(targets)]


# ------------------------------------------------------------------------------------------------- check
def check(plan, sec: Section, directory: Path | None, results: dict) -> None:
    """Autodiff against float64 central differences in seeded random directions, on a few examples.

    Gradient, Hessian-vector product and input Jacobian are each compared in a few seeded directions; the
    diagnostics list cut gradients (and the op that cut them), NaN/Inf and layers that depend on ``training``.
    """
    from ..verification.checks import check as fd_check

    data = plan.subset(plan.settings["check_examples"])
    report = fd_check(plan.objective.model, data, loss=plan.loss, wrt=plan.settings["wrt"],
                      what=plan.settings["check_what"], seed=plan.seed("check"),
                      directions=plan.settings["check_directions"],
                      jacobian_examples=8)
    rows = []
    for r in report.results:
        rows.append({"check": str(r.name), "passed": bool(r.passed), "max_abs_error": _f(r.max_abs_error),
                     "max_rel_error": _f(r.max_rel_error), "worst": r.worst_variable,
                     "evaluations": int(r.num_evaluations), "skipped": r.skipped})
    diag = report.diagnostics
    found = [{"problem": "gradient cut", "where": c.variable, "detail": c.message} for c in diag.gradient_cuts]
    found += [{"problem": "NaN or Inf", "where": n.quantity, "detail": n.message} for n in diag.non_finite]
    found += [{"problem": "depends on training", "where": t.layer, "detail": t.reason}
              for t in diag.training_dependent]
    sec.results = {"passed": bool(report.passed), "num_examples": int(data.num_examples), "checks": rows,
                   "diagnostics": found}
    results["summary"]["check_passed"] = bool(report.passed)


RUNNERS = {"gradients": gradients, "per_example": per_example, "curvature": curvature,
           "attributions": attributions, "check": check}
