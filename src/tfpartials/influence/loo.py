"""The built-in check of influence scores: retrain without chosen examples and compare with the prediction.

For each chosen training index ``i`` the user's fit function is called on the training set without ``i``; the
actual change of the mean test loss, ``mean_j [l_j(theta_{-i}) - l_j(theta)]``, is compared with the predicted
one, ``mean_j scores[j, i]`` (Koh & Liang 2017, figure 2). The Spearman rank correlation over the chosen
indices is the headline number; Pearson's correlation and the per-test-example changes are reported too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._backend import keras, tf
from .._checks import InputError
from .._progress import progress
from ..autodiff.problem import objective_for
from ..autodiff.risk import as_tensors
from ..io.data import _take, load_data
from .influence import DEFINITION, InfluenceResult, influence

__all__ = ["leave_one_out_check", "LeaveOneOutResult"]


@dataclass(frozen=True, eq=False)
class LeaveOneOutResult:
    """Predicted vs actual changes of the test loss when single training examples are left out.

    Attributes:
        indices: ``(m,)`` training indices that were left out, one refit each.
        predicted: ``(m,)`` ``mean_j scores[j, i]``: the predicted change of the mean test loss.
        actual: ``(m,)`` the change of the mean test loss after refitting without ``i``.
        spearman: Spearman rank correlation of ``predicted`` and ``actual``.
        pearson: Pearson correlation of ``predicted`` and ``actual``.
        predicted_per_test: ``(n_test, m)`` scores of the chosen columns.
        actual_per_test: ``(n_test, m)`` actual per-test-example changes.
        influence: the :class:`InfluenceResult` the prediction came from.
        definition: the definition of the scores (positive = the example helped).

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> def fit(x, y):                      # least squares through the origin, refit in closed form
        ...     m = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
        ...     m.layers[0].kernel.assign([[float((x * y).sum() / (x * x).sum())]])
        ...     return m
        >>> x = np.array([[1.0], [2.0], [3.0], [4.0]], "float32"); y = np.array([[1.0], [2.5], [2.5], [4.5]], "float32")
        >>> res = tp.leave_one_out_check(fit, (x, y), (x[:1], y[:1]), range(4), loss="mse", damping=0.0, quiet=True)
        >>> res.indices.tolist(), bool(np.all(np.sign(res.predicted) == np.sign(res.actual))), round(res.spearman, 6)
        ([0, 1, 2, 3], True, 0.8)
    """

    indices: np.ndarray
    predicted: np.ndarray
    actual: np.ndarray
    spearman: float
    pearson: float
    predicted_per_test: np.ndarray
    actual_per_test: np.ndarray
    influence: InfluenceResult | None = None
    definition: str = DEFINITION


def _check_indices(indices, n: int) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise InputError(f"indices: expected a non-empty 1-d sequence of training indices, got {indices!r}")
    if idx.min() < 0 or idx.max() >= n:
        raise InputError(f"indices: expected values in [0, {n}), got {int(idx.min())}..{int(idx.max())}")
    if np.unique(idx).size != idx.size:
        raise InputError("indices: expected distinct training indices, got repeats")
    if idx.size < 3:
        raise InputError(f"indices: a rank correlation needs at least 3 indices, got {idx.size}")
    return idx.astype(np.int64)


def _test_losses(model, test_d, loss, from_logits, precision) -> np.ndarray:
    """Per-example test losses (no regulariser) of ``model`` at its current weights."""
    obj = objective_for(model, loss, None, precision=precision, include_regularization=False,
                        from_logits=from_logits, unconnected="zero")
    params = obj.space.values()
    out = []
    for batch in test_d.batches():
        per = obj.per_example_loss(params, as_tensors(batch.x, obj.dtype), as_tensors(batch.y, obj.dtype))
        out.append(tf.cast(per, tf.float64).numpy()[:batch.count])
    return np.concatenate(out)


def _correlations(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    from scipy.stats import pearsonr, spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), float("nan")
    return float(spearmanr(a, b).statistic), float(pearsonr(a, b).statistic)


def leave_one_out_check(model_fn: Callable[[Any, Any], Any], train, test, indices: Sequence[int],
                        loss: Any = None, *, model=None, scores: InfluenceResult | np.ndarray | None = None,
                        precision: str | None = None, from_logits: bool | None = None, quiet: bool = False,
                        **influence_options: Any) -> LeaveOneOutResult:
    """Retrain without each chosen example and correlate the actual test-loss changes with the influence scores.

    Maths: ``actual_i = mean_j [l(test_j; theta_{-i}) - l(test_j; theta)]`` against
    ``predicted_i = mean_j scores[j, i]``, ``scores[j, i] = (1/N) grad l(test_j)^T (H + lambda I)^{-1}
    grad l(train_i)`` (positive: ``i`` helped); Spearman's rank correlation over the chosen ``i``. The scores
    predict the refit of ``(1/N) sum_{k != i} l_k + R``; a ``model_fn`` that refits the re-normalised mean
    ``(1/(N-1)) sum_{k != i} l_k + R`` (plain ``model.fit`` on ``N - 1`` examples) changes every actual value by
    the same shift up to ``O(1/N)`` (see :mod:`tfpartials.influence.influence`), which leaves Spearman unchanged.

    Cost: ``len(indices) + 1`` calls of ``model_fn`` (fit to convergence: influence functions describe the exact
    minimiser), one :func:`influence` call unless ``scores`` is given, and a forward pass over the test set per
    refit.

    Args:
        model_fn: ``model_fn(x, y) -> trained Keras model`` fitting on the given training arrays. It may return
            the same model object each time (the base losses and scores are taken first).
        train: training data (arrays, a path, a ``tf.data.Dataset``; held in memory here).
        test: test data.
        indices: training indices to leave out (at least 3, distinct).
        loss: the per-example loss (default the model's compiled loss).
        model: the model trained on all of ``train`` (default ``model_fn(x, y)``).
        scores: precomputed :class:`InfluenceResult` (or its ``(n_test, N)`` array) for this model and data.
        precision, from_logits: as in :func:`influence`.
        quiet: no progress bar.
        **influence_options: passed to :func:`influence` (``method``, ``damping``, ``curvature``, ...).

    Returns:
        :class:`LeaveOneOutResult` with ``spearman``, ``pearson``, ``predicted`` and ``actual``.

    Reference: Koh & Liang (2017), "Understanding black-box predictions via influence functions", section 4.

    Example:
        Least squares through the origin (``theta = x.y / x.x``), refit in closed form:

        >>> import numpy as np, keras, tfpartials as tp
        >>> def fit(x, y):
        ...     m = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
        ...     m.layers[0].kernel.assign([[float((x * y).sum() / (x * x).sum())]])
        ...     return m
        >>> x = np.linspace(1, 2, 12, dtype="float32")[:, None]; y = x * 0.7 + 0.1 * np.sin(9 * x)
        >>> res = tp.leave_one_out_check(fit, (x, y), (x[:3], y[:3]), range(12), loss="mse", damping=0.0, quiet=True)
        >>> res.spearman > 0.95
        True
    """
    if not callable(model_fn):
        raise TypeError(f"model_fn: expected a callable model_fn(x, y) -> model, got {type(model_fn).__name__}")
    train_d = load_data(train)
    x, y = train_d.arrays()
    n = train_d.num_examples
    idx = _check_indices(list(indices) if not isinstance(indices, np.ndarray) else indices, n)
    base = model if model is not None else model_fn(x, y)
    if not isinstance(base, keras.Model):
        raise TypeError(f"model_fn: expected it to return a Keras model, got {type(base).__name__}")
    test_d = load_data(test, model=base)
    result = None
    if scores is None:
        result = influence(base, (x, y), test_d, loss, precision=precision, from_logits=from_logits, quiet=quiet,
                           **influence_options)
        S = result.scores
    else:
        result = scores if isinstance(scores, InfluenceResult) else None
        S = np.asarray(scores.scores if isinstance(scores, InfluenceResult) else scores, np.float64)
        if S.shape != (test_d.num_examples, n):
            raise InputError(f"scores: expected shape ({test_d.num_examples}, {n}) (n_test, n_train), got {S.shape}")
    before = _test_losses(base, test_d, loss, from_logits, precision)
    predicted_per_test = S[:, idx]
    actual_per_test = np.zeros_like(predicted_per_test)
    keep = np.ones(n, bool)
    with progress("leave-one-out refits", idx.size, quiet=quiet, unit="fits", min_total=2) as bar:
        for r, i in enumerate(idx):
            keep[i] = False
            rows = np.flatnonzero(keep)
            refit = model_fn(_take(x, rows), _take(y, rows))
            keep[i] = True
            if not isinstance(refit, keras.Model):
                raise TypeError(f"model_fn: expected it to return a Keras model, got {type(refit).__name__}")
            actual_per_test[:, r] = _test_losses(refit, test_d, loss, from_logits, precision) - before
            bar.advance(1)
    predicted = predicted_per_test.mean(axis=0)
    actual = actual_per_test.mean(axis=0)
    spearman, pearson = _correlations(predicted, actual)
    return LeaveOneOutResult(idx, predicted, actual, spearman, pearson, predicted_per_test, actual_per_test, result)
