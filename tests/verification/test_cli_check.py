"""tfpartials check: a table, JSON results, exit 0 all pass / 1 a check failed / 2 bad input (one line)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests import models as M
from tfpartials.cli.main import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("check-cli")
    model, x, y = M.regression_mlp()
    model.compile(loss="mse")
    model.save(d / "reg.keras")
    np.savez(d / "reg.npz", x=x, y=y)
    emb, ex, ey = M.embedding_model()
    emb.save(d / "emb.keras")
    np.savez(d / "emb.npz", x=ex, y=ey)
    return d


def test_all_pass_exit_0_with_table_and_json(files, capsys):
    out = files / "check.json"
    code = main(["check", str(files / "reg.keras"), "--data", str(files / "reg.npz"), "--what", "gradients,jacobian",
                 "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert "gradients" in text and "jacobian" in text and "passed" in text and "all checks passed" in text
    report = json.loads(out.read_text())
    assert report["passed"] is True
    assert [r["name"] for r in report["results"]] == ["gradients", "jacobian"]
    grad = report["results"][0]
    assert grad["directions"] == "all coordinates" and grad["num_evaluations"] == 2 * 26
    assert grad["max_rel_error"] < 1e-3 and grad["worst_variable"] in grad["details"]["blocks"]
    assert report["diagnostics"]["gradient_cuts"] == []


def test_failed_check_exit_1(files, capsys):
    code = main(["check", str(files / "reg.keras"), "--data", str(files / "reg.npz"), "--what", "gradients",
                 "--rtol", "1e-12", "--atol", "0", "--directions", "2", "--seed", "3"])
    text = capsys.readouterr().out
    assert code == 1
    assert "FAILED" in text


def test_integer_inputs_skip_the_jacobian_and_float64(files, capsys):
    code = main(["check", str(files / "emb.keras"), "--data", str(files / "emb.npz"), "--loss", "mse",
                 "--what", "jacobian,gradients", "--precision", "float64", "--full"])
    text = capsys.readouterr().out
    assert code == 0
    assert "skipped" in text and "1e-06" in text


@pytest.mark.parametrize("extra,message", [
    (["--directions", "0"], "--directions: expected a positive integer, got 0"),
    (["--seed", "-2"], "--seed: expected a non-negative integer, got -2"),
    (["--rtol", "-1"], "--rtol: expected a finite number >= 0, got -1.0"),
    (["--rtol", "0"], "--rtol: expected a finite number > 0, got 0"),
    (["--what", "gradients,hessian"], "what: expected one of 'gradients', 'hvp', 'jacobian', got 'hessian'"),
    (["--wrt", "missing/*"], "wrt: no trainable variable matches 'missing/*'"),
    (["--directions", "many"], "argument --directions: invalid int value: 'many'"),
])
def test_bad_input_exit_2_one_line(files, capsys, extra, message):
    try:
        code = main(["check", str(files / "reg.keras"), "--data", str(files / "reg.npz")] + extra)
    except SystemExit as exc:  # argparse errors exit from the parser
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1


def test_bad_input_files_exit_2(files, capsys):
    assert main(["check", str(files / "reg.keras"), "--data", str(files / "nope.npz")]) == 2
    assert "data file not found" in capsys.readouterr().err
    (files / "taken.json").write_text("{}")
    assert main(["check", str(files / "reg.keras"), "--data", str(files / "reg.npz"),
                 "--out", str(files / "taken.json")]) == 2
    assert "already exists" in capsys.readouterr().err
