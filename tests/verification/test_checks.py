"""Derivative checks: pass on correct models, fail naming the variable on broken ones, seeded, validated."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tfpartials as tp
from tests import models as M
from tests.verification import faulty as F
from tfpartials.verification.checks import (
    FULL_AUTO_LIMIT,
    CheckReport,
    CheckResult,
    check,
    check_gradients,
    check_hvp,
    check_input_jacobian,
    default_tolerances,
)
from tfpartials.verification.finite_differences import FiniteDifferenceObjective, step_size

CASES = {
    "mlp": (M.mlp, "sparse_categorical_crossentropy", True),
    "cnn": (M.small_cnn, "sparse_categorical_crossentropy", True),
    "batchnorm": (M.batchnorm_dropout_model, "mse", None),
    "lstm": (M.lstm_model, "mse", None),
    "embedding": (M.embedding_model, "mse", None),
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # HVP mode fallbacks (LSTM, CNN) are announced, not errors
@pytest.mark.parametrize("precision", [None, "float64"])
@pytest.mark.parametrize("case", list(CASES))
def test_all_checks_pass_on_the_test_models(case, precision):
    builder, loss, logits = CASES[case]
    model, x, y = builder()
    weights = [v.numpy().copy() for v in model.variables]
    report = check(model, (x, y), loss=loss, from_logits=logits, precision=precision, directions=2, full=False)
    assert isinstance(report, CheckReport)
    assert report.passed, [r.summary() for r in report.results]
    assert [r.name for r in report.results] == ["gradients", "hvp", "jacobian"]
    grad = report["gradients"]
    assert grad.details["autodiff_dtype"] == (precision or "float32")
    assert grad.max_rel_error < default_tolerances(precision or "float32")[0]
    assert grad.num_evaluations > 0 and grad.worst_variable in tp.ParameterSpace(model).names
    assert report["hvp"].skipped is None
    jac = report["jacobian"]
    if case == "embedding":  # integer token ids: no input derivative, skipped with the reason
        assert jac.skipped and "integer dtype int32" in jac.skipped and jac.passed
    else:
        assert jac.skipped is None and jac.num_evaluations > 0
    for before, v in zip(weights, model.variables):  # nothing mutated the user's model
        np.testing.assert_array_equal(before, v.numpy())


@pytest.mark.parametrize("factor,rel", [(2.0, 1.0), (-1.0, 2.0)])
@pytest.mark.parametrize("full", [False, True])
def test_wrong_custom_gradient_fails_naming_the_variable(factor, rel, full):
    model, x, y = F.wrong_gradient_model(factor)
    result = check_gradients(model, (x, y), loss="mse", full=full)
    assert not result.passed
    assert result.worst_variable == "wrong/scale"
    blocks = result.details["blocks"]
    assert not blocks["wrong/scale"]["passed"]
    assert blocks["wrong/scale"]["max_rel_error"] == pytest.approx(rel, rel=1e-3)  # |2g - g|/|g|, |-g - g|/|g|
    assert all(b["passed"] for name, b in blocks.items() if name != "wrong/scale")
    assert result.max_rel_error == pytest.approx(rel, rel=1e-3)


def test_correct_custom_gradient_passes():
    model, x, y = F.wrong_gradient_model(1.0)
    assert check_gradients(model, (x, y), loss="mse").passed


def test_gradient_cut_by_round_is_reported_as_none_with_the_op():
    model, x, y = F.rounded_model()
    result = check_gradients(model, (x, y), loss="mse")
    assert not result.passed
    assert result.worst_variable == "d1/kernel"
    cuts = {c["variable"]: c for c in result.details["gradient_cuts"]}
    assert set(cuts) == {"d1/kernel", "d1/bias"}
    assert cuts["d1/kernel"]["op_type"] == "Round" and "rnd" in cuts["d1/kernel"]["op_name"]
    assert "gradient is None" in cuts["d1/kernel"]["message"]
    report = check(model, (x, y), loss="mse", what="gradients")
    assert not report.passed and report.diagnostics.gradient_cuts[0].op_type == "Round"
    # opting in to zeros compares them with the finite differences (zero almost everywhere for round)
    assert check_gradients(model, (x, y), loss="mse", unconnected="zero").passed


def test_nan_gradient_fails_and_names_the_op_then_numeric_checks_are_off():
    model, x, y = F.sqrt_at_zero_model()
    report = check(model, (x, y), loss="mse", what="gradients")
    grad = report["gradients"]
    assert not grad.passed and "SqrtGrad" in grad.details["failure"]
    assert report.diagnostics.non_finite[0].op_type == "SqrtGrad"
    assert not np.isfinite(tf.math.log(tf.constant(0.0)).numpy())  # no check_numerics left switched on


def test_same_seed_same_directions_and_unit_norm():
    model, x, y = M.regression_mlp()
    a = check_gradients(model, (x, y), loss="mse", full=False, directions=3, seed=7)
    b = check_gradients(model, (x, y), loss="mse", full=False, directions=3, seed=7)
    c = check_gradients(model, (x, y), loss="mse", full=False, directions=3, seed=8)
    assert list(a.directions) == tp.ParameterSpace(model).names
    for name, d in a.directions.items():
        assert d.shape == (3, int(np.prod(tp.ParameterSpace(model).shape_of(name))))
        np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0)
        np.testing.assert_array_equal(d, b.directions[name])
        assert not np.allclose(d, c.directions[name])
    assert a.max_abs_error == b.max_abs_error
    assert a.num_evaluations == 2 * 3 * 4  # 2 evaluations x 3 directions x 4 variables


def test_full_mode_uses_every_coordinate_and_auto_mode_switches_on_size():
    model, x, y = M.linear_regression()
    result = check_gradients(model, (x, y), loss="mse")  # 5 parameters: full automatically
    assert result.directions == "all coordinates" and result.num_evaluations == 2 * 5
    assert result.details["mode"] == "coordinates"
    lstm, lx, ly = M.lstm_model()
    assert tp.ParameterSpace(lstm).size > FULL_AUTO_LIMIT
    fast = check_gradients(lstm, (lx, ly), loss="mse", directions=1, wrt=["out/*"], full=False)
    assert fast.details["mode"] == "directions" and set(fast.directions) == {"out/kernel", "out/bias"}


def test_tolerances_are_overridable_and_documented_defaults():
    assert default_tolerances("float32") == (1e-3, 1e-5)
    assert default_tolerances("float64") == (1e-6, 1e-9)
    model, x, y = M.regression_mlp()
    tight = check_gradients(model, (x, y), loss="mse", rtol=1e-12, atol=0.0)  # float32 cannot meet this
    assert not tight.passed and tight.details["rtol"] == 1e-12
    assert check_gradients(model, (x, y), loss="mse", precision="float64").details["rtol"] == 1e-6


def test_step_size_rule():
    assert step_size(0.5) == pytest.approx(np.finfo(np.float64).eps ** (1 / 3))
    assert step_size(100.0) == pytest.approx(100 * np.finfo(np.float64).eps ** (1 / 3))
    assert step_size(1.0, "float32") == pytest.approx(np.finfo(np.float32).eps ** (1 / 3))
    assert step_size(3.0, eps=1e-4) == pytest.approx(3e-4)


def test_finite_difference_objective_matches_closed_form_gradient():
    model, x, y = M.linear_regression()
    from tfpartials.autodiff.problem import prepare

    obj, data = prepare(model, (x, y), "mse")
    fd = FiniteDifferenceObjective(obj, data)
    W = model.get_layer("lin").kernel.numpy().astype(np.float64)
    b = model.get_layer("lin").bias.numpy().astype(np.float64)
    r = x.astype(np.float64) @ W + b - y
    exact = np.concatenate([(2 * x.T @ r / len(x)).ravel(), 2 * r.sum(0) / len(x)])
    np.testing.assert_allclose(fd.directional(np.eye(5), step_size(1.0)), exact, rtol=1e-8, atol=1e-10)
    assert fd.value(fd.theta) == pytest.approx(float(np.mean(r ** 2)), rel=1e-12)


def test_input_jacobian_check_and_integer_input_skip():
    model, x, _ = M.regression_mlp()
    result = check_input_jacobian(model, x[:5])
    assert isinstance(result, CheckResult) and result.passed and result.directions == "all coordinates"
    assert result.worst_variable == "out[0]"
    emb, ex, _ = M.embedding_model()
    skipped = check_input_jacobian(emb, ex[:3])
    assert skipped.passed and skipped.skipped and "token ids" in skipped.skipped


def test_hvp_check_passes():
    model, x, y = M.regression_mlp()
    result = check_hvp(model, (x, y), loss="mse", full=False, directions=2)
    assert result.skipped is None
    assert result.passed and result.max_rel_error < 1e-3
    assert result.directions["all"].shape == (2, tp.ParameterSpace(model).size)
    lin, lx, ly = M.linear_regression()  # full mode: the whole Hessian 2 Z^T Z / N, column by column
    full = check_hvp(lin, (lx, ly), loss="mse", precision="float64")
    assert full.passed and full.directions == "all coordinates" and full.num_evaluations == 2 * 5
    assert full.max_rel_error < 1e-8


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"directions": 0}, tp.InputError, "directions: expected a positive integer, got 0"),
    ({"directions": "4"}, TypeError, "directions: expected a positive integer"),
    ({"seed": -1}, tp.InputError, "seed: expected a non-negative integer"),
    ({"full": "yes"}, TypeError, "full: expected True, False or None"),
    ({"rtol": -1.0}, tp.InputError, "rtol: expected a finite number > 0"),
    ({"atol": float("nan")}, tp.InputError, "atol: expected a finite number >= 0"),
    ({"eps": 0.0}, tp.InputError, "eps: expected a finite number > 0"),
    ({"unconnected": "ignore"}, tp.InputError, "unconnected: expected one of 'error', 'zero'"),
    ({"wrt": ["nope/*"]}, tp.InputError, "wrt: no trainable variable matches 'nope/\\*'"),
])
def test_bad_arguments_give_one_line_errors(kwargs, exc, match):
    model, x, y = M.linear_regression()
    with pytest.raises(exc, match=match):
        check_gradients(model, (x, y), loss="mse", **kwargs)


def test_bad_check_names_and_data():
    model, x, y = M.linear_regression()
    with pytest.raises(tp.InputError, match="what: expected one of 'gradients', 'hvp', 'jacobian', got 'hessian'"):
        check(model, (x, y), loss="mse", what="gradients,hessian")
    with pytest.raises(tp.InputError, match="what: expected one or more of gradients, hvp, jacobian"):
        check(model, (x, y), loss="mse", what="")
    with pytest.raises(tp.InputError, match="needs targets"):
        check(model, x, loss="mse")
    with pytest.raises(tp.InputError, match="jacobian_examples: expected a positive integer"):
        check(model, (x, y), loss="mse", jacobian_examples=0)
    with pytest.raises(TypeError, match="model: expected a Keras model"):
        check_input_jacobian("model.keras", x)


def test_exact_over_batches_regularization_and_tf_data():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh", name="h",
                                                                    kernel_regularizer=keras.regularizers.L2(0.1)),
                              keras.layers.Dense(1, name="out")])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(33, 3)).astype("float32"), rng.normal(size=(33, 1)).astype("float32")
    # 33 examples in batches of 4: the last batch is partial; float64 on both sides meets the tight tolerance
    for reg in (True, False):
        r = check_gradients(model, (x, y), loss="mse", batch_size=4, precision="float64", include_regularization=reg)
        assert r.passed and r.max_rel_error < 1e-7, r.summary()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(5)
    report = check(model, ds, loss="mse", what=("gradients", "jacobian"), batch_size=8)
    assert report.passed, [r.summary() for r in report.results]
