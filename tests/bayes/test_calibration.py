"""Calibration metrics against hand computations on small arrays."""

from __future__ import annotations

import numpy as np
import pytest

import tfpartials as tp
from tfpartials import InputError


def test_metrics_by_hand():
    probs = np.array([[0.7, 0.2, 0.1],    # conf 0.7, pred 0, label 0 (right)
                      [0.1, 0.6, 0.3],    # conf 0.6, pred 1, label 2 (wrong)
                      [0.05, 0.05, 0.9],  # conf 0.9, pred 2, label 2 (right)
                      [0.4, 0.35, 0.25]])  # conf 0.4, pred 0, label 1 (wrong)
    labels = np.array([0, 2, 2, 1])
    r = tp.calibration(probs, labels, bins=5)   # bins (0,.2] (.2,.4] (.4,.6] (.6,.8] (.8,1]
    # bin 1 (0.4): acc 0, conf 0.4; bin 2 (0.6): acc 0, conf 0.6; bin 3 (0.7): acc 1; bin 4 (0.9): acc 1
    assert r.ece == pytest.approx((0.4 + 0.6 + 0.3 + 0.1) / 4, abs=1e-12)
    assert r.mce == pytest.approx(0.6, abs=1e-12)
    assert r.accuracy == 0.5
    assert r.nll == pytest.approx(-(np.log(0.7) + np.log(0.3) + np.log(0.9) + np.log(0.35)) / 4, rel=1e-12)
    brier = ((0.3**2 + 0.2**2 + 0.1**2) + (0.1**2 + 0.6**2 + 0.7**2) + (0.05**2 + 0.05**2 + 0.1**2)
             + (0.4**2 + 0.65**2 + 0.25**2)) / 4
    assert r.brier == pytest.approx(brier, rel=1e-12)
    np.testing.assert_array_equal(r.bin_counts, [0, 1, 1, 1, 1])
    np.testing.assert_allclose(r.bin_edges, [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert np.isnan(r.bin_confidence[0]) and r.bin_accuracy[3] == 1.0
    d = r.as_dict()
    assert d["reliability"]["confidence"][0] is None and d["reliability"]["counts"] == [0, 1, 1, 1, 1]


def test_binary_and_one_hot_inputs():
    p1 = np.array([0.8, 0.3, 0.6])              # probability of class 1
    y = np.array([1, 0, 0])
    r = tp.calibration(p1, y, bins=10)
    r2 = tp.calibration(np.stack([1 - p1, p1], 1), np.eye(2)[y], bins=10)
    assert r.ece == pytest.approx(r2.ece) and r.nll == pytest.approx(r2.nll)
    # conf 0.8 right, 0.7 right, 0.6 wrong: |1-.8| + |1-.7| + |0-.6| over 3
    assert r.ece == pytest.approx((0.2 + 0.3 + 0.6) / 3, abs=1e-12)
    assert r.nll == pytest.approx(-(np.log(0.8) + np.log(0.7) + np.log(0.4)) / 3, rel=1e-12)


def test_plot(tmp_path):
    r = tp.calibration(np.array([[0.9, 0.1], [0.3, 0.7]]), np.array([0, 0]))
    out = tp.plot_reliability({"MAP": r, "Laplace": r}, tmp_path / "rel.png")
    assert out.exists() and out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InputError, match="expected a .png"):
        tp.plot_reliability(r, tmp_path / "rel.jpg")


@pytest.mark.parametrize("probs,labels,match", [
    (np.array([[0.5, 0.6]]), np.array([0]), "rows summing to 1"),
    (np.array([[1.5, -0.5]]), np.array([0]), r"probabilities in \[0, 1\]"),
    (np.array([[0.5, 0.5]]), np.array([2]), r"values in 0..1"),
    (np.array([[0.5, 0.5]]), np.array([0, 1]), "expected 1 integer labels"),
    (np.array([[0.5, 0.5]]), np.array([0.5]), "integer class labels"),
    (np.zeros((2, 2, 2)), np.array([0, 1]), "expected an array"),
])
def test_bad_input(probs, labels, match):
    with pytest.raises(InputError, match=match):
        tp.calibration(probs, labels)


def test_bins_must_be_positive():
    with pytest.raises(InputError, match="bins: expected a positive integer"):
        tp.calibration(np.array([[1.0, 0.0]]), np.array([0]), bins=0)
