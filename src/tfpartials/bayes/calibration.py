"""Calibration of predicted class probabilities: ECE, MCE, NLL, Brier score, accuracy, reliability diagram.

The confidence of a prediction is its largest class probability; predictions are put into ``bins`` equal-width
confidence bins on (0, 1] and, per bin, the mean confidence is compared with the accuracy. The expected
calibration error is the count-weighted mean gap, the maximum calibration error the largest gap of a non-empty
bin (Naeini, Cooper & Hauskrecht, AAAI 2015; Guo et al., "On calibration of modern neural networks", ICML 2017).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._checks import InputError, check_positive_int

__all__ = ["CalibrationResult", "calibration", "plot_reliability", "reliability_figure"]

_TINY = 1e-12  # probabilities are clipped here before the logarithm of the NLL


@dataclass(frozen=True)
class CalibrationResult:
    """Calibration metrics of class probabilities against labels.

    Attributes:
        ece: expected calibration error, ``sum_b |B_b|/N |acc(B_b) - conf(B_b)|``.
        mce: maximum calibration error over the non-empty bins.
        nll: mean negative log-likelihood of the labels, ``-(1/N) sum_i log p_i[y_i]`` (probabilities clipped
            at 1e-12).
        brier: mean Brier score, ``(1/N) sum_i sum_c (p_ic - [y_i = c])^2``.
        accuracy: share of examples whose most probable class is the label.
        bin_edges: ``(bins + 1,)`` confidence bin edges on [0, 1].
        bin_confidence: ``(bins,)`` mean confidence per bin (NaN for an empty bin).
        bin_accuracy: ``(bins,)`` accuracy per bin (NaN for an empty bin).
        bin_counts: ``(bins,)`` examples per bin.
        num_examples: ``N``.

    Example:
        >>> import numpy as np, tfpartials as tp
        >>> r = tp.calibration(np.array([[0.9, 0.1], [0.8, 0.2]]), np.array([0, 1]), bins=10)
        >>> r.mce, round(r.brier, 6), r.bin_counts.tolist()   # |0 - 0.8|; ((.1^2 + .1^2) + (.8^2 + .8^2)) / 2
        (0.8, 0.65, [0, 0, 0, 0, 0, 0, 0, 1, 1, 0])
        >>> bool(np.isclose(r.nll, -(np.log(0.9) + np.log(0.2)) / 2))
        True
    """

    ece: float
    mce: float
    nll: float
    brier: float
    accuracy: float
    bin_edges: np.ndarray
    bin_confidence: np.ndarray
    bin_accuracy: np.ndarray
    bin_counts: np.ndarray
    num_examples: int

    def as_dict(self) -> dict:
        """JSON-ready metrics and reliability-diagram data (NaN of empty bins as None)."""
        def lst(a):
            return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, np.float64)]
        return {"ece": self.ece, "mce": self.mce, "nll": self.nll, "brier": self.brier, "accuracy": self.accuracy,
                "num_examples": self.num_examples,
                "reliability": {"bin_edges": lst(self.bin_edges), "confidence": lst(self.bin_confidence),
                                "accuracy": lst(self.bin_accuracy), "counts": [int(c) for c in self.bin_counts]}}


def _probabilities(probs) -> np.ndarray:
    p = np.asarray(probs)
    if p.dtype == object or not np.issubdtype(p.dtype, np.number):
        raise InputError(f"probs: expected numbers, got dtype {p.dtype}")
    p = p.astype(np.float64)
    if p.ndim == 1 or (p.ndim == 2 and p.shape[1] == 1):  # binary: probability of class 1
        p1 = p.reshape(-1)
        p = np.stack([1.0 - p1, p1], axis=1)
    if p.ndim != 2 or p.shape[0] == 0:
        raise InputError(f"probs: expected an array (N, classes) or (N,) of binary probabilities, got shape "
                         f"{np.asarray(probs).shape}")
    if not np.all(np.isfinite(p)) or p.min() < -1e-6 or p.max() > 1 + 1e-6:
        raise InputError("probs: expected probabilities in [0, 1], got values outside (or NaN); apply a softmax "
                         "to logits first")
    sums = p.sum(axis=1)
    if np.max(np.abs(sums - 1.0)) > 1e-3:
        raise InputError(f"probs: expected rows summing to 1, got sums in [{sums.min():.4g}, {sums.max():.4g}]")
    return np.clip(p, 0.0, 1.0)


def _labels(labels, n: int, classes: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == classes and classes > 1 and y.shape[0] == n:  # one-hot
        y = y.argmax(axis=1)
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.shape != (n,):
        raise InputError(f"labels: expected {n} integer labels (or one-hot rows), got shape {np.asarray(labels).shape}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise InputError("labels: expected integer class labels, got non-integer values")
        y = y.astype(np.int64)
    if y.dtype.kind not in "iub":
        raise InputError(f"labels: expected integer class labels, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= classes:
        raise InputError(f"labels: expected values in 0..{classes - 1}, got [{y.min()}, {y.max()}]")
    return y


def calibration(probs, labels, bins: int = 15) -> CalibrationResult:
    """Calibration metrics of predicted class probabilities.

    Maths: with confidence ``c_i = max_k p_ik`` and prediction ``k_i = argmax_k p_ik``, bin ``b`` holds the
    ``i`` with ``c_i`` in ``((b-1)/bins, b/bins]``; ``ECE = sum_b |B_b|/N |mean_{B_b}[k_i = y_i] - mean_{B_b} c_i|``.
    Cost: O(N * classes).

    Args:
        probs: ``(N, classes)`` probabilities (rows sum to 1), or ``(N,)`` / ``(N, 1)`` probabilities of class 1.
        labels: ``(N,)`` integer labels (or one-hot ``(N, classes)``).
        bins: number of equal-width confidence bins (default 15).

    Reference: Guo, Pleiss, Sun & Weinberger, "On calibration of modern neural networks", ICML 2017.

    Example:
        >>> import numpy as np
        >>> r = calibration(np.array([[0.9, 0.1], [0.8, 0.2]]), np.array([0, 1]), bins=10)
        >>> round(r.ece, 6), r.accuracy    # one bin at 0.8 (acc 0), one at 0.9 (acc 1): (0.8 + 0.1) / 2
        (0.45, 0.5)
    """
    bins = check_positive_int("bins", bins)
    p = _probabilities(probs)
    n, classes = p.shape
    y = _labels(labels, n, classes)
    conf = p.max(axis=1)
    pred = p.argmax(axis=1)
    correct = (pred == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(idx, minlength=bins)
    sum_conf = np.bincount(idx, weights=conf, minlength=bins)
    sum_acc = np.bincount(idx, weights=correct, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_conf = np.where(counts > 0, sum_conf / np.maximum(counts, 1), np.nan)
        bin_acc = np.where(counts > 0, sum_acc / np.maximum(counts, 1), np.nan)
    gaps = np.abs(bin_acc - bin_conf)
    nonempty = counts > 0
    ece = float(np.sum(counts[nonempty] * gaps[nonempty]) / n)
    mce = float(np.max(gaps[nonempty]))
    nll = float(-np.mean(np.log(np.clip(p[np.arange(n), y], _TINY, None))))
    onehot = np.zeros_like(p)
    onehot[np.arange(n), y] = 1.0
    brier = float(np.mean(np.sum((p - onehot) ** 2, axis=1)))
    return CalibrationResult(ece=ece, mce=mce, nll=nll, brier=brier, accuracy=float(correct.mean()),
                             bin_edges=edges, bin_confidence=bin_conf, bin_accuracy=bin_acc, bin_counts=counts,
                             num_examples=int(n))


def reliability_figure(results: CalibrationResult | dict[str, CalibrationResult], *, title: str | None = None,
                       dpi: int = 100):
    """A reliability diagram (accuracy against confidence per bin, one bar series per result) as a Figure."""
    from ..reports.plots import _new_figure

    named = results if isinstance(results, dict) else {"model": results}
    if not named or not all(isinstance(r, CalibrationResult) for r in named.values()):
        raise InputError("results: expected a CalibrationResult or a {name: CalibrationResult} dict")
    fig = _new_figure(5.0, 4.2, dpi)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="#7f8c8d", linestyle="--", linewidth=1, label="perfect calibration")
    colors = ["#c0392b", "#2471a3", "#229954", "#b9770e"]
    k = len(named)
    for j, (name, r) in enumerate(named.items()):
        width = np.diff(r.bin_edges)
        left = r.bin_edges[:-1] + j * width / k
        acc = np.nan_to_num(r.bin_accuracy)
        ax.bar(left, acc, width=width / k, align="edge", alpha=0.75, color=colors[j % len(colors)],
               label=f"{name} (ECE {100 * r.ece:.1f}%, NLL {r.nll:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "Reliability diagram")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def plot_reliability(results: CalibrationResult | dict[str, CalibrationResult], path: str | os.PathLike, *,
                     title: str | None = None, overwrite: bool = True) -> Path:
    """Draw a reliability diagram (e.g. ``{"MAP": r0, "Laplace": r1}``) to a PNG, written atomically.

    Example:
        >>> import os, tempfile, numpy as np, tfpartials as tp
        >>> from tfpartials.bayes.calibration import reliability_figure
        >>> labels = np.array([0, 1])
        >>> results = {"MAP": tp.calibration(np.array([[0.9, 0.1], [0.8, 0.2]]), labels, bins=10),
        ...            "Laplace": tp.calibration(np.array([[0.6, 0.4], [0.7, 0.3]]), labels, bins=10)}
        >>> ax, = reliability_figure(results).axes               # a matplotlib Figure on the Agg canvas
        >>> len(ax.patches)                                      # one bar per bin for each result
        20
        >>> tmp = tempfile.TemporaryDirectory()
        >>> p = tp.plot_reliability(results, os.path.join(tmp.name, "reliability.png"))
        >>> p.name, p.stat().st_size > 0
        ('reliability.png', True)
        >>> tmp.cleanup()
    """
    from ..reports.plots import save_figure

    return save_figure(reliability_figure(results, title=title), path, overwrite=overwrite)
