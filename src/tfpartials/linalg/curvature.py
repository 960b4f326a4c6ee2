"""Curvature matrices of a model's dataset loss as linear operators: Hessian, Gauss-Newton, Fisher.

:class:`CurvatureOperator` owns the data pass and the weighting (scale 1/N per example, exact over a padded
last batch); a subclass implements only a per-batch product. Products of many vectors are vectorised over the
columns (pfor) with the same automatic fallback as :func:`tfpartials.hvp` (forward mode, then reverse mode,
then a loop), as in curvlinops (Dangel et al.) where each curvature matrix is one per-batch matvec.

* :class:`HessianOperator`: ``H = d^2 L / dtheta^2``, forward-over-reverse.
* :class:`GGNOperator`: ``G = (1/N) sum_i J_i^T H_i J_i`` with ``J_i`` the output Jacobian and ``H_i`` the
  loss's Hessian with respect to the outputs, computed by autodiff per example (any loss), plus the exact
  Hessian of the model's regularisation losses (Schraudolph 2002; Martens 2020).
* :class:`FisherOperator`: ``F = (c/N) sum_i g_i g_i^T`` with ``g_i`` the per-example loss gradient, at the
  observed targets (``kind="empirical"``) or at targets sampled from the model's predictive distribution
  (``kind="mc"``, seeded; ``c`` turns a mean-reduced loss back into a log-likelihood; E[F_mc] = G for these
  losses; Kunstner et al. 2019 on the difference).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Literal

import numpy as np

from .._backend import tf
from .._checks import InputError, check_choice, check_positive_int, check_seed
from .._memory import DEFAULT_DENSE_LIMIT, require_fits
from .._types import DataLike, LossLike, ModelLike, WrtLike
from ..autodiff.hessian import _ALTERNATIVE as _DENSE_ALTERNATIVE
from ..autodiff.hessian import dense_hessian
from ..autodiff.hvp import (
    MAX_CHUNK,
    METHODS,
    batch_hvp_kernel,
    cached_kernel,
    column_chunk,
    in_column_chunks,
    vectorize_columns,
)
from ..autodiff.objective import Objective
from ..autodiff.problem import prepare
from ..autodiff.risk import accumulate, as_tensors
from ..io.data import Data, load_data
from .operator import LinearOperator

__all__ = ["CurvatureOperator", "HessianOperator", "GGNOperator", "FisherOperator", "FisherKind",
           "ColumnLoopOperator"]

FisherKind = Literal["empirical", "mc"]
_ZERO = tf.UnconnectedGradients.ZERO
# losses convex in the model outputs (so J^T H_out J is positive semi-definite)
_CONVEX = {"mse", "mae", "huber", "log_cosh", "binary_crossentropy", "categorical_crossentropy",
           "sparse_categorical_crossentropy", "poisson", "kl_divergence"}
_SAMPLED = ("mse", "binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy")


class CurvatureOperator(LinearOperator):
    """Base of the parameter-space curvature operators: the data pass and the 1/N weighting.

    Subclasses implement :meth:`_batch_matmat`, the product of one batch's weighted contribution with a block of
    vectors. The dataset product is the exact sum over batches of that contribution (scale = 1/N for the mean
    reduction, a padded last batch masked).

    Args:
        model: a built Keras model (not modified), or an :class:`~tfpartials.Objective`.
        data: ``(x, y)`` arrays, a ``tf.data.Dataset``, a path, or a :class:`~tfpartials.Data`.
        loss, wrt, batch_size, precision, unconnected, from_logits: as in :func:`tfpartials.gradients`.
        method: ``"auto"`` (forward mode, falling back), ``"forward"``, ``"reverse"`` or ``"loop"``.
        quiet: no progress bar for each product (default True: estimators make many).
        strategy: a ``tf.distribute.Strategy`` spreading the batches of every product over replicas.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="lin")])
        >>> x = np.array([[1.0, 0.0], [0.0, 2.0]], "float32"); y = np.zeros((2, 1), "float32")
        >>> H = tp.HessianOperator(model, (x, y), loss="mse")
        >>> isinstance(H, tp.CurvatureOperator), H.data.num_examples
        (True, 2)
        >>> X1 = np.hstack([x, np.ones((2, 1))])                   # (2/N) [X 1]^T [X 1] with N = 2
        >>> bool(np.allclose(H.to_dense(), X1.T @ X1)), H.num_matvecs
        (True, 3)
    """

    matrix_name = "curvature"

    def __init__(self, model: ModelLike, data: DataLike, loss: LossLike = None, wrt: WrtLike = None, *, batch_size: int | None = None,
                 precision: str | None = None, method: str = "auto", training: bool = False,
                 include_regularization: bool = True, reduction: str = "mean", unconnected: str = "error",
                 from_logits: bool | None = None, allow_nan: bool = False, quiet: bool = True, strategy=None):
        check_choice("method", method, METHODS)
        obj, d = prepare(model, data, loss, wrt, batch_size=batch_size, precision=precision, training=training,
                         include_regularization=include_regularization, reduction=reduction,
                         unconnected=unconnected, from_logits=from_logits, allow_nan=allow_nan)
        self.objective: Objective = obj
        self.data: Data = d
        self.method = method
        self.quiet = bool(quiet)
        self.strategy = strategy
        self._params = obj.space.values()
        self._batch: tuple | None = None  # the one in-memory batch as tensors (see _single_batch), () if none
        self._step = self._batch_matmat  # one stable callable: compiled data passes are cached by identity
        self._chunk: int | None = None   # vectors per compiled call, planned on first use
        super().__init__(obj.space.size, obj.dtype, symmetric=True, psd=self._is_psd(), space=obj.space)

    def _is_psd(self) -> bool:
        return False

    @abstractmethod
    def _batch_matmat(self, params, x, y, mask, scale, regw, T) -> tf.Tensor:
        """Rows ``(k, n)``: this batch's weighted contribution times each row of ``T`` (k, n)."""

    def _data_pass(self, step, *extra) -> tf.Tensor:
        """Exact sum of ``step`` over the batches (the one place that iterates the data)."""
        batch = self._single_batch() if self.quiet else None  # a progress bar (quiet=False) keeps the pass
        if batch is not None:  # one in-memory batch: the product is one kernel call on tensors made once
            return step(list(self._params), *batch, *extra)
        return accumulate(self.objective, self.data, step, self._params, *extra,
                          description=f"{self.matrix_name} product", quiet=self.quiet, strategy=self.strategy)

    def _single_batch(self) -> tuple | None:
        """``(x, y, mask, scale, reg_weight)`` of the data's only batch as tensors, made on first use, when the
        data are in memory, fit one batch and no strategy spreads them (else None: every product is a pass).
        Saves the pass's per-product conversions and bookkeeping (~1 ms on a small model, as much as the
        product itself)."""
        if self._batch is None:
            obj, d = self.objective, self.data
            if (d.num_batches != 1 or d._stream is not None or self.strategy is not None
                    or getattr(obj, "strategy", None) is not None):
                self._batch = ()
            else:
                batch = next(iter(d.batches()))
                scale, regw = obj.weights(d.num_examples, batch.count)
                self._batch = (as_tensors(batch.x, obj.dtype), as_tensors(batch.y, obj.dtype),
                               tf.constant(batch.mask, obj.dtype), scale, regw)
        return self._batch or None

    def _matmat(self, V):
        if self._chunk is None:
            self._chunk = column_chunk(self.objective, self.data.batch_size)
        return in_column_chunks(lambda block: tf.transpose(self._data_pass(self._step, tf.transpose(block))), V,
                                self._chunk)

    def to_dense(self, chunk: int | None = None) -> tf.Tensor:
        """The dense ``(n, n)`` matrix from products with identity columns, ``chunk`` (default 64) at a time."""
        self._check_dense()
        return super().to_dense(chunk or MAX_CHUNK)

    def _check_dense(self) -> None:
        require_fits(self.n * self.n * self.dtype.size, DEFAULT_DENSE_LIMIT,
                     f"the dense {self.matrix_name} matrix of {self.n:,} parameters", _DENSE_ALTERNATIVE)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n={self.n}, dtype={self.dtype.name}, loss={self.objective.loss.name!r}, "
                f"examples={self.data.num_examples}{', psd' if self.psd else ''})")


def _split(t, space) -> list:
    return [tf.reshape(p, s) for p, s in zip(tf.split(t, space.sizes), space.shapes)]


def _flat(tensors) -> tf.Tensor:
    return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)


def _dot(a, b) -> tf.Tensor:
    return tf.add_n([tf.reduce_sum(p * q) for p, q in zip(a, b)])


def _jvp_by_double_vjp(tape, targets: list, params, tangents) -> list:
    """``J v`` from reverse mode only: the gradient of ``(J^T u) . v`` w.r.t. ``u`` (``tape`` persistent)."""
    us = [tf.zeros_like(t) for t in targets]
    with tf.GradientTape() as t_u:
        t_u.watch(us)
        vjp = tape.gradient(targets, params, output_gradients=us, unconnected_gradients=_ZERO)
        dot = _dot(vjp, tangents)
    return t_u.gradient(dot, us, unconnected_gradients=_ZERO)


def _weighted_forward(obj, params, tangents, mode, run):
    """Record ``run(params)`` (a list of tensors) on a tape, with forward-mode tangents in "forward" mode.

    Returns ``(tape, outputs, jvps)``; the tape is persistent outside forward mode (the JVP then takes it).
    """
    with tf.GradientTape(persistent=mode != "forward") as tape:
        tape.watch(params)
        if mode == "forward":
            with tf.autodiff.ForwardAccumulator(params, tangents) as acc:
                outs = run(params)
        else:
            outs = run(params)
    if mode == "forward":
        jvps = [acc.jvp(o, unconnected_gradients=_ZERO) for o in outs]
    else:
        jvps = _jvp_by_double_vjp(tape, outs, params, tangents)
    return tape, outs, jvps


class HessianOperator(CurvatureOperator):
    """The Hessian of the dataset loss, ``H = d^2/dtheta^2 [(1/N) sum_i loss_i + R]``, as an operator.

    Cost: one forward-over-reverse pass per vector (about two gradients); ``k`` vectors vectorised together.
    ``to_dense()`` builds one block triangle and mirrors it, like :func:`tfpartials.hessian`.

    Example:
        >>> import numpy as np, keras
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="lin")])
        >>> x = np.array([[1.0, 0.0], [0.0, 2.0]], "float32"); y = np.zeros((2, 1), "float32")
        >>> H = HessianOperator(model, (x, y), loss="mse")
        >>> (H @ np.array([1.0, 0.0, 0.0], "float32")).numpy().tolist()   # (2/N) [X 1]^T [X 1] e_0
        [1.0, 0.0, 1.0]
    """

    matrix_name = "Hessian"

    def _batch_matmat(self, params, x, y, mask, scale, regw, T):
        return batch_hvp_kernel(self.objective, self.method)(params, x, y, mask, scale, regw, T)

    def _traceable_product(self):
        # one in-memory batch, no strategy: the whole product is one kernel call, traceable in a caller's graph
        obj, batch = self.objective, self._single_batch()
        if batch is None:
            return None
        args = (list(self._params), *batch)
        kernel, rows = batch_hvp_kernel(obj, self.method), tf.TensorSpec([1, self.n], obj.dtype)
        # the concrete function of one-vector products (traced by a first matvec, which settles the kernel's
        # implementation): a caller's trace calls it instead of tracing the product again
        product = kernel.function().compiled.get_concrete_function(*args, rows)
        return obj, f"hessian/{self.method}/{kernel.current.name}", product, args

    def to_dense(self, chunk: int | None = None) -> tf.Tensor:
        self._check_dense()
        self.num_matvecs += self.n
        H = dense_hessian(self.objective, self.data, chunk or MAX_CHUNK, self.method, self.quiet)
        return tf.constant(H)


def _has_activity_regularizer(model) -> bool:
    layers = model._flatten_layers() if hasattr(model, "_flatten_layers") else getattr(model, "layers", [])
    return any(getattr(layer, "activity_regularizer", None) is not None for layer in layers)


class GGNOperator(CurvatureOperator):
    """The generalised Gauss-Newton matrix ``G = (1/N) sum_i J_i^T H_i J_i + d^2 R / dtheta^2``.

    ``J_i`` is the Jacobian of example ``i``'s outputs w.r.t. the parameters and ``H_i`` the Hessian of its loss
    w.r.t. those outputs, computed by autodiff (so any loss works); the model's regularisation losses enter
    with their exact Hessian. Tagged positive semi-definite for losses convex in the outputs (mse, mae, huber,
    log-cosh, Poisson, KL, the cross-entropies) when no activity regulariser is present. For a model linear in
    its parameters it equals the Hessian. Cost per vector: one JVP, one output-space HVP, one VJP (about two
    gradients). Reference: Schraudolph (2002), "Fast curvature matrix-vector products"; Martens (2020).

    Example:
        >>> import numpy as np, keras
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="lin")])
        >>> x = np.array([[1.0, 0.0], [0.0, 2.0]], "float32"); y = np.zeros((2, 1), "float32")
        >>> G = GGNOperator(model, (x, y), loss="mse")
        >>> G.psd, (G @ np.array([0.0, 1.0, 0.0], "float32")).numpy().tolist()
        (True, [0.0, 4.0, 2.0])
    """

    matrix_name = "Gauss-Newton"

    def _is_psd(self) -> bool:
        obj = self.objective
        return obj.loss.name in _CONVEX and not (obj.include_regularization
                                                 and _has_activity_regularizer(obj.model))

    def _batch_matmat(self, params, x, y, mask, scale, regw, T):
        obj = self.objective
        kernel = cached_kernel(obj, "ggn", "ggn", lambda mode: _ggn_kernel(obj, mode), self.method,
                               "Gauss-Newton products")
        return kernel(params, x, y, mask, scale, regw, T)


def _output_hvp(obj, structure, outs, y, weights, vectors):
    """``H_out v``: the Hessian of ``sum_i w_i loss_i`` w.r.t. the outputs times ``v`` (reverse-over-reverse)."""
    zs = [tf.stop_gradient(o) for o in outs]
    with tf.GradientTape() as t1:
        t1.watch(zs)
        with tf.GradientTape() as t2:
            t2.watch(zs)
            per = tf.cast(obj._loss_of(tf.nest.pack_sequence_as(structure, zs), y), obj.dtype)
            value = tf.reduce_sum(weights * per)
        grads = t2.gradient(value, zs, unconnected_gradients=_ZERO)
        dot = _dot(grads, [tf.stop_gradient(v) for v in vectors])
    return t1.gradient(dot, zs, unconnected_gradients=_ZERO)


def _regularization_hvp(obj, params, x, regw, tangents, mode):
    """``regw * (d^2 R / dtheta^2) v`` for the model's regularisation losses (None when it has none)."""
    def value(ps):
        _, losses = obj.forward(ps, x, return_losses=True)
        return regw * obj.regularization(losses) if losses else None

    if mode == "forward":
        with tf.autodiff.ForwardAccumulator(params, tangents) as acc:
            with tf.GradientTape() as tape:
                tape.watch(params)
                r = value(params)
            if r is None:
                return None
            grads = tape.gradient(r, params, unconnected_gradients=_ZERO)
        return [acc.jvp(g, unconnected_gradients=_ZERO) for g in grads]
    with tf.GradientTape() as outer:
        outer.watch(params)
        with tf.GradientTape() as inner:
            inner.watch(params)
            r = value(params)
        if r is None:
            return None
        dot = _dot(inner.gradient(r, params, unconnected_gradients=_ZERO), tangents)
    return outer.gradient(dot, params, unconnected_gradients=_ZERO)


def _ggn_kernel(obj: Objective, mode: str):
    space = obj.space
    regularized = obj.include_regularization

    def fn(params, x, y, mask, scale, regw, T):
        weights = scale * tf.cast(mask, obj.dtype)
        structure = []

        def run(ps):
            out = obj.forward(ps, x)
            structure[:] = [out]
            return [tf.cast(o, obj.dtype) for o in tf.nest.flatten(out)]

        def column(t):
            tangents = _split(t, space)
            tape, outs, jvps = _weighted_forward(obj, params, tangents, mode, run)
            hjv = _output_hvp(obj, structure[0], outs, y, weights, jvps)
            cols = tape.gradient(outs, params, output_gradients=hjv, unconnected_gradients=_ZERO)
            if regularized:
                reg = _regularization_hvp(obj, params, x, regw, tangents, mode)
                if reg is not None:
                    cols = [a + b for a, b in zip(cols, reg)]
            return _flat(obj.fix_none(cols, params))

        return vectorize_columns(column, T, mode)

    return fn


class FisherOperator(CurvatureOperator):
    """The Fisher matrix ``F = (c/N) sum_i g_i g_i^T``, ``g_i`` the gradient of example ``i``'s loss.

    ``kind="empirical"`` uses the observed targets; ``kind="mc"`` draws ``num_samples`` targets per example
    from the model's predictive distribution once, at construction (``seed``; same seed, same matrix): Gaussian
    with variance D/2 for mse (so the loss is its negative log-likelihood), Bernoulli for binary and
    categorical for (sparse) categorical cross-entropy. ``c`` is 1 except for a loss averaged over ``c``
    independent predictions per example (e.g. several sigmoid units), so that the MC Fisher estimates the
    Gauss-Newton matrix without bias. The model's regularisation losses are not part of a Fisher matrix.
    Always positive semi-definite. Cost per vector: one JVP and one VJP of the per-example losses.
    Reference: Kunstner, Balles & Hennig (2019), "Limitations of the empirical Fisher approximation".

    Example:
        >>> import numpy as np, keras
        >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, name="lin")])
        >>> x = np.array([[1.0], [2.0]], "float32"); y = np.zeros((2, 1), "float32")
        >>> F = FisherOperator(model, (x, y), loss="mse", kind="empirical")
        >>> F.to_dense().shape
        TensorShape([2, 2])
    """

    matrix_name = "Fisher"

    def __init__(self, model: ModelLike, data: DataLike, loss: LossLike = None, wrt: WrtLike = None, *, kind: FisherKind = "empirical",
                 seed: int = 0, num_samples: int = 1, **kwargs):
        check_choice("kind", kind, ("empirical", "mc"))
        self.fisher_kind = kind
        self.seed = check_seed(seed)
        self.num_samples = check_positive_int("num_samples", num_samples)
        super().__init__(model, data, loss, wrt, **kwargs)
        self.factor = 1.0
        if kind == "mc":
            self.data, self.factor = _sampled_data(self.objective, self.data, self.seed, self.num_samples)

    def _is_psd(self) -> bool:
        return True

    def _batch_matmat(self, params, x, y, mask, scale, regw, T):
        obj = self.objective
        factor = self.factor
        kernel = cached_kernel(obj, "fisher", f"fisher/{factor!r}", lambda mode: _fisher_kernel(obj, mode, factor),
                               self.method, "Fisher products")
        return kernel(params, x, y, mask, scale, regw, T)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", kind={self.fisher_kind!r})"


def _fisher_kernel(obj: Objective, mode: str, factor: float):
    space = obj.space

    def fn(params, x, y, mask, scale, regw, T):
        weights = factor * scale * tf.cast(mask, obj.dtype)

        def run(ps):
            return [tf.cast(obj.per_example_loss(ps, x, y), obj.dtype)]

        def column(t):
            tape, outs, jvps = _weighted_forward(obj, params, _split(t, space), mode, run)
            coef = tf.stop_gradient(weights * jvps[0])  # w_i g_i^T v
            cols = tape.gradient(outs[0], params, output_gradients=coef, unconnected_gradients=_ZERO)
            return _flat(obj.fix_none(cols, params))

        return vectorize_columns(column, T, mode)

    return fn


# --------------------------------------------------------------------------------- Monte-Carlo targets
def _predictions(obj: Objective, data: Data) -> list[np.ndarray]:
    """Model outputs (flattened structure) for every real example, in order."""
    fn = obj.function("fisher/predict", lambda: lambda params, x: [tf.cast(o, obj.dtype) for o in
                                                                     tf.nest.flatten(obj.forward(params, x))])
    params = obj.space.values()
    parts: list[list[np.ndarray]] = []
    for batch in data.batches():
        outs = fn(params, as_tensors(batch.x, obj.dtype))
        parts.append([o.numpy()[:batch.count] for o in outs])
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]


def _sample(loss, pred: np.ndarray, like, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Targets drawn from the predictive distribution of ``pred`` and the log-likelihood factor ``c``."""
    name, logits = loss.name, loss.from_logits
    pred = pred.astype(np.float64)
    if name == "mse":
        per_example = int(np.prod(pred.shape[1:], dtype=np.int64)) or 1
        return pred + rng.standard_normal(pred.shape) * np.sqrt(per_example / 2.0), 1.0
    if name == "binary_crossentropy":
        p = 1.0 / (1.0 + np.exp(-pred)) if logits else np.clip(pred, 0.0, 1.0)
        return (rng.random(pred.shape) < p).astype(np.float64), float(np.prod(pred.shape[1:], dtype=np.int64) or 1)
    if logits:
        z = pred - pred.max(axis=-1, keepdims=True)
        p = np.exp(z)
    else:
        p = np.clip(pred, 0.0, None)
    p = p / p.sum(axis=-1, keepdims=True)
    cdf = np.cumsum(p, axis=-1)
    u = rng.random(p.shape[:-1] + (1,))
    labels = np.minimum((u > cdf).sum(axis=-1), p.shape[-1] - 1)
    factor = float(np.prod(pred.shape[1:-1], dtype=np.int64) or 1)
    if name == "categorical_crossentropy":
        return np.eye(p.shape[-1])[labels], factor
    like = np.asarray(like)
    if like.size == labels.size:  # keep the user's label layout, e.g. (N,) or (N, 1)
        labels = labels.reshape(like.shape)
    return labels.astype(like.dtype if np.issubdtype(like.dtype, np.integer) else np.int64), factor


def _sampled_data(obj: Objective, data: Data, seed: int, num_samples: int) -> tuple[Data, float]:
    """A copy of ``data`` (repeated ``num_samples`` times) with targets drawn from the model (seeded)."""
    if obj.loss.name not in _SAMPLED:
        raise InputError(f"kind='mc': the Monte-Carlo Fisher needs a likelihood; loss {obj.loss.name!r} has none "
                         f"here (supported: {', '.join(_SAMPLED)}); use kind='empirical' or GGNOperator")
    rng = np.random.default_rng(seed)
    x, y = data.arrays()
    preds = _predictions(obj, data)
    ys = y if isinstance(y, list) else [y]
    xs = x if isinstance(x, list) else [x]
    xs = [np.concatenate([a] * num_samples) for a in xs]
    new_y, factor = [], 1.0
    for pred, like in zip(preds, ys):
        draws = []
        for _ in range(num_samples):
            drawn, factor = _sample(obj.loss, pred, like, rng)
            draws.append(drawn if np.issubdtype(drawn.dtype, np.integer) else drawn.astype(obj.dtype.as_numpy_dtype))
        new_y.append(np.concatenate(draws))
    sampled = load_data((xs if isinstance(x, list) else xs[0], new_y if isinstance(y, list) else new_y[0]),
                        batch_size=data.batch_size, model=obj.model, loss_name=obj.loss.name)
    return (sampled.cast("float64") if obj.dtype == tf.float64 else sampled), factor


class ColumnLoopOperator(LinearOperator):
    """``op`` with every product taken one column at a time: ``A V = [A v_1, ..., A v_k]``.

    The estimators multiply blocks of different widths (Lanczos one vector, Hutch++ a sketch, then the sketch
    and the probes together). A compiled curvature product is traced once per block width, and on a small model
    one trace costs far more than the products; one width means one trace for a whole curvature summary. On
    real CNNs the products run as a compiled loop over columns anyway (the vectorised, pfor path is refused for
    most of their layers), so looping here costs nothing there and keeps a single compiled function.

    Maths: the same operator (``A``), only the order of work changes. Cost: ``k`` calls of ``op`` for ``k``
    columns; the counters of both operators count every column.

    Reference: the matrix-free operator design of curvlinops (Dangel et al., 2023), one matvec per product.

    Args:
        op: any :class:`~tfpartials.linalg.operator.LinearOperator` (its tags and parameter space are kept).

    Example:
        >>> import numpy as np
        >>> from tfpartials.linalg.dense import DenseOperator
        >>> A = ColumnLoopOperator(DenseOperator(np.diag([2.0, 3.0])))
        >>> (A @ np.eye(2)).numpy().tolist(), A.num_matvecs, A.parent.num_matvecs
        ([[2.0, 0.0], [0.0, 3.0]], 2, 2)
    """

    def __init__(self, op: LinearOperator):
        if not isinstance(op, LinearOperator):
            raise TypeError(f"op: expected a tfpartials LinearOperator, got {type(op).__name__}")
        super().__init__(op.n, op.dtype, symmetric=op.symmetric, psd=op.psd, space=op.space)
        self.parent = op

    def _matmat(self, V: tf.Tensor) -> tf.Tensor:
        cols = [self.parent.matmat(V[:, j:j + 1]) for j in range(int(V.shape[1]))]
        return tf.concat(cols, axis=1) if cols else tf.zeros_like(V)
