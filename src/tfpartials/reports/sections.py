"""The report's sections: one small function each, ``run(plan, section, directory, results)``.

Each fills ``section.results`` (JSON-ready numbers, lists of records rather than dicts keyed by names) and
``section.plots`` (``{"file", "caption"}``, the PNG written into ``directory`` when there is one), and may set
headline numbers in ``results["summary"]``. Each imports what it needs inside the function (the command
line's help stays free of TensorFlow); any failure marks only its own section as failed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .._tracing import short_reason
from .records import Section

__all__ = ["RUNNERS", "ATTRIBUTED_IMAGES", "ATTRIBUTED_ROWS"]

ATTRIBUTED_IMAGES = 4   # images shown with their saliency and integrated-gradients maps
ATTRIBUTED_ROWS = 256   # tabular rows whose attributions are averaged per feature
EIGEN_TOL = 1e-3        # relative Ritz residual of the top eigenvalues: three digits are what a report shows
TRACE_REL_TOL = 0.05    # the whole-model trace takes probes until its standard error is 5% of its value
MIN_VALIDATION_SPLIT = 48  # held-out examples from which a third chooses the Laplace prior (else the evidence)
MIN_CHECKED_VARIABLES = 8  # the check's fewest variables (evenly spread, first and last included)


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
    t0 = time.perf_counter()
    value, flat = value_and_gradient(obj, plan.data, quiet=plan.quiet, description="gradient")
    first = time.perf_counter() - t0
    _measure_gradient(plan, first)
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
    if type(obj.loss).__name__ == "MultiLoss":  # several outputs, each with its loss: each one's share of g
        from ..autodiff.multi_output import output_gradient_shares

        shares = output_gradient_shares(obj.model, plan.data, obj.loss, obj.space.names, quiet=True)
        sec.results["per_output"] = [
            {"term": n, "weight": _f(w), "loss": _f(v), "share_of_gradient": _f(sh), "norm": _f(nm)}
            for n, w, v, sh, nm in zip(shares.names, shares.weights, shares.values, shares.shares, shares.norms)]
    results["loss"]["value"] = loss_value
    results["summary"]["loss"] = loss_value
    results["summary"]["gradient_norm"] = total
    if directory is not None:
        _layer_chart(sec, directory, "gradients.png", per_layer, "norm", None,
                     "Loss gradient norm per layer", "L2 norm of the layer's loss gradient (log scale)",
                     "L2 norm of the loss gradient per layer, log scale: vanishing gradients sit far left of "
                     "the others, exploding ones far right.", log=True)


def _measure_gradient(plan, first_pass: float) -> None:
    """Seconds of one compiled gradient batch, and of tracing it, for the sections that plan from them."""
    from ..autodiff.gradient import value_and_gradient

    one = plan.subset(plan.data.batch_size)
    t0 = time.perf_counter()
    value_and_gradient(plan.objective, one, quiet=True)
    batch = time.perf_counter() - t0
    plan.costs["gradient_batch"] = batch
    plan.costs["gradient_example"] = batch / max(1, one.num_examples)
    # the input check traced this gradient already (same batch shape): its time, less one batch, is the trace
    plan.costs["gradient_trace"] = max(0.0, first_pass - batch * plan.data.num_batches,
                                       plan.costs.get("preflight_pass", 0.0) - batch)


def _gradient_costs(plan) -> tuple[float, float]:
    """(seconds per example gradient, seconds to trace a gradient), measured if no section did yet."""
    if "gradient_example" not in plan.costs:
        from ..autodiff.gradient import value_and_gradient

        one = plan.subset(plan.data.batch_size)
        t0 = time.perf_counter()
        value_and_gradient(plan.objective, one, quiet=True)
        _measure_gradient(plan, time.perf_counter() - t0)
    return plan.costs["gradient_example"], plan.costs["gradient_trace"]


# ------------------------------------------------------------------------------------------- per example
def per_example(plan, sec: Section, directory: Path | None, results: dict) -> None:
    """Distribution of per-example gradient norms, and per-layer signal-to-noise ratios, on the first examples."""
    from ..autodiff.statistics import gradient_statistics
    from .plots_gradients import histogram

    asked = int(plan.settings["per_example_examples"])
    bs = plan.data.batch_size
    if asked > 2 * bs and np.isfinite(plan.allotted):  # measure one compiled batch, then plan the examples
        one = plan.subset(bs)
        gradient_statistics(plan.objective, one, quiet=True)
        t0 = time.perf_counter()
        gradient_statistics(plan.objective, one, quiet=True)
        plan.costs["per_example_batch"] = time.perf_counter() - t0
        batches = plan.fit(sec, "per-example examples", -(-asked // bs), plan.costs["per_example_batch"],
                           unit="batch of examples")
        asked = min(asked, batches * bs)
    data = plan.subset(asked)
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
        if len(per_layer) > 1:
            _layer_chart(sec, directory, "per_example_layers.png", per_layer, "snr", None,
                         "Gradient signal-to-noise ratio per layer", "SNR: |mean gradient|² / total variance "
                         "(log scale)", "Signal-to-noise ratio of the per-example gradients per layer: layers "
                         "far below one get mostly noise from a mini-batch.", log=True)


# --------------------------------------------------------------------------------------------- curvature
#: the share of its time left the curvature section plans products for, and the seconds it keeps for the plot
CURVATURE_PLANNED, CURVATURE_TAIL_SECONDS = 0.9, 0.5


def _product_room(plan, cost: float) -> int:
    """Products of ``cost`` seconds the curvature section can still plan. A product timed alone leaves out the
    estimators' own work per product (Lanczos reorthogonalisation, the per-layer sums) and the plot at the
    end, about 10% more on MobileNetV2: so 90% of the time left, less half a second."""
    usable = CURVATURE_PLANNED * (plan.seconds_left() - CURVATURE_TAIL_SECONDS)
    return int(max(0.0, usable) / cost) if cost > 0 else 1 << 30


def curvature(plan, sec: Section, directory: Path | None, results: dict) -> None:
    """Top-k Hessian eigenvalues, trace overall and per layer from shared probes, and the SLQ density.

    The work is planned before it starts: one Hessian-vector product on one batch is timed, and the probe
    examples, then the density's and the trace's matvecs, are cut until the section fits its time share.
    """
    from .._backend import tf
    from ..estimators import summarize_curvature
    from ..estimators.summary import dense_route
    from ..linalg.curvature import ColumnLoopOperator, HessianOperator

    s = plan.settings
    model, loss, wrt = plan.objective.model, plan.loss, s["wrt"]
    k = int(s["top_k"])
    asked_examples = int(s["probe_examples"])
    trace_mv, dens_probes, dens_steps = int(s["num_matvecs"]), int(s["density_probes"]), int(s["density_lanczos_steps"])

    def operator(data):
        return ColumnLoopOperator(HessianOperator(model, data, loss=loss, wrt=wrt, strategy=plan.strategy))

    bs = plan.data.batch_size
    first = plan.subset(min(bs, asked_examples))
    op1 = operator(first)
    n = int(op1.n)
    v = tf.constant(np.random.default_rng(0).standard_normal((n, 1)), dtype=op1.dtype)
    t0 = time.perf_counter()
    op1.matmat(v)  # traces the product (the same compiled function serves every batch of the probe set)
    plan.costs["hvp_trace"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    op1.matmat(v)
    per_batch = plan.costs["hvp_batch"] = time.perf_counter() - t0
    least = (k + 10) + 8 + 8                       # the fewest products worth reporting (Lanczos, trace, density)
    retrace = plan.costs["hvp_trace"]
    if (least * per_batch > plan.seconds_left() and retrace < 0.5 * least * per_batch
            and first.num_examples > 8):
        # one batch is too dear even for that, and tracing a smaller one pays: fewer probe examples
        frac = (plan.seconds_left() - retrace) / (least * per_batch)
        fewer = int(max(8, min(first.num_examples - 1, 8 * int(first.num_examples * max(frac, 0.0) // 8))))
        plan.reduce(sec, "probe examples", asked_examples, fewer, f"{per_batch:.3g} s per product on "
                    f"{first.num_examples} examples")
        per_batch *= max(fewer / first.num_examples, 0.25)  # small batches do not get proportionally cheaper
        asked_examples = fewer
        first = plan.subset(fewer)
        op1 = operator(first)
    eig_cap = max(k + 20, 4 * (k + 10))          # Lanczos at tol 1e-3: usually k + 10 to 30 products
    expected = eig_cap + trace_mv + dens_probes * dens_steps
    batches = -(-asked_examples // bs)
    if asked_examples > bs:
        batches = plan.fit(sec, "probe batches", batches, per_batch * expected, unit="batch (all products)")
    examples = min(asked_examples, batches * bs)
    per_product = per_batch * batches
    plan.costs["hvp_product"] = per_product
    room = _product_room(plan, per_product) if per_product > 0 else expected
    if expected > room:  # even one batch is too dear: share the products that fit (about 3 : 2 : 1)
        # the eigenvalues first: Lanczos stops once they reach the tolerance, so products it does not need are
        # time saved, and top eigenvalues that have not converged are the least useful number on the page
        measured = f"{per_product:.3g} s per product"
        new_eig = max(k + 10, min(eig_cap, int(room * 0.5)))
        new_t = max(8, min(trace_mv, int(room * 0.3)))
        dens_room = max(8, room - new_eig - new_t)
        new_p = max(1, min(dens_probes, dens_room // max(8, dens_steps)))
        new_s = max(8, min(dens_steps, dens_room // new_p))
        if new_eig < eig_cap:
            plan.reduce(sec, "Lanczos matvecs (at most)", eig_cap, new_eig, measured)
        if new_t < trace_mv:
            plan.reduce(sec, "trace matvecs (at most)", trace_mv, new_t, measured)
        if (new_p, new_s) != (dens_probes, dens_steps):
            plan.reduce(sec, "density probes x Lanczos steps", f"{dens_probes} x {dens_steps}", f"{new_p} x {new_s}",
                        measured)
        eig_cap, trace_mv, dens_probes, dens_steps = new_eig, new_t, new_p, new_s
    probe = plan.subset(examples)
    op = op1 if probe.num_examples == first.num_examples else operator(probe)
    common = {"tol": EIGEN_TOL, "seed": plan.seed("curvature"), "quiet": plan.quiet}
    if dense_route(n, k, eig_cap, trace_mv):  # every number from the dense matrix, n products at once
        summary = summarize_curvature(op, top_k=k, max_matvecs=eig_cap, trace=True, trace_method="layerwise",
                                      num_matvecs=trace_mv, trace_rel_tol=TRACE_REL_TOL, density=True,
                                      density_probes=dens_probes, density_steps=dens_steps, **common)
    else:
        summary = _curvature_in_parts(plan, sec, op, k, eig_cap, trace_mv, dens_probes, dens_steps, per_product,
                                      common)
    out = _section_results(summary, int(probe.num_examples))
    tr, eigenvalues = out["trace"], out["eigenvalues"]
    if not summary.exact and summary.trace.stopped != "tolerance":
        est = summary.trace
        sec.notes.append(f"the trace's standard error is {est.relative_error:.0%} of its value after "
                         f"{est.num_matvecs} matvecs (asked {TRACE_REL_TOL:.0%}): the Hessian is indefinite "
                         "or the budget too small for that accuracy")
    sec.results = out
    results["summary"]["top_eigenvalue"] = eigenvalues[0] if eigenvalues else None
    results["summary"]["trace"] = tr["value"]
    if directory is not None:
        from .plots_spectrum import plot_density

        plot_density(summary.density, directory / "spectrum.png", eigenvalues=eigenvalues,
                     title="Hessian eigenvalue density (probe batch)")
        sec.plots.append({"file": "spectrum.png",
                          "caption": "Hessian spectral density by stochastic Lanczos quadrature (smoothed), "
                                     "with the top eigenvalues from Lanczos marked."})
        _layer_chart(sec, directory, "curvature_layers.png", out["per_layer"], "trace", "std_error",
                     "Hessian trace per layer (± 2 standard errors)", "trace of the layer's Hessian block",
                     "Curvature per layer: the trace of each layer's diagonal Hessian block, all from the same "
                     "probes as the whole-model trace.")


def _curvature_in_parts(plan, sec: Section, op, k: int, eig_cap: int, trace_mv: int, dens_probes: int,
                        dens_steps: int, per_product: float, common: dict):
    """Eigenvalues, then the trace, then the density, each re-planned from what the products before it really
    cost: the estimators' own work per product is not in the one product timed up front, and this machine's
    speed can drift within a section. The same seed and sizes give the numbers of one summarize_curvature
    call."""
    from dataclasses import replace

    from ..estimators import summarize_curvature

    def observed(t0: float, m0: int) -> float:
        done = op.num_matvecs - m0
        return max(per_product, (time.perf_counter() - t0) / done) if done else per_product

    t0, m0 = time.perf_counter(), op.num_matvecs
    eig = summarize_curvature(op, top_k=k, max_matvecs=eig_cap, exact_limit=0, **common)
    cost = observed(t0, m0)
    measured = f"{cost:.3g} s per product, as the eigenvalues took"
    left = _product_room(plan, cost)  # the trace and the density share it about 3 : 2, as planned
    new_t = max(8, min(trace_mv, left - min(dens_probes * dens_steps, max(8, int(0.4 * left)))))
    if new_t < trace_mv:
        plan.reduce(sec, "trace matvecs (at most)", trace_mv, new_t, measured)
    t0, m0 = time.perf_counter(), op.num_matvecs
    tr = summarize_curvature(op, top_k=0, trace=True, trace_method="layerwise", num_matvecs=new_t,
                             trace_rel_tol=TRACE_REL_TOL, exact_limit=0, **common)
    cost = observed(t0, m0)
    left = max(8, _product_room(plan, cost))
    new_p = max(1, min(dens_probes, left // max(8, dens_steps)))
    new_s = max(8, min(dens_steps, left // new_p))
    if (new_p, new_s) != (dens_probes, dens_steps):
        plan.reduce(sec, "density probes x Lanczos steps", f"{dens_probes} x {dens_steps}", f"{new_p} x {new_s}",
                    f"{cost:.3g} s per product, as the trace took")
    dens = summarize_curvature(op, top_k=0, density=True, density_probes=new_p, density_steps=new_s,
                               exact_limit=0, **common)
    return replace(eig, trace=tr.trace, trace_method=tr.trace_method, density=dens.density,
                   num_matvecs=eig.num_matvecs + tr.num_matvecs + dens.num_matvecs)


def _section_results(summary, probe_examples: int) -> dict[str, Any]:
    """The curvature summary in this section's ``results.json`` layout.

    The numbers are :meth:`~tfpartials.estimators.CurvatureSummary.to_json`'s (what ``tfpartials spectrum``
    writes); the layout keeps the report's keys: flat ``eigen_*`` fields, ``per_layer`` for the layer traces, and
    the density without its Gauss nodes (the page draws it; the nodes are in the command's output).
    """
    j = summary.to_json()
    eigen = j.get("eigen", {})
    density = {key: v for key, v in j["density"].items() if key not in ("ritz_values", "ritz_weights")}
    return {"num_probe_examples": probe_examples, "num_parameters": j["num_parameters"], "exact": j["exact"],
            "eigenvalues": j.get("eigenvalues", []), "eigen_residual_norms": eigen.get("residual_norms", []),
            "eigen_converged": eigen.get("converged", True), "eigen_num_matvecs": eigen.get("num_matvecs", 0),
            "eigen_tol": EIGEN_TOL, "trace": j["trace"], "trace_per_parameter": j["trace"]["value"] / j["num_parameters"],
            "per_layer": j.get("layer_traces", []), "density": {**density, "lanczos_steps": density["num_lanczos"]},
            "seed": j["seed"], "num_matvecs": j["num_matvecs"]}


def _layer_chart(sec, directory, file, rows, key, err_key, title, xlabel, caption, log=False) -> None:
    """A per-layer bar chart (at most 40 bars, the rest in the table below it)."""
    from .plots_layers import MAX_BARS, plot_layer_bars

    if not rows:
        return
    names = [r["layer"] for r in rows]
    values = [r[key] for r in rows]
    errors = [r.get(err_key) for r in rows] if err_key else None
    shown = plot_layer_bars(names, values, directory / file, errors=errors, title=title, xlabel=xlabel, log=log)
    if shown < len(rows):
        caption += (f" The {shown} largest of {len(rows)} layers are drawn (at most {MAX_BARS} bars); every "
                    "layer is in the table below (click a column to sort).")
    sec.plots.append({"file": file, "caption": caption})


# ------------------------------------------------------------------------------------------ attributions
def attributions(plan, sec: Section, directory: Path | None, results: dict) -> None:
    """Saliency and integrated gradients of the predicted class / output on the first examples."""
    from ..attribution.integrated_gradients import IntegratedGradients
    from ..attribution.saliency import Saliency

    if plan.kind == "multi-input":
        sec.status, sec.reason = "skipped", "attributions need a model with one input"
        return
    if not _floating_input(plan.objective.model):
        if _has_embedding(plan.objective.model):
            _token_attributions(plan, sec, directory)
            return
        sec.status, sec.reason = "skipped", ("the model input is not floating-point (e.g. token ids) and has no "
                                             "Embedding layer to attribute at")
        return
    count = ATTRIBUTED_ROWS if plan.kind == "tabular" else ATTRIBUTED_IMAGES
    steps = int(plan.settings["integrated_gradients_steps"])
    per_example, trace = _gradient_costs(plan)
    # IG: steps input gradients per example; saliency one; two traces (input gradients of a path and of a batch)
    steps = plan.fit(sec, "integrated-gradients steps", steps, per_example * count, fixed=2 * trace, minimum=8,
                     unit="step")
    count = plan.fit(sec, "attributed examples", count, per_example * (steps + 1), fixed=2 * trace,
                     minimum=1, unit="example")
    x, _ = plan.data.first(count)
    model = plan.objective.model
    sal_m = Saliency(model)
    ig_m = IntegratedGradients(model, steps=steps)
    targets = sal_m.targets(x)
    sal = np.asarray(sal_m.attribute(x), dtype=np.float64)
    ig, delta = ig_m.attribute(x, return_delta=True)
    ig = np.asarray(ig, dtype=np.float64)
    delta = np.abs(np.asarray(delta, dtype=np.float64))
    out: dict[str, Any] = {"num_attributed": int(len(x)), "integrated_gradients_steps": int(steps),
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


def _has_embedding(model) -> bool:
    from .._backend import keras

    return any(isinstance(layer, keras.layers.Embedding) for layer in model._flatten_layers(include_self=False))


def _token_attributions(plan, sec: Section, directory: Path | None) -> None:
    """Token models: integrated gradients at the embedding, one score per token, rendered as coloured text."""
    from ..attribution.tokens import token_attributions

    per_example, trace = _gradient_costs(plan)
    steps = plan.fit(sec, "integrated-gradients steps", int(plan.settings["integrated_gradients_steps"]),
                     per_example * ATTRIBUTED_ROWS, fixed=2 * trace, minimum=8, unit="step")
    x, _ = plan.data.first(ATTRIBUTED_ROWS)
    res = token_attributions(plan.objective.model, x, steps=steps)
    scores = np.asarray(res.scores, dtype=np.float64)
    sec.results = {"num_attributed": int(scores.shape[0]), "integrated_gradients_steps": int(steps),
                   "layer": res.layer, "max_completeness_delta": _f(np.max(np.abs(res.delta))),
                   "per_example": [{"example": i, "explained": int(res.targets[i]),
                                    "tokens": [str(t) for t in res.tokens[i]],
                                    "scores": [_f(v) for v in scores[i]]} for i in range(scores.shape[0])]}
    if directory is None:
        return
    from . import plots

    plots.plot_token_attributions(res.tokens, scores, directory / "attributions.png",
                                  labels=[f"class {int(t)}" for t in res.targets])
    sec.plots.append({"file": "attributions.png", "caption": (
        "Per-token integrated gradients at the embedding: red tokens raise the explained class's score, blue ones "
        "lower it (one colour scale per example).")})


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

    s = plan.settings
    per_example, trace = _gradient_costs(plan)
    what = list(s["check_what"])
    # float64 copies are built and traced afresh (with the diagnostics' passes): about 4, 8 and 3 float32
    # gradient traces for the gradient, HVP and input-Jacobian checks; each direction
    # costs a few float64 passes (about 3x a float32 one) over the examples
    trace_cost = {"gradients": 4.0, "hvp": 8.0, "jacobian": 3.0}  # measured on MobileNetV2 and small CNNs
    for dropped in ("hvp", "jacobian"):
        if dropped in what and len(what) > 1 and sum(trace_cost[w] for w in what) * trace > plan.seconds_left():
            plan.reduce(sec, "checks", ", ".join(what), ", ".join(w for w in what if w != dropped),
                        f"{trace:.3g} s to trace a gradient")
            what = [w for w in what if w != dropped]
    fixed = sum(trace_cost[w] for w in what) * trace
    per_direction = 3.0 * 8 * len(what) * per_example
    examples = plan.fit(sec, "check examples", int(s["check_examples"]), per_direction * s["check_directions"],
                        fixed=fixed, minimum=min(4, int(s["check_examples"])), unit="example")
    directions = plan.fit(sec, "check directions", int(s["check_directions"]), per_direction * examples,
                          fixed=fixed, minimum=1, unit="direction")
    # Every checked variable costs 2 x directions float64 forward passes over the examples, and its perturbed
    # copies of the parameters cost the host about 1e-8 s per parameter: on deep models (ResNet50: 214
    # variables, 23.6M parameters) check a spread of them, first and last included.
    names = list(plan.space.names)
    host = 1e-8 * plan.space.size / max(1, len(names))
    per_variable = 2 * directions * (3.0 * per_example * examples + host)
    if "gradients" in what or "hvp" in what:
        count = plan.fit(sec, "checked variables", len(names), per_variable, fixed=fixed,
                         minimum=min(len(names), MIN_CHECKED_VARIABLES), unit="variable")
        if count < len(names):
            names = [names[int(i)] for i in np.unique(np.linspace(0, len(names) - 1, count).round())]
    data = plan.subset(examples)
    report = fd_check(plan.objective.model, data, loss=plan.loss, wrt=names, what=what,
                      seed=plan.seed("check"), directions=directions, jacobian_examples=min(8, examples))
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
                   "num_variables_checked": len(names), "num_variables": len(plan.space.names),
                   "diagnostics": found}
    results["summary"]["check_passed"] = bool(report.passed)


# ----------------------------------------------------------------------------------------- uncertainty
_CLASSIFICATION = ("sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy")


def _class_labels(y, loss_name: str) -> np.ndarray:
    y = np.asarray(y)
    if loss_name == "categorical_crossentropy":
        return y.argmax(axis=-1)
    return y.reshape(-1).astype(np.int64) if loss_name == "binary_crossentropy" else y.reshape(-1)


def uncertainty(plan, sec: Section, directory: Path | None, results: dict) -> None:
    """MAP vs Laplace calibration on held-out data: last-layer KFAC Laplace, probit predictive.

    Needs ``eval_data`` (``--eval``) and a classification loss. The Laplace fit is one pass over the training
    data for the Kronecker factors of the last layer. Its prior precision is chosen on the first third of the
    held-out examples (the lowest probit NLL over a grid, as laplace-torch's validation search) and the
    calibration is measured on the other two thirds; with fewer than :data:`MIN_VALIDATION_SPLIT` held-out
    examples the evidence sets it instead. The evidence alone is often under-confident for a last-layer
    posterior on a well-trained network (the digits CNN: ECE 30% against the MAP's 4%), because most of the
    last layer's directions keep the prior's variance. The predictive costs one Jacobian of the outputs per
    held-out example.
    """
    from ..bayes import Laplace, calibration

    loss_name = plan.loss.name
    if plan.eval_data is None:
        sec.status, sec.reason = "skipped", "no held-out data given (--eval / eval_data=)"
        return
    if loss_name not in _CLASSIFICATION:
        sec.status, sec.reason = "skipped", (f"calibration needs a classification loss, got {loss_name!r}")
        return
    if not getattr(plan.loss, "from_logits", False):
        sec.status, sec.reason = "skipped", ("the Laplace predictive needs a model that outputs logits (this one "
                                             "ends in a softmax/sigmoid; the keras.applications default): build it "
                                             "with classifier_activation=None and pass --from-logits")
        return
    per_example, trace = _gradient_costs(plan)
    outputs = int(np.prod([d or 1 for d in plan.model.output_shape[1:]])) if hasattr(plan.model, "output_shape") else 1
    asked_train = plan.data.num_examples
    train_n = plan.fit(sec, "Laplace training examples", asked_train, 2 * per_example, fixed=3 * trace,
                       minimum=min(asked_train, plan.data.batch_size), unit="example", share=0.5)
    train = plan.subset(plan.round_to_batches(train_n)) if train_n < asked_train else plan.data
    ev = plan.eval_data
    x_eval, y_eval = ev.first(ev.num_examples)
    eval_n = plan.fit(sec, "held-out examples", ev.num_examples, (outputs + 1) * per_example, fixed=2 * trace,
                      minimum=min(ev.num_examples, 16), unit="example")
    x_eval = [a[:eval_n] for a in x_eval] if isinstance(x_eval, list) else x_eval[:eval_n]
    labels = _class_labels(np.asarray(y_eval)[:eval_n], loss_name)
    structure = "kfac"
    try:
        la = Laplace(plan.model, train, likelihood="classification", subset="last_layer", structure=structure,
                     loss=plan.loss, seed=plan.seed("uncertainty"), quiet=True)
    except Exception as exc:  # noqa: BLE001 - a model KFAC cannot take: the diagonal GGN serves as well here
        structure = "diag"
        sec.notes.append(f"the Kronecker-factored (KFAC) last-layer posterior failed on this model "
                         f"({short_reason(exc, 160)}); using the diagonal GGN posterior instead")
        la = Laplace(plan.model, train, likelihood="classification", subset="last_layer", structure=structure,
                     loss=plan.loss, seed=plan.seed("uncertainty"), quiet=True)
    if len(labels) >= MIN_VALIDATION_SPLIT:
        n_val = len(labels) // 3
        x_val = [a[:n_val] for a in x_eval] if isinstance(x_eval, list) else x_eval[:n_val]
        y_val = np.asarray(y_eval)[:n_val]
        x_eval = [a[n_val:] for a in x_eval] if isinstance(x_eval, list) else x_eval[n_val:]
        labels = labels[n_val:]
        la.optimize_prior_precision("gridsearch", val_data=(x_val, y_val), link="probit")
        method = "gridsearch"
    else:
        n_val, method = 0, "marglik"
        sec.notes.append(f"only {len(labels)} held-out examples (fewer than {MIN_VALIDATION_SPLIT}): the prior "
                         "precision is set by the evidence, which tends to be under-confident on a last layer")
        la.optimize_prior_precision("marglik")
    map_cal = calibration(la.predict_map(x_eval), labels)
    la_cal = calibration(la.predictive(x_eval, link="probit").probs, labels)
    prior = la.prior_precision
    rows = []
    for metric in ("nll", "ece", "mce", "brier", "accuracy"):
        rows.append({"metric": metric, "map": _f(getattr(map_cal, metric)), "laplace": _f(getattr(la_cal, metric))})
    sec.results = {"structure": structure, "subset": "last_layer", "link": "probit",
                   "num_parameters": int(la.n_params), "num_train": int(train.num_examples),
                   "num_eval": int(len(labels)), "num_validation": int(n_val), "prior_method": method,
                   "prior_precision": _f(prior) if np.ndim(prior) == 0 else np.asarray(prior, np.float64).tolist(),
                   "log_marginal_likelihood": _f(la.log_marginal_likelihood()), "calibration": rows}
    results["summary"]["laplace_ece"] = _f(la_cal.ece)
    if directory is not None:
        from ..bayes import plot_reliability

        plot_reliability({"MAP": map_cal, "Laplace": la_cal}, directory / "uncertainty.png",
                         title=f"Reliability on held-out data: MAP vs Laplace (last layer, {structure})")
        sec.plots.append({"file": "uncertainty.png",
                          "caption": "Accuracy against confidence on held-out data: the diagonal is perfect "
                                     "calibration; bars below it are over-confident. Laplace widens the MAP "
                                     "network's predictions by its last layer's posterior uncertainty."})


# -------------------------------------------------------------------------------------------- influence
INFLUENCE_TEST = 4      # test examples whose most helpful / harmful training examples are listed
INFLUENCE_TOP = 3
INFLUENCE_TRAIN = 1024  # most training examples scored
EKFAC_MAX_PARAMETERS = 100_000  # above this the report uses TracIn (MobileNetV2: EK-FAC took minutes)


def influence(plan, sec: Section, directory: Path | None, results: dict) -> None:
    """Most helpful and harmful training examples for a few test examples, and the self-influence histogram.

    EK-FAC curvature (one pass for its factors, then per-example gradients): cheap at any size; models with
    layers EK-FAC does not cover fall back to TracIn (gradient dot products, no curvature) and say so.
    """
    from ..influence import influence as influence_scores
    from .plots_gradients import histogram

    per_example, trace = _gradient_costs(plan)
    asked = min(INFLUENCE_TRAIN, plan.data.num_examples)
    # one pass of per-example gradients (scores and self-influence together) plus the factors' pass
    n_train = plan.fit(sec, "influence training examples", asked, 3 * per_example, fixed=4 * trace,
                       minimum=min(asked, 2 * plan.data.batch_size), unit="example")
    train = plan.subset(plan.round_to_batches(n_train))
    source = plan.eval_data if plan.eval_data is not None else plan.data
    tx, ty = source.first(INFLUENCE_TEST)
    test_from = "held-out" if plan.eval_data is not None else "training"
    common = dict(loss=plan.loss, damping=1e-3, quiet=True, wrt=plan.settings["wrt"])
    method = "ekfac"
    if plan.space.size > EKFAC_MAX_PARAMETERS:  # EK-FAC's factor eigendecompositions and passes: too slow here
        method = "tracin"
        sec.notes.append(f"{plan.space.size} parameters: influence by TracIn (gradient dot products, no "
                         f"curvature); EK-FAC is used up to {EKFAC_MAX_PARAMETERS} parameters")
    model = _loss_only(plan)
    common["with_self_influence"] = True
    try:
        res = influence_scores(model, train, (tx, ty), method=method, **common)
    except Exception as exc:  # noqa: BLE001 - a layer EK-FAC does not cover: no curvature rather than nothing
        method = "tracin"
        sec.notes.append(f"EK-FAC does not cover this model ({short_reason(exc, 160)}); influence by TracIn "
                         "(gradient dot products, no curvature)")
        res = influence_scores(model, train, (tx, ty), method=method, **common)
    top = res.top(INFLUENCE_TOP)
    rows = []
    for j in range(res.num_test):
        rows.append({"test_example": j, "helpful": [int(i) for i in top.helpful[j]],
                     "helpful_scores": [_f(v) for v in top.helpful_scores[j]],
                     "harmful": [int(i) for i in top.harmful[j]],
                     "harmful_scores": [_f(v) for v in top.harmful_scores[j]]})
    scores = np.asarray(res.self_scores, np.float64)
    counts, edges = histogram(scores)
    order = np.argsort(-scores, kind="stable")[:10]
    sec.results = {"method": method, "damping": 1e-3, "num_train": int(train.num_examples),
                   "test_examples_from": test_from, "definition": res.definition, "top": rows,
                   "self_influence": {**_stats(scores),
                                      "highest": [{"example": int(i), "score": _f(scores[i])} for i in order]},
                   "histogram": {"counts": counts.tolist(), "edges": edges.tolist()}}
    if directory is not None:
        from .plots_gradients import plot_norm_histogram

        plot_norm_histogram(counts, edges, directory / "self_influence.png", title="Self-influence of "
                            "training examples", xlabel="self-influence (predicted rise of its own loss if left out)")
        sec.plots.append({"file": "self_influence.png",
                          "caption": "Self-influence of each training example: the far right tail holds the "
                                     "examples the model fits against the rest (often mislabelled). The table "
                                     "lists, for a few test examples, the training rows that helped and harmed "
                                     "their loss most."})


def _loss_only(plan):
    """The report's objective where influence needs the loss without regularisation and the two are equal (no
    regularisation losses): its compiled per-example gradients then serve this section too (on MobileNetV2 a
    second trace cost 2-4 s). Otherwise the model, for influence to build its own loss-only objective."""
    from ..autodiff.risk import as_tensors

    obj = plan.objective
    x, _ = plan.data.first(1)
    _, losses = obj.forward(obj.space.values(), as_tensors(x, obj.dtype), return_losses=True)
    return plan.model if losses else obj


# ------------------------------------------------------------------------------------------ sensitivity
SENSITIVITY_ROWS = 2048


def sensitivity(plan, sec: Section, directory: Path | None, results: dict) -> None:
    """Derivative-based global sensitivity (DGSM) of a tabular model's output to each input feature, ranked,
    with bootstrap intervals, over the data as a sample of the inputs."""
    from ..inputs.sensitivity import sensitivity as dgsm

    if plan.kind != "tabular" or not _floating_input(plan.objective.model):
        sec.status, sec.reason = "skipped", ("sensitivity ranks the features of a real-valued tabular input: "
                                             "for tabular models only")
        return
    per_example, trace = _gradient_costs(plan)
    rows = plan.fit(sec, "sensitivity rows", min(SENSITIVITY_ROWS, plan.data.num_examples), 2 * per_example,
                    fixed=trace, minimum=min(plan.data.num_examples, 64), unit="row")
    x, _ = plan.data.first(rows)
    out_size = int(np.prod([d or 1 for d in plan.model.output_shape[1:]]))
    component, which = None, "the output"
    if out_size > 1:
        pred = np.asarray(plan.model(np.asarray(x[:256]), training=False)).reshape(min(256, len(x)), -1)
        component = int(np.bincount(pred.argmax(axis=1), minlength=out_size).argmax())
        which = f"output unit {component} (the class predicted most often)"
    names = plan.feature_names or [f"x[{i}]" for i in range(x.shape[1])]
    res = dgsm(plan.model, x, component=component, feature_names=names, seed=plan.seed("sensitivity"),
               n_bootstrap=500, quiet=True)
    order = res.ranking()
    table = [{"feature": res.names[i], "dgsm": _f(res.dgsm[i]), "dgsm_low": _f(res.dgsm_interval[i, 0]),
              "dgsm_high": _f(res.dgsm_interval[i, 1]), "share": _f(res.share[i]), "mean_abs": _f(res.mean_abs[i]),
              "mean": _f(res.mean[i])} for i in order]
    sec.results = {"num_rows": int(len(x)), "of": which, "output_variance": _f(res.variance),
                   "confidence": 0.95, "per_feature": table}
    if directory is not None:
        from .plots_layers import plot_ranked_intervals

        plot_ranked_intervals([r["feature"] for r in table], [r["dgsm"] for r in table],
                              [(r["dgsm_low"], r["dgsm_high"]) for r in table], directory / "sensitivity.png",
                              title=f"DGSM of {which}", xlabel="E[(df/dx_i)^2] with 95% bootstrap interval")
        sec.plots.append({"file": "sensitivity.png",
                          "caption": "Input features ranked by the mean squared derivative of the output over "
                                     "the data (derivative-based global sensitivity), with bootstrap intervals: "
                                     "overlapping intervals mean the ranking between them is not settled."})


RUNNERS = {"gradients": gradients, "per_example": per_example, "curvature": curvature,
           "attributions": attributions, "uncertainty": uncertainty, "influence": influence,
           "sensitivity": sensitivity, "check": check}
