"""`tfpartials report` and `tfpartials demo` end to end through the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests import models as M


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    model, x, y = M.mlp(n=30)
    model.compile(loss="sparse_categorical_crossentropy")
    model.save(d / "m.keras")
    np.savez(d / "d.npz", x=x, y=y)
    np.savez(d / "bad_shape.npz", x=x[:, :3], y=y)
    np.savez(d / "bad_labels.npz", x=x, y=y + 7)
    (d / "not_a_model.keras").write_bytes(b"hello")
    return d


def test_report_command_writes_the_report_and_prints_a_summary(files, tmp_path, capsys):
    from tfpartials.cli.main import main

    out = tmp_path / "rep"
    code = main(["report", str(files / "m.keras"), "--data", str(files / "d.npz"), "--from-logits",
                 "--out", str(out), "--skip", "curvature", "--skip", "check", "--skip", "attributions",
                 "--skip", "per-example", "--seed", "2", "--top-k", "2",
                 "--num-matvecs", "6"])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert res["sections"]["curvature"]["status"] == "skipped"
    assert res["provenance"]["settings"]["top_k"] == 2 and res["provenance"]["seed"] == 2
    assert res["provenance"]["model_file"]["path"] == str(files / "m.keras")
    printed = capsys.readouterr().out
    assert "gradients" in printed and str(out / "index.html") in printed


@pytest.mark.parametrize("args,match", [
    (["--data", "{d}/missing.npz"], "data file not found"),
    (["--data", "{d}/bad_shape.npz"], "inputs: expected shape"),
    (["--data", "{d}/bad_labels.npz"], "class labels must lie in"),
    (["--data", "{d}/d.npz", "--top-k", "0"], "top_k: expected a positive integer"),
    (["--data", "{d}/d.npz", "--num-matvecs", "0"], "num_matvecs: expected a positive integer"),
    (["--data", "{d}/d.npz", "--loss", "nope"], "unknown loss 'nope'"),
    (["--data", "{d}/d.npz", "--skip", "nothing"], "invalid choice: 'nothing'"),
    (["--data", "{d}/d.npz", "--max-examples", "-1"], "max_examples: expected a positive integer"),
])
def test_bad_input_exit_2_one_line_no_directory(files, tmp_path, capsys, monkeypatch, args, match):
    from tfpartials.cli.main import main
    from tfpartials.reports import sections

    for key in list(sections.RUNNERS):
        monkeypatch.setitem(sections.RUNNERS, key, _must_not_run)
    out = tmp_path / "rep"
    argv = ["report", str(files / "m.keras"), *[a.format(d=files) for a in args], "--from-logits", "--out", str(out)]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("tfpartials: error:"), err
    assert match in err[0]
    assert list(tmp_path.iterdir()) == []


def _must_not_run(*args, **kwargs):
    raise AssertionError("heavy work started although the input was bad")


def test_bad_model_file_exit_2(files, tmp_path, capsys):
    from tfpartials.cli.main import main

    code = main(["report", str(files / "not_a_model.keras"), "--data", str(files / "d.npz"),
                 "--out", str(tmp_path / "rep")])
    assert code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "rep").exists()


def test_existing_directory_is_refused_without_overwrite(files, tmp_path, capsys):
    from tfpartials.cli.main import main

    out = tmp_path / "rep"
    out.mkdir()
    (out / "x").write_text("keep")
    code = main(["report", str(files / "m.keras"), "--data", str(files / "d.npz"), "--out", str(out)])
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert (out / "x").read_text() == "keep"


def test_demo_quick_end_to_end(tmp_path, monkeypatch, capsys):
    from tfpartials.cli.main import main

    monkeypatch.setenv("TFPARTIALS_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    index = (out / "index.html").read_text()
    assert 'href="digits/index.html"' in index and 'href="tabular/index.html"' in index
    top = json.loads((out / "results.json").read_text())
    assert [r["href"] for r in top["reports"]] == ["digits/index.html", "tabular/index.html"]
    for name, kind in (("digits", "image"), ("tabular", "tabular")):
        res = json.loads((out / name / "results.json").read_text())
        assert res["data"]["kind"] == kind
        assert res["sections"]["gradients"]["status"] == "ok"
        assert [s["status"] for s in res["sections"].values()].count("failed") == 0, \
            {k: s["reason"] for k, s in res["sections"].items()}
        assert (out / name / "index.html").is_file()
    tab = json.loads((out / "tabular" / "results.json").read_text())
    assert tab["data"]["feature_names"][:4] == ["age", "sex", "bmi", "bp"]
    from tests.reports.test_html import _agrees, _lookup, _Page

    page = _Page()
    page.feed(index)
    assert len(page.cells) >= 10
    for key, text in page.cells:
        assert _agrees(text, _lookup(top, key)), key
    printed = capsys.readouterr().out
    assert str(out / "index.html") in printed
    assert main(["demo", "--quick", "--out", str(out)]) == 2  # exists: refused, untouched
    assert "already exists" in capsys.readouterr().err


def test_report_with_held_out_data_adds_the_uncertainty_section(files, tmp_path, capsys):
    from tfpartials.cli.main import main

    out = tmp_path / "rep"
    code = main(["report", str(files / "m.keras"), "--data", str(files / "d.npz"), "--eval", str(files / "d.npz"),
                 "--from-logits", "--out", str(out), "--skip", "curvature", "--skip", "check", "--skip", "influence",
                 "--skip", "attributions", "--skip", "per-example", "--skip", "sensitivity"])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    sec = res["sections"]["uncertainty"]
    assert sec["status"] == "ok", sec["reason"]
    assert sec["results"]["num_eval"] == 30 and res["provenance"]["settings"]["eval_examples"] == 30
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 3, err  # one line per section that ran


def test_report_with_bad_held_out_data_exits_2_before_any_work(files, tmp_path, capsys):
    from tfpartials.cli.main import main

    out = tmp_path / "rep"
    code = main(["report", str(files / "m.keras"), "--data", str(files / "d.npz"), "--eval",
                 str(files / "bad_shape.npz"), "--from-logits", "--out", str(out)])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tfpartials: error:")
