"""Global sensitivity (DGSM): closed-form test functions as Keras models against analytic measures.

References are independent of the library: the DGSM nu_i = E[(df/dx_i)^2], the output variance and the Sobol
total indices of the Ishigami and Sobol' g-functions are derived in closed form below, and the derivatives on
the sample are evaluated from their closed forms in numpy.
"""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest

import tfpartials as tp
from tfpartials.cli.main import main

A_ISH, B_ISH = 7.0, 0.1
G_A = np.array([0.0, 1.0, 4.5, 9.0])
PI = math.pi


# ------------------------------------------------------------------------------------------------- models
def ishigami_model():
    """f = sin x1 + a sin^2 x2 + b x3^4 sin x1, keras.ops in a functional model (float64)."""
    inp = keras.Input((3,), dtype="float64", name="x")
    x1, x2, x3 = inp[:, 0:1], inp[:, 1:2], inp[:, 2:3]
    s1 = keras.ops.sin(x1)
    out = s1 + A_ISH * keras.ops.square(keras.ops.sin(x2)) + B_ISH * keras.ops.power(x3, 4) * s1
    return keras.Model(inp, out, name="ishigami")


class GFunction(keras.layers.Layer):
    """Sobol' g-function prod_i (|4 x_i - 2| + a_i) / (1 + a_i)."""

    def __init__(self, a, **kwargs):
        super().__init__(**kwargs)
        self.a = np.asarray(a, "float64")

    def call(self, x):
        a = keras.ops.convert_to_tensor(self.a, dtype=x.dtype)
        return keras.ops.prod((keras.ops.abs(4.0 * x - 2.0) + a) / (1.0 + a), axis=1, keepdims=True)


def g_model():
    return keras.Sequential([keras.Input((len(G_A),), dtype="float64"), GFunction(G_A, dtype="float64")],
                            name="g_function")


# --------------------------------------------------------------------------------------- closed forms
def ishigami_reference():
    """Analytic nu_i, D and S_T,i for x ~ U(-pi, pi)^3 (E x^4 = pi^4/5, E x^6 = pi^6/7, E x^8 = pi^8/9)."""
    a, b = A_ISH, B_ISH
    nu = np.array([0.5 * (1 + 2 * b * PI**4 / 5 + b**2 * PI**8 / 9),   # cos^2 x1 (1 + b x3^4)^2
                   a**2 / 2,                                           # (a sin 2 x2)^2
                   16 * b**2 * (PI**6 / 7) * 0.5])                     # (4 b x3^3 sin x1)^2
    v1 = 0.5 * (1 + b * PI**4 / 5) ** 2
    v2 = a**2 / 8
    v13 = b**2 * PI**8 * (1 / 18 - 1 / 50)
    D = v1 + v2 + v13
    total = np.array([v1 + v13, v2, v13]) / D
    return nu, D, total


def ishigami_gradient(x):
    a, b = A_ISH, B_ISH
    x1, x2, x3 = x.T
    return np.stack([np.cos(x1) * (1 + b * x3**4), 2 * a * np.sin(x2) * np.cos(x2),
                     4 * b * x3**3 * np.sin(x1)], axis=1)


def ishigami_value(x):
    x1, x2, x3 = x.T
    return np.sin(x1) + A_ISH * np.sin(x2) ** 2 + B_ISH * x3**4 * np.sin(x1)


def g_reference():
    """Analytic nu_i, D, S_T,i for x ~ U(0, 1)^d: E g_j^2 = 1 + V_j with V_j = 1 / (3 (1 + a_j)^2)."""
    V = 1.0 / (3.0 * (1.0 + G_A) ** 2)
    others = np.array([np.prod(np.delete(1 + V, i)) for i in range(len(G_A))])
    nu = 16.0 / (1.0 + G_A) ** 2 * others        # (4 / (1 + a_i))^2 prod_{j != i} E g_j^2
    D = np.prod(1 + V) - 1
    total = V * others / D
    return nu, D, total


def g_gradient(x):
    g = (np.abs(4 * x - 2) + G_A) / (1 + G_A)
    d = 4 * np.sign(4 * x - 2) / (1 + G_A)
    return np.stack([d[:, i] * np.prod(np.delete(g, i, axis=1), axis=1) for i in range(x.shape[1])], axis=1)


def inside(value, interval):
    return bool(np.all((interval[..., 0] <= value) & (value <= interval[..., 1])))


# ------------------------------------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def ishigami():
    model = ishigami_model()
    x = np.random.default_rng(1).uniform(-PI, PI, (20000, 3))
    return model, x, tp.sensitivity(model, x, bounds=(-PI, PI), n_bootstrap=400, confidence=0.99, seed=0)


def test_ishigami_matches_closed_forms(ishigami):
    model, x, s = ishigami
    nu, D, total = ishigami_reference()
    grad = ishigami_gradient(x)  # closed-form derivatives on the same sample
    np.testing.assert_allclose(s.dgsm, np.mean(grad**2, axis=0), rtol=1e-10)
    np.testing.assert_allclose(s.mean_abs, np.mean(np.abs(grad), axis=0), rtol=1e-10)
    np.testing.assert_allclose(s.mean, np.mean(grad, axis=0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(s.variance, np.var(ishigami_value(x), ddof=1), rtol=1e-10)
    np.testing.assert_allclose(s.share, nu / nu.sum(), rtol=0.05)
    # the Monte Carlo estimates cover the analytic values
    assert inside(nu, s.dgsm_interval), (nu, s.dgsm_interval)
    assert inside(nu / nu.sum(), s.share_interval)
    assert s.variance_interval[0] <= D <= s.variance_interval[1]
    assert np.all(s.dgsm_interval[:, 0] < s.dgsm) and np.all(s.dgsm < s.dgsm_interval[:, 1])
    # Sobol bounds: the analytic bound (2 pi)^2 nu / (pi^2 D) holds, and so does the whole estimated interval
    assert np.all(4 * nu / D >= total)
    np.testing.assert_allclose(s.poincare, np.full(3, 4.0), rtol=1e-12)
    assert inside(4 * nu / D, s.sobol_bound_interval)
    assert np.all(s.sobol_bound_interval[:, 0] >= total)
    assert s.ranking() == [1, 2, 0] == list(np.argsort(-nu)) and s.names == ("x0", "x1", "x2")
    assert s.distribution == "uniform" and s.num_examples == 20000 and s.component == 0


def test_g_function_custom_layer():
    model = g_model()
    x = np.random.default_rng(2).uniform(0, 1, (20000, len(G_A)))
    s = tp.sensitivity(model, x, bounds=[(0, 1)] * len(G_A), n_bootstrap=400, confidence=0.99, seed=3,
                       feature_names=["a", "b", "c", "d"], batch_size=4096)
    nu, D, total = g_reference()
    np.testing.assert_allclose(s.dgsm, np.mean(g_gradient(x) ** 2, axis=0), rtol=1e-10)
    assert inside(nu, s.dgsm_interval), (nu, s.dgsm_interval)
    assert s.variance_interval[0] <= D <= s.variance_interval[1]
    assert np.all(nu / (PI**2 * D) >= total)           # the analytic bound holds (ratio 48 / pi^2)
    np.testing.assert_allclose(nu / (PI**2 * D) / total, 48 / PI**2, rtol=1e-12)
    assert np.all(s.sobol_bound_interval[:, 0] >= total)
    assert s.ranking() == [0, 1, 2, 3] and s.names == ("a", "b", "c", "d")


def test_normal_inputs_bound_is_tight_for_a_linear_model():
    """f = c . x, x ~ N(mu, sigma^2): nu = c^2, D = sum c^2 sigma^2, S_T = c^2 sigma^2 / D = the bound."""
    c, sigma = np.array([1.0, -2.0, 0.5]), np.array([2.0, 0.5, 1.0])
    inp = keras.Input((3,), dtype="float64")
    model = keras.Model(inp, keras.ops.sum(inp * c, axis=1, keepdims=True))
    x = np.random.default_rng(4).normal(1.0, sigma, (5000, 3))
    s = tp.sensitivity(model, x, distribution="normal", variances=sigma**2, n_bootstrap=400, seed=1)
    total = c**2 * sigma**2 / np.sum(c**2 * sigma**2)
    np.testing.assert_allclose(s.dgsm, c**2, rtol=1e-12)
    np.testing.assert_allclose(s.mean, c, rtol=1e-12)
    np.testing.assert_allclose(s.dgsm_interval, np.stack([c**2, c**2], 1), rtol=1e-12)
    assert inside(total, s.sobol_bound_interval), (total, s.sobol_bound_interval)
    np.testing.assert_allclose(s.sobol_bound, sigma**2 * c**2 / np.var(x @ c, ddof=1), rtol=1e-10)
    assert s.distribution == "normal"


def test_component_output_selection_seed_and_no_bounds():
    inp = keras.Input((3,), dtype="float64")
    f = ishigami_model()(inp)
    model = keras.Model(inp, [f, keras.ops.concatenate([f, 2.0 * f], axis=1)])
    x = np.random.default_rng(5).uniform(-PI, PI, (300, 3))
    s0 = tp.sensitivity(model, x, output=1, component=0, n_bootstrap=200, seed=7)
    s1 = tp.sensitivity(model, x, output=1, component=1, n_bootstrap=200, seed=7)
    np.testing.assert_allclose(s1.dgsm, 4 * s0.dgsm, rtol=1e-12)          # d(2f) = 2 df
    np.testing.assert_allclose(s1.share, s0.share, rtol=1e-12)
    np.testing.assert_allclose(s0.dgsm, np.mean(ishigami_gradient(x) ** 2, axis=0), rtol=1e-10)
    again = tp.sensitivity(model, x, output=1, component=0, n_bootstrap=200, seed=7)
    np.testing.assert_array_equal(again.dgsm_interval, s0.dgsm_interval)
    other = tp.sensitivity(model, x, output=1, component=0, n_bootstrap=200, seed=8)
    assert not np.array_equal(other.dgsm_interval, s0.dgsm_interval)
    assert s0.sobol_bound is None and s0.poincare is None and s0.distribution is None
    assert "sobol_total_bound" not in s0.to_dict()["inputs"][0]
    assert json.dumps(s0.to_dict())


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(x=np.zeros((1, 3))), tp.InputError, "at least 2 examples"),
    (dict(bounds=(0, 1, 2)), tp.InputError, r"bounds: expected \(lo, hi\) or 3"),
    (dict(bounds=(-PI, -4.0)), tp.InputError, "finite lo < hi"),
    (dict(bounds=(0.0, PI)), tp.InputError, "outside its bounds"),
    (dict(bounds="wide"), TypeError, "bounds: expected"),
    (dict(variances=1.0), tp.InputError, "variances: given with distribution='uniform'"),
    (dict(distribution="normal", bounds=(-PI, PI)), tp.InputError, "bounds: given with distribution='normal'"),
    (dict(distribution="normal", variances=[1.0, -1.0, 1.0]), tp.InputError, "finite positive"),
    (dict(distribution="normal", variances=[1.0, 1.0]), tp.InputError, "one number or 3"),
    (dict(distribution="beta"), tp.InputError, "distribution: expected one of"),
    (dict(feature_names=["a"]), tp.InputError, "feature_names: expected 3 names"),
    (dict(n_bootstrap=0), tp.InputError, "n_bootstrap"),
    (dict(confidence=1.5), tp.InputError, r"confidence: expected a number in \(0, 1\)"),
    (dict(component=1), tp.InputError, "out of range"),
    (dict(output="nope"), tp.InputError, "unknown output 'nope'"),
    (dict(training=True), tp.InputError, "training=True is refused"),
])
def test_errors(kwargs, error, match):
    model = ishigami_model()
    x = kwargs.pop("x", np.random.default_rng(0).uniform(-PI, PI, (20, 3)))
    with pytest.raises(error, match=match):
        tp.sensitivity(model, x, n_bootstrap=kwargs.pop("n_bootstrap", 10), **kwargs)


def test_multi_unit_output_needs_a_component_and_constant_output_refuses_bounds():
    inp = keras.Input((2,), dtype="float64")
    two = keras.Model(inp, keras.ops.concatenate([inp, inp], axis=1))
    x = np.random.default_rng(0).uniform(0, 1, (10, 2))
    with pytest.raises(tp.InputError, match="choose one with component=INDEX"):
        tp.sensitivity(two, x)
    const = keras.Model(inp, keras.ops.sum(inp * 0.0, axis=1, keepdims=True))
    with pytest.raises(tp.InputError, match="output is constant"):
        tp.sensitivity(const, x, bounds=(0, 1), n_bootstrap=10)
    s = tp.sensitivity(const, x, n_bootstrap=10)  # without bounds: zero measures, no division
    assert np.all(s.dgsm == 0) and np.all(s.share == 0)


# ---------------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("sensitivity-cli")
    ishigami_model().save(d / "ish.keras")
    x = np.random.default_rng(6).uniform(-PI, PI, (2000, 3))
    rows = ["p,q,r"] + [",".join(f"{v:.17g}" for v in row) for row in x]
    (d / "x.csv").write_text("\n".join(rows) + "\n")
    np.save(d / "x.npy", x)
    return d, x


def test_cli_writes_json_and_plot(cli_files, capsys):
    d, x = cli_files
    out, png = d / "s.json", d / "s.png"
    code = main(["sensitivity", str(d / "ish.keras"), "--data", str(d / "x.csv"), "--bounds=-3.1415927:3.1415927",
                 "--n-bootstrap", "200", "--out", str(out), "--plot", str(png)])
    assert code == 0
    assert "Global sensitivity" in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["ranking"] == ["q", "r", "p"] and record["distribution"] == "uniform"
    dgsm = [row["dgsm"]["value"] for row in record["inputs"]]
    x32 = x.astype("float32").astype("float64")  # the CSV reader gives float32 columns
    np.testing.assert_allclose(dgsm, np.mean(ishigami_gradient(x32) ** 2, axis=0), rtol=1e-10)
    assert all("sobol_total_bound" in row for row in record["inputs"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["sensitivity", str(d / "ish.keras"), "--data", str(d / "x.npy"), "--quiet",
                 "--variances", "3.29", "--out", str(out), "--overwrite", "--n-bootstrap", "20"]) == 0
    assert json.loads(out.read_text())["distribution"] == "normal"


@pytest.mark.parametrize("extra,match", [
    (["--bounds", "0:1:2"], "--bounds: expected LO:HI"),
    (["--bounds", "0:1", "--variances", "1"], "exclude each other"),
    (["--variances", "one"], "--variances: expected numbers"),
    (["--bounds", "0:1"], "outside its bounds"),
    (["--component", "x"], "--component: expected an integer"),
    (["--n-bootstrap", "0"], "n_bootstrap"),
    (["--plot", "s.svg"], "--plot: expected a .png"),
])
def test_cli_errors_exit_2_and_write_nothing(cli_files, capsys, extra, match):
    d, _ = cli_files
    out = d / "never.json"
    code = main(["sensitivity", str(d / "ish.keras"), "--data", str(d / "x.npy"), "--out", str(out), *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("tfpartials: error:") and match in err and err.count("\n") == 1
    assert not out.exists()
