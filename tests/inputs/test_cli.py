"""tfpartials jacobian: npz keys and shapes, output/input selection, and one-line errors with exit code 2."""

from __future__ import annotations

import numpy as np
import pytest

from tests import models as M
from tests.inputs import _models as IM
from tests.inputs import _references as R
from tfpartials.cli.main import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("jacobian-cli")
    model, x, _ = M.mlp()
    model.save(d / "mlp.keras")
    np.save(d / "x.npy", x[:4])
    two = IM.two_in_two_out()
    two.save(d / "two.keras")
    rng = np.random.default_rng(0)
    np.savez(d / "two.npz", a=rng.normal(size=(3, 3)).astype("float32"), b=rng.normal(size=(3, 2)).astype("float32"))
    return d, model, x[:4], two


def test_order_2_writes_outputs_jacobian_and_hessian(files, capsys):
    d, model, x, _ = files
    out = d / "J.npz"
    code = main(["jacobian", str(d / "mlp.keras"), "--data", str(d / "x.npy"), "--order", "2", "--out", str(out)])
    assert code == 0
    assert "hessian" in capsys.readouterr().out
    with np.load(out) as z:
        assert {"outputs", "jacobian", "hessian"} <= set(z.files)
        outputs, J, H = z["outputs"], z["jacobian"], z["hessian"]
    assert outputs.shape == (4, 3) and J.shape == (4, 3, 5) and H.shape == (4, 3, 5, 5)
    np.testing.assert_allclose(outputs, model(x).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(J, R.tape_input_jacobian(model, x), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(H[:, 1], R.tape_input_hessian(model, x, 1), rtol=1e-4, atol=1e-5)


def test_output_and_input_selection_forward_mode_and_overwrite(files):
    d, _, _, two = files
    out = d / "two.npz.out.npz"
    args = ["jacobian", str(d / "two.keras"), "--data", str(d / "two.npz"), "--output", "o1", "--input", "b",
            "--mode", "forward", "--max-memory", "64MiB", "--quiet", "--out", str(out)]
    assert main(args) == 0
    assert main(args) == 2  # exists, no --overwrite
    assert main(args + ["--overwrite", "--output", "0", "--input", "1"]) == 0
    with np.load(d / "two.npz") as z:
        xs = [z["a"], z["b"]]
    with np.load(out) as z:
        assert z["jacobian"].shape == (3, 2, 2) and "hessian" not in z.files
        np.testing.assert_allclose(z["jacobian"], R.tape_multi_input_jacobian(two, xs, 1, 0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("extra,message", [
    (["--output", "nope"], "unknown output 'nope'"),
    (["--mode", "sideways"], "invalid choice"),
    (["--max-memory", "lots"], "max_memory"),
])
def test_bad_input_exits_2_with_one_line(files, capsys, extra, message):
    d = files[0]
    try:
        code = main(["jacobian", str(d / "mlp.keras"), "--data", str(d / "x.npy"), "--quiet", *extra])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_wrong_data_shape_and_multi_output_without_choice(files, capsys):
    d = files[0]
    np.save(d / "bad.npy", np.zeros((3, 7), "float32"))
    assert main(["jacobian", str(d / "mlp.keras"), "--data", str(d / "bad.npy"), "--quiet"]) == 2
    assert "expected shape (N, 5)" in capsys.readouterr().err
    assert main(["jacobian", str(d / "two.keras"), "--data", str(d / "two.npz"), "--quiet"]) == 2
    assert "choose one with" in capsys.readouterr().err
