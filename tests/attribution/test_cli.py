"""tfpartials attribute: files, keys, plots, and one-line errors with exit code 2."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest

from tests.attribution import _references as R
from tfpartials.cli.main import main


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits, diabetes):
    d = tmp_path_factory.mktemp("attribute-cli")
    digits.model.save(d / "digits.keras")
    np.savez(d / "digits.npz", x=digits.x[:6])
    diabetes.model.save(d / "diabetes.keras")
    rows = [",".join(diabetes.feature_names + ["label"])]
    rows += [",".join(f"{v:.6f}" for v in list(r) + [t[0]]) for r, t in zip(diabetes.x[:20], diabetes.y[:20])]
    (d / "diabetes.csv").write_text("\n".join(rows) + "\n")
    return d


def test_integrated_gradients_npz_and_image_plot(files, digits):
    out, plot = files / "ig.npz", files / "ig.png"
    code = main(["attribute", str(files / "digits.keras"), "--data", str(files / "digits.npz"), "--method",
                 "integrated-gradients", "--steps", "32", "--out", str(out), "--plot", str(plot), "--quiet",
                 "--max-images", "4"])
    assert code == 0
    with np.load(out) as z:
        assert set(z.files) == {"attributions", "targets", "delta"}
        a, t, delta = z["attributions"], z["targets"], z["delta"]
    x = digits.x[:6]
    assert a.shape == x.shape
    np.testing.assert_array_equal(t, np.asarray(digits.model(x)).argmax(1))
    change = R.output_of(digits.model, x, t) - R.output_of(digits.model, np.zeros_like(x), t)
    np.testing.assert_allclose(a.reshape(6, -1).sum(1) - change, delta, atol=1e-5)
    assert np.all(np.abs(delta) < 0.01 * np.abs(change))
    png = mpimg.imread(plot)
    assert png.shape[:2] == (4 * 200, 2 * 200)


def test_smoothgrad_on_csv_with_feature_names(files, diabetes, capsys):
    out, plot = files / "sg.npz", files / "sg.png"
    code = main(["attribute", str(files / "diabetes.keras"), "--data", str(files / "diabetes.csv"),
                 "--label-column", "label", "--method", "smoothgrad", "--samples", "4", "--noise", "0.05",
                 "--seed", "1", "--out", str(out), "--plot", str(plot)])
    assert code == 0
    text = capsys.readouterr().out
    assert "mean |attribution| per feature" in text and "bmi" in text
    with np.load(out) as z:
        assert z["attributions"].shape == (20, 10)
        assert list(z["feature_names"]) == diabetes.feature_names
        assert np.all(z["targets"] == 0)
    assert mpimg.imread(plot).shape[1] == 700


def test_saliency_with_a_target_and_overwrite(files, digits):
    out = files / "sal.npz"
    args = ["attribute", str(files / "digits.keras"), "--data", str(files / "digits.npz"), "--method",
            "saliency", "--target", "3", "--out", str(out), "--quiet"]
    assert main(args) == 0
    assert main(args) == 2  # exists
    assert main(args + ["--overwrite"]) == 0
    with np.load(out) as z:
        ref = R.input_gradient_tape(digits.model, digits.x[:6], np.full(6, 3))
        np.testing.assert_allclose(z["attributions"], ref, rtol=1e-5, atol=1e-6)
        assert np.all(z["targets"] == 3)


@pytest.mark.parametrize("extra,message", [
    (["--method", "saliency", "--target", "10"], "index 10 is outside the output of size 10"),
    (["--method", "integrated-gradients", "--steps", "0"], "steps: expected a positive integer, got 0"),
    (["--method", "saliency", "--steps", "8"], "--steps applies to integrated-gradients"),
    (["--method", "saliency", "--target", "nope"], "unknown output 'nope'"),
    (["--method", "saliency", "--target", "-1"], "expected a non-negative index"),
    (["--method", "saliency", "--plot", "a.pdf"], "expected a .png file name"),
    (["--method", "smoothgrad", "--noise", "-1"], "noise_std: expected a finite number >= 0"),
])
def test_bad_input_exits_2_with_one_line(files, capsys, extra, message):
    code = main(["attribute", str(files / "digits.keras"), "--data", str(files / "digits.npz"), "--quiet"]
                + extra)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1


def test_wrong_input_shape_exits_2(files, capsys):
    np.save(files / "bad.npy", np.zeros((3, 5), np.float32))
    code = main(["attribute", str(files / "digits.keras"), "--data", str(files / "bad.npy"), "--method",
                 "saliency"])
    assert code == 2 and "expected shape" in capsys.readouterr().err
