"""The report pipeline: files written, numbers right, sections independent, re-runs identical."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import stat

import numpy as np
import pytest

from tests import models as M
from tests import references as R
from tests.reports.conftest import flat_gradient_norms


def _numeric(results):
    out = copy.deepcopy(json.loads(json.dumps(results)))
    out["provenance"].pop("timing")
    return out


def test_writes_page_results_and_plots(tabular_case):
    _, _, _, out, results = tabular_case
    assert (out / "index.html").is_file() and (out / "results.json").is_file()
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(on_disk))
    assert on_disk["format"] == "tfpartials-report/1"
    assert list(on_disk["sections"]) == ["gradients", "per_example", "curvature", "attributions", "uncertainty",
                                         "influence", "sensitivity", "check"]
    for sec in on_disk["sections"].values():
        assert sec["status"] in {"ok", "failed", "skipped"}
        for plot in sec["plots"]:
            png = (out / plot["file"]).read_bytes()
            assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    assert (out / "gradients.png").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temporary directory left behind"
    mode = stat.S_IMODE(os.stat(out / "results.json").st_mode)
    assert mode & 0o044 == 0o044 & ~_umask(), "results.json should get the usual permissions"


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_gradient_section_matches_plain_tape_in_float64(tabular_case):
    model, x, y, _, results = tabular_case
    value, norms = flat_gradient_norms(model, x, y, R.keras_mean_loss("mse"))
    sec = results["sections"]["gradients"]
    assert sec["status"] == "ok"
    got = [r["norm"] for r in sec["results"]["per_variable"]]
    np.testing.assert_allclose(got, norms, rtol=1e-4)
    np.testing.assert_allclose(sec["results"]["total_norm"], np.sqrt(np.sum(np.square(norms))), rtol=1e-4)
    np.testing.assert_allclose(results["summary"]["loss"], value, rtol=1e-5)
    names = [r["name"] for r in sec["results"]["per_variable"]]
    assert names == ["h1/kernel", "h1/bias", "out/kernel", "out/bias"]
    layers = {r["layer"]: r["norm"] for r in sec["results"]["per_layer"]}
    np.testing.assert_allclose(layers["h1"], np.hypot(norms[0], norms[1]), rtol=1e-4)


def test_provenance_records_versions_hashes_and_settings(tabular_case):
    import keras
    import tensorflow as tf

    model, x, y, _, results = tabular_case
    prov = results["provenance"]
    assert prov["software"]["tensorflow"] == tf.__version__
    assert prov["software"]["keras"] == keras.__version__
    assert prov["seed"] == 3 and prov["settings"]["num_matvecs"] == 9 and prov["settings"]["top_k"] == 2
    h = hashlib.sha256()
    for a in (x, y):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    assert prov["data_file"]["sha256"] == h.hexdigest()
    w = hashlib.sha256()
    for v in model.weights:
        a = np.ascontiguousarray(v.numpy())
        w.update(f"{a.dtype.str}{a.shape}".encode())
        w.update(a.tobytes())
    assert prov["model_weights_sha256"] == w.hexdigest()
    assert prov["model_file"] == {"path": None, "sha256": None}
    assert set(prov["timing"]) >= {"started", "finished", "seconds"}


def test_model_file_hash_is_the_files_sha256(tmp_path):
    from tfpartials.reports.run import build_report

    model, x, y = M.linear_regression()
    path = tmp_path / "m.keras"
    model.save(path)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    res = build_report(str(path), str(tmp_path / "d.npz"), "mse", None, quiet=True,
                       skip=["per-example", "curvature", "attributions", "check"])
    assert res["provenance"]["model_file"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert res["provenance"]["data_file"]["sha256"] == hashlib.sha256((tmp_path / "d.npz").read_bytes()).hexdigest()


def test_same_seed_same_numbers(tmp_path):
    from tfpartials.reports.run import build_report

    model, x, y = M.regression_mlp(n=40)
    kw = dict(seed=5, num_matvecs=9, quiet=True, probe_examples=24, per_example_examples=24, density_probes=2,
              density_steps=8, check_examples=8, check_directions=2)
    build_report(model, (x, y), "mse", tmp_path / "a", **kw)
    build_report(model, (x, y), "mse", tmp_path / "b", **kw)
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert _numeric(a) == _numeric(b)
    assert json.dumps(_numeric(a), sort_keys=True) == json.dumps(_numeric(b), sort_keys=True)


def test_failing_section_is_recorded_and_the_rest_still_runs(tmp_path, monkeypatch):
    from tfpartials.reports import sections
    from tfpartials.reports.run import build_report

    def broken(plan, sec, directory, results):
        raise RuntimeError("deliberately broken section")

    monkeypatch.setitem(sections.RUNNERS, "per_example", broken)
    model, x, y = M.linear_regression()
    res = build_report(model, (x, y), "mse", tmp_path / "r", quiet=True, skip=["curvature", "check"])
    sec = res["sections"]["per_example"]
    assert sec["status"] == "failed" and "deliberately broken section" in sec["reason"]
    assert res["sections"]["gradients"]["status"] == "ok"
    assert "deliberately broken section" in (tmp_path / "r" / "index.html").read_text()


def test_skip_by_name_and_alias(tmp_path):
    from tfpartials.reports.run import build_report

    model, x, y = M.linear_regression()
    res = build_report(model, (x, y), "mse", None, quiet=True, skip=["spectrum", "per-example", "check"])
    st = {k: v["status"] for k, v in res["sections"].items()}
    assert st["curvature"] == st["per_example"] == st["check"] == "skipped"
    assert st["gradients"] == "ok"
    assert res["provenance"]["settings"]["skip"] == ["check", "curvature", "per_example"]


def test_spent_time_budget_runs_every_section_at_its_smallest_size():
    """The budget sizes the work; it never drops a section (a deep model's report has every section)."""
    from tfpartials.reports.run import build_report

    model, x, y = _deep_mlp()
    res = build_report(model, (x, y), "mse", None, quiet=True, time_budget=1e-9, skip=["influence"])
    ran = {k: s for k, s in res["sections"].items() if s["status"] != "skipped"}
    assert {"gradients", "per_example", "curvature", "check"} <= set(ran)
    for key, sec in ran.items():
        assert sec["status"] == "ok", (key, sec)
        if key != "gradients":
            assert any("ran at its smallest size" in n for n in sec["notes"]), key
    for sec in res["sections"].values():
        assert "time budget" not in (sec.get("reason") or "")
    chk = res["sections"]["check"]["results"]
    # 12 variables, checked at the smallest size: 8 of them, evenly spread, and the check still passes
    assert chk["num_variables"] == 12 and chk["num_variables_checked"] == 8 and chk["passed"]
    assert any(r["what"] == "checked variables" for r in res["sections"]["check"]["reduced"])


def test_time_budget_counts_from_started_so_loading_and_start_up_are_inside_it():
    """The CLI passes its own start: time spent before the report (TensorFlow's import, loading) is budget used."""
    import time

    from tfpartials.reports.run import build_report

    model, x, y = _deep_mlp()
    only = dict(quiet=True, time_budget=30.0, skip=["per-example", "curvature", "attributions", "influence",
                                                      "check", "sensitivity", "uncertainty"])
    fresh = build_report(model, (x, y), "mse", None, **only)
    late = build_report(model, (x, y), "mse", None, started=time.perf_counter() - 40.0, **only)
    assert not fresh["sections"]["gradients"]["notes"]
    assert any("30 s time budget was spent before this section started" in n
               for n in late["sections"]["gradients"]["notes"])
    assert late["provenance"]["timing"]["seconds"]["since_start"] >= 40.0
    assert fresh["provenance"]["timing"]["seconds"]["since_start"] < 30.0


def test_curvature_runs_last_and_takes_the_time_left(monkeypatch):
    """Sections with fixed costs (traces) run first; curvature, whose matvecs scale with its time, gets all that
    is left (so an overrun before it comes out of its share, not past the budget); the page keeps its order."""
    import time

    from tfpartials.reports import sections as S
    from tfpartials.reports.records import SECTIONS
    from tfpartials.reports.run import RUN_ORDER, build_report

    seen = []

    fixed = {"gradients": 0.3, "per_example": 0.5, "attributions": 3.0, "influence": 1.0, "check": 2.5}

    def stub(key):
        def run(plan, sec, directory, results):
            seen.append((key, plan.allotted, plan.deadline - time.perf_counter()))
            # traces: fixed seconds whatever the share; curvature's matvecs: all the time it is given
            time.sleep(plan.allotted if key == "curvature" else fixed.get(key, 0.0))
        return run

    for key in SECTIONS:
        monkeypatch.setitem(S.RUNNERS, key, stub(key))
    model, x, y = _deep_mlp()
    res = build_report(model, (x, y), "mse", None, quiet=True, time_budget=12.0)
    assert [k for k, _, _ in seen] == list(RUN_ORDER) and RUN_ORDER[-1] == "curvature"
    _, allotted, left = seen[-1]
    assert allotted == pytest.approx(left, abs=0.05)  # everything left before the deadline
    # the fixed costs came out of curvature's time, not past the deadline (12 s less the 5% tail); run third,
    # curvature would have taken its weight's share and the sections after it would have ended ~1 s late
    assert res["provenance"]["timing"]["seconds"]["since_start"] < 12.0 - 0.6 + 0.3
    assert list(res["sections"]) == list(SECTIONS)


def _deep_mlp():
    import keras

    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 3)).astype("float32")
    y = rng.standard_normal((16, 1)).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,))] + [keras.layers.Dense(4, activation="tanh") for _ in range(5)]
                             + [keras.layers.Dense(1)])
    return model, x, y


@pytest.mark.parametrize("kwargs,match", [
    ({"skip": ["nonsense"]}, "unknown section 'nonsense'"),
    ({"top_k": 0}, "top_k: expected a positive integer"),
    ({"num_matvecs": -3}, "num_matvecs: expected a positive integer"),
    ({"seed": -1}, "seed: expected a non-negative integer"),
    ({"time_budget": 0}, "time_budget: expected a finite number > 0"),
    ({"max_examples": 0}, "max_examples: expected a positive integer"),
    ({"feature_names": ["a", "b"]}, "feature_names: expected 4 names"),
])
def test_bad_options_fail_before_any_work(tmp_path, monkeypatch, kwargs, match):
    from tfpartials import InputError
    from tfpartials.reports import sections
    from tfpartials.reports.run import build_report

    for key in list(sections.RUNNERS):
        monkeypatch.setitem(sections.RUNNERS, key, _must_not_run)
    model, x, y = M.linear_regression()
    with pytest.raises(InputError, match=match):
        build_report(model, (x, y), "mse", tmp_path / "r", quiet=True, **kwargs)
    assert not (tmp_path / "r").exists()
    assert list(tmp_path.iterdir()) == []


def _must_not_run(*args, **kwargs):
    raise AssertionError("a section ran although the input was bad")


@pytest.mark.parametrize("case,match", [
    ("labels", r"class labels must lie in \[0, 2\]"),
    ("shape", r"inputs: expected shape \(N, 6, 6, 1\)"),
    ("count", "x/y count mismatch"),
    ("model", "model: expected a Keras model"),
    ("loss", "unknown loss 'nope'"),
])
def test_bad_data_fails_before_any_work(tmp_path, monkeypatch, case, match):
    from tfpartials import InputError
    from tfpartials.reports import sections
    from tfpartials.reports.run import build_report

    for key in list(sections.RUNNERS):
        monkeypatch.setitem(sections.RUNNERS, key, _must_not_run)
    model, x, y = M.small_cnn()
    loss = "sparse_categorical_crossentropy"
    if case == "labels":
        y = y + 5
    elif case == "shape":
        x = x[:, :5]
    elif case == "count":
        y = y[:-1]
    elif case == "model":
        model = object()
    elif case == "loss":
        loss = "nope"
    with pytest.raises((InputError, TypeError), match=match):
        build_report(model, (x, y), loss, tmp_path / "r", from_logits=True, quiet=True)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path):
    from tfpartials import InputError
    from tfpartials.reports.run import build_report

    model, x, y = M.linear_regression()
    out = tmp_path / "r"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="already exists; pass --overwrite"):
        build_report(model, (x, y), "mse", out, quiet=True)
    assert (out / "keep.txt").read_text() == "mine"
    build_report(model, (x, y), "mse", out, quiet=True, overwrite=True, skip=["curvature", "check"])
    assert (out / "index.html").is_file() and not (out / "keep.txt").exists()


def test_tabular_attributions_use_feature_names(tabular_case):
    _, _, _, _, results = tabular_case
    sec = results["sections"]["attributions"]
    assert sec["status"] == "ok", sec["reason"]
    feats = sec["results"]["per_feature"]
    assert sorted(r["feature"] for r in feats) == ["alpha", "beta", "gamma"]
    ig = [r["mean_abs_integrated_gradients"] for r in feats]
    assert ig == sorted(ig, reverse=True)
    assert results["data"]["kind"] == "tabular"


def test_image_report_classifies_input_kind(image_case):
    _, _, _, out, results = image_case
    assert results["data"]["kind"] == "image"
    assert results["sections"]["gradients"]["status"] == "ok"
    att = results["sections"]["attributions"]
    if att["status"] == "ok":
        assert (out / "attributions.png").is_file()


def test_per_example_norms_match_a_loop_of_single_example_gradients(tabular_case):
    model, x, y, _, results = tabular_case
    sec = results["sections"]["per_example"]
    assert sec["status"] == "ok", sec["reason"]
    n = sec["results"]["num_examples"]
    G = R.per_example_gradients_loop(model, x[:n], y[:n], R.keras_mean_loss("mse"))
    norms = np.linalg.norm(G, axis=1)
    r = sec["results"]["norm"]
    np.testing.assert_allclose([r["median"], r["max"], r["min"], r["mean"]],
                               [np.median(norms), norms.max(), norms.min(), norms.mean()], rtol=1e-4)
    assert sum(sec["results"]["histogram"]["counts"]) == n


def test_curvature_matches_the_dense_nested_tape_hessian(tabular_case):
    model, x, y, _, results = tabular_case
    sec = results["sections"]["curvature"]
    assert sec["status"] == "ok", sec["reason"]
    r = sec["results"]
    p = r["num_probe_examples"]
    H = R.nested_tape_hessian(model, x[:p], y[:p], R.keras_mean_loss("mse"))
    evals = np.sort(np.linalg.eigvalsh(H))[::-1]
    np.testing.assert_allclose(r["eigenvalues"], evals[:2], rtol=1e-3, atol=1e-6)
    tr = r["trace"]
    assert abs(tr["value"] - np.trace(H)) <= 4 * tr["std_error"] + 1e-4 * abs(np.trace(H))
    # every layer's trace from the same probes as the whole trace: within 4 standard errors of the dense block
    assert tr["stopped"] in ("tolerance", "matvecs") and tr["num_matvecs"] <= 9
    out = next(e for e in r["per_layer"] if e["layer"] == "out")
    assert not out["exact"] and out["num_parameters"] == 6
    assert abs(out["trace"] - np.trace(H[20:, 20:])) <= 4 * out["std_error"] + 1e-6
    hidden = next(e for e in r["per_layer"] if e["layer"] != "out")
    assert abs(hidden["trace"] - np.trace(H[:20, :20])) <= 4 * hidden["std_error"] + 1e-6
    np.testing.assert_allclose(out["trace"] + hidden["trace"], tr["value"], rtol=1e-6)
    grid, dens = np.array(r["density"]["grid"]), np.array(r["density"]["values"])
    assert abs(np.trapezoid(dens, grid) - 1) < 1e-2


def test_warnings_inside_a_section_become_notes_on_the_page(tmp_path, monkeypatch):
    import warnings

    from tfpartials.reports import sections
    from tfpartials.reports.run import build_report

    def noisy(plan, sec, directory, results):
        warnings.warn("slow fallback path taken", RuntimeWarning, stacklevel=1)
        warnings.warn("slow fallback path taken", RuntimeWarning, stacklevel=1)
        sec.results = {"value": 1.0}

    monkeypatch.setitem(sections.RUNNERS, "check", noisy)
    model, x, y = M.linear_regression()
    with warnings.catch_warnings(record=True) as outside:
        warnings.simplefilter("always")
        res = build_report(model, (x, y), "mse", tmp_path / "r", quiet=True,
                           skip=["per-example", "curvature", "attributions"])
    assert res["sections"]["check"]["notes"] == ["RuntimeWarning: slow fallback path taken"]
    assert res["sections"]["check"]["status"] == "ok"
    assert not [w for w in outside if "slow fallback" in str(w.message)]
    assert "slow fallback path taken" in (tmp_path / "r" / "index.html").read_text()


def test_sections_plan_their_work_from_measured_cost_and_say_what_they_reduced(monkeypatch):
    from tfpartials.reports.run import ReportPlan, build_report

    monkeypatch.setattr(ReportPlan, "seconds_left", lambda self: 1e-6)  # every section's share is (nearly) spent
    model, x, y = M.regression_mlp(n=48)
    res = build_report(model, (x, y), "mse", None, quiet=True, batch_size=8, num_matvecs=30, probe_examples=32,
                       per_example_examples=40, density_probes=2, density_steps=12, check_examples=16,
                       check_directions=2)
    secs = res["sections"]
    for key in ("gradients", "per_example", "curvature", "attributions", "check"):
        assert secs[key]["status"] == "ok", (key, secs[key]["reason"])
    cut = {key: {r["what"]: (r["asked"], r["used"]) for r in secs[key]["reduced"]} for key in secs}
    assert cut["per_example"]["per-example examples"] == (5, 1)          # batches of 8
    assert secs["per_example"]["results"]["num_examples"] == 8
    assert cut["curvature"]["probe batches"] == (4, 1)
    assert secs["curvature"]["results"]["num_probe_examples"] == 8
    assert cut["curvature"]["trace matvecs (at most)"][1] == 8 and secs["curvature"]["results"]["trace"]["num_matvecs"] <= 8
    assert cut["attributions"]["integrated-gradients steps"] == (32, 8)
    assert cut["check"]["checks"][1] == "gradients" and cut["check"]["check directions"] == (2, 1)
    assert [c["check"] for c in secs["check"]["results"]["checks"]] == ["gradients"]
    assert any("to fit this section's" in n for n in secs["curvature"]["notes"])
    assert not secs["gradients"]["reduced"]


def test_curvature_parts_are_replanned_from_the_products_they_really_cost():
    """When products turn out dearer than the one timed up front, the trace and the density get fewer, and the
    page says how much a product took; with the same sizes the numbers are those of one summary call."""
    import time
    from types import SimpleNamespace

    from tfpartials.estimators import summarize_curvature
    from tfpartials.linalg.dense import DenseOperator
    from tfpartials.reports.records import Section
    from tfpartials.reports.sections import _curvature_in_parts

    rng = np.random.default_rng(0)
    a = rng.standard_normal((40, 40))
    A = a @ a.T / 40

    class Slow(DenseOperator):
        def _matmat(self, V):
            time.sleep(0.01 * int(V.shape[1]))  # 10 ms a product, where 1 ms was measured up front
            return super()._matmat(V)

    op = Slow(A, symmetric=True)
    end = time.perf_counter() + 0.9
    plan = SimpleNamespace(seconds_left=lambda: end - time.perf_counter(), reduced=[])
    plan.reduce = lambda sec, what, asked, used, measured="": sec.reduced.append(
        {"what": what, "asked": asked, "used": used, "measured": measured})
    sec = Section("curvature")
    common = {"tol": 1e-3, "seed": 5, "quiet": True}
    got = _curvature_in_parts(plan, sec, op, 2, 20, 60, 4, 30, 0.001, common)
    cut = {r["what"]: r for r in sec.reduced}
    assert cut["trace matvecs (at most)"]["used"] < 60
    assert "as the eigenvalues took" in cut["trace matvecs (at most)"]["measured"]
    assert "density probes x Lanczos steps" in cut
    np.testing.assert_allclose(got.eigen.eigenvalues, np.sort(np.linalg.eigvalsh(A))[::-1][:2], rtol=1e-3)
    used_t = got.trace.num_matvecs
    p, s = (int(v) for v in cut["density probes x Lanczos steps"]["used"].split(" x "))
    one = summarize_curvature(DenseOperator(A, symmetric=True), top_k=2, max_matvecs=20, trace=True,
                              trace_method="layerwise", num_matvecs=cut["trace matvecs (at most)"]["used"],
                              trace_rel_tol=0.05, density=True, density_probes=p, density_steps=s, exact_limit=0,
                              **common)
    assert one.trace.num_matvecs == used_t
    np.testing.assert_allclose(got.trace.value, one.trace.value, rtol=1e-12)
    np.testing.assert_allclose(got.density.values, one.density.values, rtol=1e-10, atol=1e-12)
