"""The uncertainty, influence and sensitivity sections against closed forms and plain numpy references."""

from __future__ import annotations

import numpy as np
import pytest

from tests import models as M


@pytest.fixture(scope="module")
def linear_case(tmp_path_factory):
    from tfpartials.reports.run import build_report

    model, x, y = M.linear_regression(n=40)
    out = tmp_path_factory.mktemp("linear") / "report"
    res = build_report(model, (x[:32], y[:32]), "mse", out, quiet=True, eval_data=(x[32:], y[32:]),
                       skip=["check", "curvature", "per-example", "attributions"], feature_names=list("abcd"))
    return model, x[:32], y[:32], out, res


def test_influence_section_matches_the_least_squares_closed_form(linear_case):
    model, x, y, out, res = linear_case
    sec = res["sections"]["influence"]
    assert sec["status"] == "ok", sec["reason"]
    r = sec["results"]
    w, b = (v.numpy().astype(np.float64) for v in model.weights)
    X = np.hstack([x.astype(np.float64), np.ones((len(x), 1))])
    resid = X @ np.concatenate([w[:, 0], b]) - y[:, 0]
    G = 2 * resid[:, None] * X                                      # per-example gradients of (f - y)^2
    N = len(x)
    H = 2 * X.T @ X / N + r["damping"] * np.eye(X.shape[1])          # Gauss-Newton = Hessian (linear model)
    ref = np.einsum("ij,jk,ik->i", G, np.linalg.inv(H), G) / N
    assert r["method"] == "ekfac" and r["num_train"] == N
    top = [e["example"] for e in r["self_influence"]["highest"]]
    np.testing.assert_allclose([e["score"] for e in r["self_influence"]["highest"]], ref[top], rtol=1e-3)
    assert top[:3] == list(np.argsort(-ref)[:3])
    # helpful / harmful lists for the held-out examples: ordered scores
    for row in r["top"]:
        assert row["helpful_scores"] == sorted(row["helpful_scores"], reverse=True)
        assert row["harmful_scores"] == sorted(row["harmful_scores"])
    assert r["test_examples_from"] == "held-out"
    assert (out / "self_influence.png").is_file()


def test_sensitivity_section_is_the_squared_weights_of_a_linear_model(linear_case):
    model, *_, out, res = linear_case
    sec = res["sections"]["sensitivity"]
    assert sec["status"] == "ok", sec["reason"]
    w = model.weights[0].numpy()[:, 0].astype(np.float64)
    rows = sec["results"]["per_feature"]
    assert [r["feature"] for r in rows] == [list("abcd")[i] for i in np.argsort(-w ** 2)]  # ranked
    np.testing.assert_allclose([r["dgsm"] for r in rows], np.sort(w ** 2)[::-1], rtol=1e-5)
    assert (out / "sensitivity.png").is_file()


def test_uncertainty_needs_a_classifier(linear_case):
    sec = linear_case[-1]["sections"]["uncertainty"]
    assert sec["status"] == "skipped" and "classification loss" in sec["reason"]


def test_uncertainty_section_compares_map_and_laplace_calibration(tmp_path):
    from tfpartials.reports.run import build_report

    model, x, y = M.mlp(n=60)
    res = build_report(model, (x[:40], y[:40]), "sparse_categorical_crossentropy", tmp_path / "r", from_logits=True,
                       quiet=True, eval_data=(x[40:], y[40:]),
                       skip=["check", "curvature", "per-example", "attributions", "influence", "sensitivity"])
    sec = res["sections"]["uncertainty"]
    assert sec["status"] == "ok", sec["reason"]
    r = sec["results"]
    assert (r["structure"], r["subset"], r["link"], r["num_eval"]) == ("kfac", "last_layer", "probit", 20)
    cal = {row["metric"]: row for row in r["calibration"]}
    logits = model(x[40:]).numpy().astype(np.float64)           # MAP metrics by plain numpy
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(cal["nll"]["map"], -np.mean(np.log(p[np.arange(20), y[40:]])), rtol=1e-4)
    np.testing.assert_allclose(cal["accuracy"]["map"], np.mean(p.argmax(1) == y[40:]))
    np.testing.assert_allclose(cal["brier"]["map"], np.mean(((p - np.eye(3)[y[40:]]) ** 2).sum(1)), rtol=1e-4)
    assert np.isfinite(cal["ece"]["laplace"]) and r["num_parameters"] == 21  # last layer: 6 x 3 + 3
    assert (tmp_path / "r" / "uncertainty.png").is_file()


def test_uncertainty_section_skips_a_model_that_outputs_probabilities():
    """A softmax output (keras.applications' default) is skipped with the reason, not a failure."""
    import keras

    from tfpartials.reports.run import build_report

    model, x, y = M.mlp(n=60)
    probs = keras.Sequential([model, keras.layers.Softmax()])
    res = build_report(probs, (x[:40], y[:40]), "sparse_categorical_crossentropy", None, quiet=True,
                       eval_data=(x[40:], y[40:]),
                       skip=["check", "curvature", "per-example", "attributions", "influence", "sensitivity"])
    sec = res["sections"]["uncertainty"]
    assert sec["status"] == "skipped" and "outputs logits" in sec["reason"]


def test_uncertainty_section_chooses_the_prior_on_a_validation_third(tmp_path):
    """With enough held-out data the prior is chosen on its first third and calibration measured on the rest."""
    from tfpartials.bayes import Laplace
    from tfpartials.reports.run import build_report

    model, x, y = M.mlp(n=100)
    res = build_report(model, (x[:40], y[:40]), "sparse_categorical_crossentropy", None, from_logits=True,
                       quiet=True, eval_data=(x[40:], y[40:]),
                       skip=["check", "curvature", "per-example", "attributions", "influence", "sensitivity"])
    r = res["sections"]["uncertainty"]["results"]
    assert (r["prior_method"], r["num_validation"], r["num_eval"]) == ("gridsearch", 20, 40)
    cal = {row["metric"]: row for row in r["calibration"]}
    logits = model(x[60:]).numpy().astype(np.float64)           # MAP metrics on the last two thirds, by numpy
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(cal["nll"]["map"], -np.mean(np.log(p[np.arange(40), y[60:]])), rtol=1e-4)
    # the chosen prior is the grid's best on the validation third: no other grid value has a lower probit NLL
    la = Laplace(model, (x[:40], y[:40]), likelihood="classification", subset="last_layer", structure="kfac",
                 loss="sparse_categorical_crossentropy", from_logits=True, quiet=True)

    def val_nll(prior):
        la.prior_precision = prior
        probs = la.predictive(x[40:60], link="probit").probs
        return -np.mean(np.log(np.asarray(probs, np.float64)[np.arange(20), y[40:60]]))

    chosen = val_nll(r["prior_precision"])
    assert all(chosen <= val_nll(q) + 1e-6 for q in np.logspace(-2, 6, 9))


def test_a_failing_new_section_never_stops_the_others(monkeypatch):
    from tfpartials.reports import sections
    from tfpartials.reports.run import build_report

    def broken(plan, sec, directory, results):
        raise RuntimeError("influence deliberately broken")

    monkeypatch.setitem(sections.RUNNERS, "influence", broken)
    model, x, y = M.linear_regression()
    res = build_report(model, (x, y), "mse", None, quiet=True, skip=["check", "curvature", "per-example"])
    st = {k: v["status"] for k, v in res["sections"].items()}
    assert st["influence"] == "failed" and "deliberately broken" in res["sections"]["influence"]["reason"]
    assert st["sensitivity"] == st["attributions"] == st["gradients"] == "ok"
    assert st["uncertainty"] == "skipped"  # no held-out data


def test_gradients_section_shows_each_outputs_share_of_the_gradient(tmp_path):
    """Two heads with their own losses: shares <w_k g_k, g> / |g|^2 against plain tapes on each head's loss."""
    import keras
    import tensorflow as tf

    from tfpartials.reports.run import build_report

    keras.utils.set_random_seed(0)
    inp = keras.Input((3,))
    h = keras.layers.Dense(4, activation="tanh", name="h")(inp)
    model = keras.Model(inp, [keras.layers.Dense(1, name="price")(h), keras.layers.Dense(1, name="size")(h)])
    model.compile(loss={"price": "mse", "size": "mae"}, loss_weights={"price": 1.0, "size": 0.5})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = [rng.normal(size=(16, 1)).astype("float32"), rng.normal(size=(16, 1)).astype("float32")]
    res = build_report(model, (x, y), None, tmp_path / "r", quiet=True,
                       skip=["per-example", "curvature", "attributions", "check"])
    sec = res["sections"]["gradients"]
    assert sec["status"] == "ok", sec["reason"]
    rows = {r["term"]: r for r in sec["results"]["per_output"]}
    with tf.GradientTape(persistent=True) as tape:
        p, s = model(x)
        lp = tf.reduce_mean(tf.square(p - y[0]))
        ls = 0.5 * tf.reduce_mean(tf.abs(s - y[1]))
    def flat(loss):  # a head's loss does not reach the other head: zeros there
        grads = tape.gradient(loss, model.trainable_variables)
        return np.concatenate([np.ravel(np.zeros(v.shape) if g is None else g)
                               for g, v in zip(grads, model.trainable_variables)])

    gp, gs = flat(lp), flat(ls)
    g = gp + gs
    np.testing.assert_allclose(rows["price"]["share_of_gradient"], gp @ g / (g @ g), rtol=1e-4)
    np.testing.assert_allclose(rows["size"]["share_of_gradient"], gs @ g / (g @ g), rtol=1e-4)


def test_token_models_get_per_token_attributions_as_coloured_text(tmp_path):
    import keras

    from tfpartials.reports.run import build_report

    keras.utils.set_random_seed(0)
    inp = keras.Input((5,), dtype="int32")
    e = keras.layers.Embedding(12, 4, name="embedding")(inp)
    out = keras.layers.Dense(3, name="logits")(keras.layers.GlobalAveragePooling1D()(e))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    x = rng.integers(1, 12, size=(8, 5)).astype("int32")
    y = rng.integers(0, 3, size=8)
    res = build_report(model, (x, y), "sparse_categorical_crossentropy", tmp_path / "r", quiet=True,
                       from_logits=True, skip=["per-example", "curvature", "check"])
    sec = res["sections"]["attributions"]
    assert sec["status"] == "ok", sec["reason"]
    assert (tmp_path / "r" / "attributions.png").is_file()
    for row in sec["results"]["per_example"]:
        i, c = row["example"], row["explained"]
        fx = model(x[i:i + 1]).numpy()[0, c]
        f0 = model(np.zeros((1, 5), "int32")).numpy()[0, c]           # baseline: padding id 0 everywhere
        assert abs(sum(row["scores"]) - (fx - f0)) <= 0.01 * abs(fx - f0) + 1e-6
