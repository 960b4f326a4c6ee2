"""Influence functions: which training examples made a prediction, by how much, with a sign you can trust.

Definition (the same in every method, docstring and output)::

    scores[j, i] = (1/N) grad l(test_j)^T (H + lambda I)^{-1} grad l(train_i)

the predicted change in the loss of test example ``j`` when training example ``i`` is left out and the model
refit; positive: leaving ``i`` out raises test loss ``j`` (``i`` helped), negative: ``i`` hurt. ``l`` is the
per-example loss *without* the regulariser, ``H`` the curvature (Hessian or Gauss-Newton) of the training
objective ``L(theta) = (1/N) sum_k l_k(theta) + R(theta)`` at the trained weights, ``N`` the number of training
examples and ``lambda`` a damping.

Derivation. Leaving ``i`` out deletes its term from the sum, everything else (the weights ``1/N`` of the other
terms, the regulariser ``R``) unchanged: ``L_{-i} = L - (1/N) l_i``. (Equivalently: the sum objective
``sum_k l_k + N R`` with the regulariser as a fixed prior.) At the trained minimiser ``theta*``, ``grad L = 0``,
so ``grad L_{-i}(theta*) = -(1/N) grad l_i`` and one Newton step on ``L_{-i}`` gives
``theta_{-i} - theta* ~ (1/N) H^{-1} grad l_i`` (``H`` for ``d^2 L_{-i}``, which differs by ``O(1/N)``).
The test loss changes by ``grad l(test_j)^T (theta_{-i} - theta*)`` to first order: the score above. Refitting
instead on the ``N - 1`` remaining examples with the *re-normalised* mean ``(1/(N-1)) sum_{k != i} l_k + R``
moves the minimiser by ``(1/(N-1)) H^{-1} grad (l_i + R)``: the scores times ``N/(N-1)`` plus a shift
``(1/(N-1)) grad l(test_j)^T H^{-1} grad R`` that is the same for every ``i``, so rankings (and Spearman
correlations over ``i``) agree. Reference: Koh & Liang (2017), "Understanding black-box predictions via
influence functions" (ICML); Cook & Weisberg (1982).

Scale: the training gradients are streamed chunk by chunk from
:func:`tfpartials.autodiff.per_example.stream_per_example` (never all held); the inverse curvature is applied once
per batch of test gradients; with ``projection_dim=k`` both sides are multiplied by one seeded Gaussian ``k x n``
matrix (``E[P^T P] = I``), so each score costs ``O(k)`` instead of ``O(n)``. Memory: the ``n_test x N`` scores,
the test batch's ``n``-vectors, one chunk of training gradients and the method's own state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .._backend import tf
from .._checks import InputError, check_choice, check_positive_float, check_positive_int, check_seed
from .._memory import plan_chunks, require_fits, resolve_budget
from ..autodiff.per_example import PerExampleEngine, plan_per_example, stream_per_example
from ..autodiff.problem import prepare
from ..io.data import Data, _take, load_data
from ._solvers import METHODS, build_solver

__all__ = ["influence", "self_influence", "InfluenceResult", "SelfInfluenceResult", "TopInfluence", "DEFINITION",
           "METHODS", "CURVATURES"]

Method = Literal["exact", "cg", "lissa", "arnoldi", "ekfac", "tracin"]
Curvature = Literal["ggn", "hessian"]
CURVATURES = ("ggn", "hessian")

DEFINITION = ("scores[j, i] = (1/N) grad l(test_j)^T (H + damping I)^-1 grad l(train_i): the predicted change in "
              "the loss of test example j when training example i is left out and the model refit; positive = "
              "i helped (leaving it out raises the test loss), negative = i hurt")
SELF_DEFINITION = ("self_influence[i] = (1/N) grad l(train_i)^T (H + damping I)^-1 grad l(train_i): the predicted "
                   "rise of example i's own loss when it is left out and the model refit (large = atypical or "
                   "mislabelled)")
TRACIN_NOTE = ("method 'tracin' replaces (H + damping I) by the identity: (1/N) grad l(test_j)^T grad l(train_i), "
               "the first-order change of test loss j from one gradient step of unit learning rate on the mean "
               "objective without example i (TracIn at the final checkpoint); same sign, different scale")


@dataclass(frozen=True)
class TopInfluence:
    """The ``k`` most helpful and most harmful training examples for each test example.

    Attributes:
        helpful: ``(n_test, k)`` training indices with the largest (positive) scores, best first.
        helpful_scores: their scores.
        harmful: ``(n_test, k)`` training indices with the most negative scores, worst first.
        harmful_scores: their scores.
    """

    helpful: np.ndarray
    helpful_scores: np.ndarray
    harmful: np.ndarray
    harmful_scores: np.ndarray


@dataclass(frozen=True, eq=False)
class InfluenceResult:
    """Influence of every training example on every test example's loss.

    ``scores[j, i] = (1/N) grad l(test_j)^T (H + damping I)^{-1} grad l(train_i)``: the predicted change in test
    loss ``j`` when training example ``i`` is left out and the model refit; positive = ``i`` helped.

    Attributes:
        scores: ``(n_test, n_train)`` float64.
        method: ``"exact"``, ``"cg"``, ``"lissa"``, ``"arnoldi"``, ``"ekfac"`` or ``"tracin"``.
        curvature: ``"ggn"`` or ``"hessian"`` (H).
        damping: lambda.
        num_train: N.
        projection_dim: size of the random projection, or None.
        info: what the solver reports (matvecs, iterations, convergence, eigenvalues kept).
        definition: the definition above, as text (written into every output).
        self_scores: ``(n_train,)`` self-influence of every training example (as :func:`self_influence`), when
            asked for with ``with_self_influence=True``, else None.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False, name="w")])
        >>> _ = model.get_layer("w").kernel.assign([[0.5]])
        >>> x = np.array([[1.0], [2.0], [3.0]], "float32"); y = np.array([[1.0], [1.0], [2.0]], "float32")
        >>> res = tp.influence(model, (x, y), (x[:1], y[:1]), loss="mse", damping=0.0, quiet=True)
        >>> res.method, res.curvature, res.num_train, res.scores.shape
        ('exact', 'ggn', 3, (1, 3))
        >>> g = 2 * (0.5 * x - y) * x; H = 2 * np.mean(x * x)          # (1/N) g_test H^-1 g_i
        >>> bool(np.allclose(res.scores, g[:1].T * g.T / H / 3, rtol=1e-5, atol=1e-7))
        True
    """

    scores: np.ndarray
    method: str
    curvature: str
    damping: float
    num_train: int
    projection_dim: int | None = None
    info: dict = field(default_factory=dict)
    definition: str = DEFINITION
    self_scores: np.ndarray | None = None

    @property
    def num_test(self) -> int:
        return int(self.scores.shape[0])

    def top(self, k: int = 5) -> TopInfluence:
        """The ``k`` most helpful (largest score) and most harmful (most negative) training examples per test row."""
        k = min(check_positive_int("k", k), self.scores.shape[1])
        order = np.argsort(-self.scores, axis=1, kind="stable")
        helpful = order[:, :k]
        harmful = np.argsort(self.scores, axis=1, kind="stable")[:, :k]
        return TopInfluence(helpful, np.take_along_axis(self.scores, helpful, 1), harmful,
                            np.take_along_axis(self.scores, harmful, 1))


@dataclass(frozen=True, eq=False)
class SelfInfluenceResult:
    """Self-influence of every training example: ``(1/N) g_i^T (H + damping I)^{-1} g_i``, ``g_i = grad l_i``.

    The predicted rise of example ``i``'s own loss when it is left out and the model refit; large values flag
    mislabelled or atypical examples.

    Attributes:
        scores: ``(n_train,)`` float64.
        method, curvature, damping, num_train, info, definition: as in :class:`InfluenceResult`.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False, name="w")])
        >>> _ = model.get_layer("w").kernel.assign([[1.0]])
        >>> x = np.ones((4, 1), "float32"); y = np.array([[1.0], [1.0], [1.0], [5.0]], "float32")
        >>> res = tp.self_influence(model, (x, y), loss="mse", damping=0.0, quiet=True)
        >>> res.scores.tolist(), res.top(1).tolist()   # g = 2 (w x - y) x = (0, 0, 0, -8), H = 2: (1/4) 64 / 2
        ([0.0, 0.0, 0.0, 8.0], [3])
    """

    scores: np.ndarray
    method: str
    curvature: str
    damping: float
    num_train: int
    info: dict = field(default_factory=dict)
    definition: str = SELF_DEFINITION

    def top(self, k: int = 10) -> np.ndarray:
        """Indices of the ``k`` training examples with the largest self-influence, largest first."""
        k = min(check_positive_int("k", k), self.scores.shape[0])
        return np.argsort(-self.scores, kind="stable")[:k]


# ----------------------------------------------------------------------------------------------- plumbing
def _validate(method, curvature, damping, projection_dim, seed):
    check_choice("method", method, METHODS)
    check_choice("curvature", curvature, CURVATURES)
    damping = check_positive_float("damping", damping, allow_zero=True)
    if projection_dim is not None:
        projection_dim = check_positive_int("projection_dim", projection_dim)
    return damping, projection_dim, check_seed(seed)


def _problems(model, train, loss, wrt, common):
    """The loss-only objective (gradients of l_i), the full objective (curvature of L) and the training data."""
    grad_obj, train_d = prepare(model, train, loss, wrt, include_regularization=False, **common)
    curv_obj, _ = prepare(model, train_d, loss, wrt, include_regularization=True, **common)
    if grad_obj.space.names != curv_obj.space.names:  # pragma: no cover - both select from the same model
        raise InputError("influence: the loss and curvature objectives select different parameters")
    if train_d.num_examples < 1:
        raise InputError("train: expected at least one training example, got 0")
    return grad_obj, curv_obj, train_d


def _flat(grads, k):
    return tf.concat([tf.reshape(g, (tf.shape(g)[0], -1)) for g in grads], axis=1)[:k]


def _gradients(obj, data: Data, engine, chunk, quiet, description):
    """Yield ``(start, G)``: flat per-example loss gradients ``(k, n)`` of consecutive rows of ``data``."""
    start = 0
    for grads, k in stream_per_example(obj, data, chunk, engine=engine, quiet=quiet, description=description):
        yield start, _flat(grads, k)
        start += k


def _subset(data: Data, start: int, stop: int, obj) -> Data:
    x, y = data.arrays()
    idx = np.arange(start, stop)
    sub = load_data((_take(x, idx), _take(y, idx)), batch_size=data.batch_size)
    return sub.cast("float64") if obj.dtype == tf.float64 else sub


def _projection(n: int, k: int | None, seed: int, dtype, budget: int):
    if k is None:
        return None
    require_fits(n * k * dtype.size, budget, f"the random projection ({k} x {n:,})",
                 "use a smaller projection_dim or fewer parameters (wrt=[...])")
    rng = np.random.default_rng(seed)
    return tf.constant(rng.standard_normal((n, k)) / np.sqrt(k), dtype)


# ----------------------------------------------------------------------------------------------- public
def influence(model, train, test, loss: Any = None, *, method: Method = "exact", damping: float = 1e-3,
              curvature: Curvature = "ggn", wrt=None, projection_dim: int | None = None, seed: int = 0,
              rank: int | None = None, tol: float = 1e-6, max_iterations: int | None = None,
              batch_size: int | None = None, precision: str | None = None, max_memory: str | int | None = None,
              from_logits: bool | None = None, unconnected: str = "error", quiet: bool = False,
              with_self_influence: bool = False) -> InfluenceResult:
    """Influence of each training example on each test example's loss (Koh & Liang 2017).

    Maths: ``scores[j, i] = (1/N) grad l(test_j)^T (H + lambda I)^{-1} grad l(train_i)``, the predicted change in
    test loss ``j`` when training example ``i`` is left out and the model refit (positive: ``i`` helped);
    ``l`` the per-example loss without regulariser, ``H`` the curvature of ``(1/N) sum l + R`` (``"ggn"`` or
    ``"hessian"``), ``lambda`` = ``damping``. Derivation in :mod:`tfpartials.influence.influence`: leaving ``i``
    out of ``L = (1/N) sum_k l_k + R`` gives ``L - l_i / N`` and a Newton step from the minimiser moves it by
    ``(1/N) H^{-1} grad l_i``. ``method="tracin"`` uses ``H = I`` (gradient dot products; see ``TRACIN_NOTE``).

    Cost: one pass of per-example gradients over the test set and ``ceil(n_test / test batch)`` passes over the
    training set (one when the test gradients fit in memory); plus the method's inverse: ``exact`` ~``n``
    curvature products and an ``n x n`` eigendecomposition; ``cg`` / ``lissa`` iterations x one product per
    iteration for the whole test batch; ``arnoldi`` ~``rank + 20`` products once; ``ekfac`` one pass for its
    factors; ``tracin`` none. Memory ``O(n_test x N)`` for the scores plus ``O(n)`` (or ``projection_dim``)
    per test example and per training example of a chunk.

    Args:
        model: a trained Keras model (not modified).
        train: training data: ``(x, y)``, a ``tf.data.Dataset``, a path, or a :class:`~tfpartials.Data`.
        test: test data in the same forms.
        loss: Keras loss name, object or callable; default the model's compiled loss.
        method: ``"exact"``, ``"cg"``, ``"lissa"``, ``"arnoldi"``, ``"ekfac"`` or ``"tracin"``.
        damping: ``lambda >= 0`` added to the curvature's diagonal (not used by ``tracin``).
        curvature: ``"ggn"`` (Gauss-Newton, positive semi-definite for convex losses; default) or ``"hessian"``.
            ``ekfac`` always approximates the Gauss-Newton matrix.
        wrt: parameters (names, globs, layers) to differentiate; default all trainable.
        projection_dim: multiply gradients by a seeded ``k x n`` Gaussian matrix (an unbiased estimate).
        seed: seed of the projection.
        rank: eigenpairs kept by ``arnoldi`` (default ``min(n - 1, 50)``).
        tol, max_iterations: stopping rule of ``cg``, ``lissa`` and ``arnoldi``.
        batch_size, precision, max_memory, from_logits, unconnected: as in :func:`tfpartials.gradients`.
        quiet: no progress bars.
        with_self_influence: also the self-influence of every training example (``self_scores``), from the
            same pass over the training gradients (one pass less than calling :func:`self_influence` too).

    Returns:
        :class:`InfluenceResult` with ``scores (n_test, N)`` and ``.top(k)``.

    Reference: Koh & Liang (2017), ICML; Schioppa et al. (2022) for ``arnoldi``; Grosse et al. (2023) for
    ``ekfac``; Pruthi et al. (2020) for ``tracin``.

    Example:
        Ridge-free least squares on three points, against the closed form ``(1/N) g_t^T H^{-1} g_i``:

        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False, name="w")])
        >>> _ = model.get_layer("w").kernel.assign([[0.5]])
        >>> x = np.array([[1.0], [2.0], [3.0]], "float32"); y = np.array([[1.0], [1.0], [2.0]], "float32")
        >>> res = tp.influence(model, (x, y), (x[:1], y[:1]), loss="mse", damping=0.0, quiet=True)
        >>> g = 2 * (0.5 * x - y) * x; H = 2 * np.mean(x * x)
        >>> bool(np.allclose(res.scores, g[:1].T * g.T / H / 3, rtol=1e-5))
        True
        >>> both = tp.influence(model, (x, y), (x[:1], y[:1]), loss="mse", damping=0.0, quiet=True,
        ...                     with_self_influence=True)           # self-influence g_i^2 / H / N too
        >>> bool(np.allclose(both.self_scores, (g * g).ravel() / H / 3, rtol=1e-5))
        True
    """
    damping, projection_dim, seed = _validate(method, curvature, damping, projection_dim, seed)
    common = dict(batch_size=batch_size, precision=precision, from_logits=from_logits, unconnected=unconnected)
    grad_obj, curv_obj, train_d = _problems(model, train, loss, wrt, common)
    _, test_d = prepare(model, test, loss, wrt, include_regularization=False, **common)
    N, n_test, n = train_d.num_examples, test_d.num_examples, grad_obj.space.size
    budget = resolve_budget(max_memory)
    require_fits(n_test * N * 8, budget, f"the influence scores ({n_test:,} x {N:,})",
                 "use fewer test examples per call, or self_influence() for one score per training example")
    P = _projection(n, projection_dim, seed, grad_obj.dtype, budget)
    solver = build_solver(method, curvature, curv_obj, train_d, damping=damping, quiet=quiet,
                          options={"rank": rank, "tol": tol, "max_iterations": max_iterations,
                                   "max_memory": max_memory})
    itemsize = grad_obj.dtype.size
    width = projection_dim or n
    per_test = itemsize * (3 * n + width)  # gradient, solved, working copy, projected
    fixed = n_test * N * 8 + (0 if P is None else n * projection_dim * itemsize)
    test_plan = plan_chunks(n_test, per_test, budget=budget, fixed=fixed, what="influence test batch")
    engine = PerExampleEngine.of(grad_obj)
    train_chunk = plan_per_example(grad_obj, train_d, max_memory=max_memory)
    test_chunk = train_chunk  # same chunk shape for both passes: the compiled gradient function is traced once
    scores = np.zeros((n_test, N), np.float64)
    self_scores = np.zeros(N, np.float64) if with_self_influence else None
    for t0, t1 in test_plan.ranges():
        part = test_d if (t0, t1) == (0, n_test) else _subset(test_d, t0, t1, grad_obj)
        Gt = np.concatenate([G.numpy() for _, G in _gradients(grad_obj, part, engine, test_chunk, quiet,
                                                              "influence: test gradients")])
        V = tf.constant(solver.apply(Gt.T).T, grad_obj.dtype)  # (t, n): (H + lambda I)^{-1} g_test, once
        if P is not None:
            V = V @ P
        for start, G in _gradients(grad_obj, train_d, engine, train_chunk, quiet, "influence: training gradients"):
            if self_scores is not None and t0 == 0:  # once, on the first test batch's pass
                self_scores[start:start + G.shape[0]] = _self_block(G.numpy(), solver, N)
            if P is not None:
                G = G @ P
            block = tf.matmul(V, G, transpose_b=True).numpy()
            scores[t0:t1, start:start + block.shape[1]] = block.astype(np.float64) / N
    info = dict(solver.info)
    if method == "tracin":
        info["note"] = TRACIN_NOTE
    info["test_batches"] = test_plan.num_chunks
    return InfluenceResult(scores, method, curvature, damping, N, projection_dim, info, self_scores=self_scores)


def _self_block(G: np.ndarray, solver, N: int) -> np.ndarray:
    """``(1/N) g_i^T (H + lambda I)^{-1} g_i`` for the rows ``g_i`` of a chunk ``G (k, n)``."""
    V = solver.apply(G.T)  # (n, k)
    return np.sum(G.T.astype(np.float64) * V.astype(np.float64), axis=0) / N


def self_influence(model, train, loss: Any = None, *, method: Method = "exact", damping: float = 1e-3,
                   curvature: Curvature = "ggn", wrt=None, rank: int | None = None, tol: float = 1e-6,
                   max_iterations: int | None = None, batch_size: int | None = None, precision: str | None = None,
                   max_memory: str | int | None = None, from_logits: bool | None = None,
                   unconnected: str = "error", quiet: bool = False) -> SelfInfluenceResult:
    """Self-influence ``(1/N) g_i^T (H + lambda I)^{-1} g_i`` of every training example (mislabelled-data finder).

    Maths: the diagonal of :func:`influence` with ``test = train``: the predicted rise of example ``i``'s own
    loss when it is left out and the model refit (positive definite ``H + lambda I``: always >= 0); the
    definition, sign and scale are those of :func:`influence`.

    Cost: one pass of per-example gradients over the training set; the inverse is applied to every chunk of
    training gradients: cheap for ``exact`` (``n^2`` per example), ``arnoldi`` (``n x rank``), ``ekfac`` and
    ``tracin``; for ``cg`` and ``lissa`` one iterative solve per training example (batched per chunk).

    Args:
        model, train, loss, method, damping, curvature, wrt, rank, tol: as in :func:`influence`, and so are
            max_iterations, batch_size, precision, max_memory, from_logits, unconnected and quiet.

    Returns:
        :class:`SelfInfluenceResult` with ``scores (N,)`` and ``.top(k)``.

    Reference: Koh & Liang (2017), section 5.4 (fixing mislabelled examples); Pruthi et al. (2020).

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False, name="w")])
        >>> _ = model.get_layer("w").kernel.assign([[1.0]])
        >>> x = np.ones((4, 1), "float32"); y = np.array([[1.0], [1.0], [1.0], [5.0]], "float32")
        >>> tp.self_influence(model, (x, y), loss="mse", damping=0.0, quiet=True).top(1).tolist()  # the outlier
        [3]
    """
    damping, _, _ = _validate(method, curvature, damping, None, 0)
    common = dict(batch_size=batch_size, precision=precision, from_logits=from_logits, unconnected=unconnected)
    grad_obj, curv_obj, train_d = _problems(model, train, loss, wrt, common)
    N = train_d.num_examples
    solver = build_solver(method, curvature, curv_obj, train_d, damping=damping, quiet=quiet,
                          options={"rank": rank, "tol": tol, "max_iterations": max_iterations,
                                   "max_memory": max_memory})
    engine = PerExampleEngine.of(grad_obj)
    chunk = plan_per_example(grad_obj, train_d, max_memory=max_memory)
    scores = np.zeros(N, np.float64)
    for start, G in _gradients(grad_obj, train_d, engine, chunk, quiet, "self-influence: training gradients"):
        scores[start:start + G.shape[0]] = _self_block(G.numpy(), solver, N)
    info = dict(solver.info)
    if method == "tracin":
        info["note"] = TRACIN_NOTE
    return SelfInfluenceResult(scores, method, curvature, damping, N, info)
