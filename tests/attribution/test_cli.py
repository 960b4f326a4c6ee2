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


# ------------------------------------------------------------------------------------------ token models
@pytest.fixture(scope="module")
def token_files(tmp_path_factory):
    from tests.attribution.test_layer import decisive_token_model

    d = tmp_path_factory.mktemp("attribute-tokens")
    decisive_token_model().save(d / "tokens.keras")
    x = np.array([[1, 7, 2, 3, 4], [5, 6, 1, 2, 7], [7, 1, 1, 3, 2]], np.int32)  # token 7 decides the class
    np.save(d / "ids.npy", x)
    (d / "vocab.txt").write_text("\n".join(["<pad>", "the", "a", "film", "was", "not", "very", "great"]) + "\n")
    return d, x


def test_layer_ig_on_token_ids_with_a_vocabulary(token_files, capsys):
    d, x = token_files
    out = d / "tok.npz"
    code = main(["attribute", str(d / "tokens.keras"), "--data", str(d / "ids.npy"), "--method",
                 "integrated-gradients", "--layer", "embedding", "--vocab", str(d / "vocab.txt"), "--steps", "32",
                 "--top", "2", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "top tokens" in text and "great" in text
    with np.load(out) as z:
        assert set(z.files) == {"attributions", "targets", "delta", "tokens"}
        a, t, tokens, delta = z["attributions"], z["targets"], z["tokens"], z["delta"]
    assert a.shape == x.shape and tokens.shape == x.shape and tokens[0, 1] == "great"
    assert np.all(t == 1)
    np.testing.assert_array_equal(np.abs(a).argmax(1), np.argmax(x == 7, axis=1))
    model = __import__("keras").models.load_model(d / "tokens.keras")
    change = R.output_of(model, x, t) - R.output_of(model, np.zeros_like(x), t)
    assert np.all(np.abs(a.sum(1) - change) <= 0.01 * np.abs(change))
    np.testing.assert_allclose(delta, a.sum(1) - change, atol=1e-5)


@pytest.mark.parametrize("extra,message", [
    (["--layer", "nope"], "unknown layer 'nope'"),
    ([], "integer inputs"),
    (["--layer", "embedding", "--vocab", "missing.txt"], "--vocab: no such file"),
    (["--layer", "embedding", "--vocab", "short"], "token id 7 is outside the vocabulary of 3 lines"),
    (["--layer", "hidden", "--plot", "b.png"], "--plot: attributions at layer 'hidden' have shape (2,)"),
    (["--layer", "embedding", "--plot", "a.png"], None),
])
def test_token_errors_exit_2(token_files, capsys, extra, message):
    d, _ = token_files
    (d / "short").write_text("a\nb\nc\n")
    extra = [str(d / e) if e in ("missing.txt", "short", "a.png", "b.png") else e for e in extra]
    code = main(["attribute", str(d / "tokens.keras"), "--data", str(d / "ids.npy"), "--method", "saliency",
                 "--quiet"] + extra)
    err = capsys.readouterr().err
    if message is None:  # a plot of per-token scores is the same shape as the ids: drawn as bars
        assert code == 0 and (d / "a.png").is_file()
        return
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (d / "b.png").exists()


def test_vocab_needs_token_ids(files, capsys):
    (files / "v.txt").write_text("a\n")
    code = main(["attribute", str(files / "digits.keras"), "--data", str(files / "digits.npz"), "--method",
                 "saliency", "--vocab", str(files / "v.txt"), "--quiet"])
    assert code == 2 and "--vocab: the inputs are not token ids" in capsys.readouterr().err
