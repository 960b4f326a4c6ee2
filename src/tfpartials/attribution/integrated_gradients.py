"""Integrated gradients: the input gradient averaged along the straight path from a baseline to the input.

    A_i = (x_i − x'_i) · ∫₀¹ ∂f(x' + α (x − x'))/∂x_i dα  ≈  (x_i − x'_i) · Σ_k w_k ∂f(x' + α_k (x − x'))/∂x_i

By the fundamental theorem of calculus along the path, Σ_i A_i = f(x) − f(x') exactly ("completeness"); the
quadrature error shows as the completeness delta Σ_i A_i − (f(x) − f(x')), returned with
``return_delta=True``. Reference: Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks",
ICML 2017 (arXiv:1703.01365).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from .._backend import tf
from .._checks import InputError, check_choice, check_positive_int
from .._memory import plan_chunks
from .._progress import progress
from .base import _MAX_CHUNK, AttributionMethod, Target, TargetSpec, _index_or_dummy

__all__ = ["IntegratedGradients", "path_nodes", "Rule"]

Rule = Literal["riemann_trapezoid", "gauss_legendre"]
RULES = ("riemann_trapezoid", "gauss_legendre")


def path_nodes(steps: int, rule: Rule = "riemann_trapezoid") -> tuple[np.ndarray, np.ndarray]:
    """Quadrature nodes ``α_k`` in [0, 1] and weights ``w_k`` (summing to 1) for ``∫₀¹ g(α) dα ≈ Σ w_k g(α_k)``.

    ``"riemann_trapezoid"``: ``steps`` equally spaced nodes including both ends, end weights halved (error
    O(1/steps²) for smooth paths; one node is the midpoint rule). ``"gauss_legendre"``: Gauss–Legendre nodes
    (exact for polynomials of degree < 2·steps; error falls geometrically for smooth paths).
    """
    steps = check_positive_int("steps", steps)
    check_choice("rule", rule, RULES)
    if rule == "gauss_legendre":
        t, w = np.polynomial.legendre.leggauss(steps)
        return (t + 1.0) / 2.0, w / 2.0
    if steps == 1:
        return np.array([0.5]), np.array([1.0])
    alphas = np.linspace(0.0, 1.0, steps)
    weights = np.full(steps, 1.0 / (steps - 1))
    weights[0] = weights[-1] = 0.5 / (steps - 1)
    return alphas, weights


class IntegratedGradients(AttributionMethod):
    """``A = (x − x') ⊙ ∫₀¹ ∇f(x' + α(x − x')) dα`` by quadrature, with a per-example completeness delta.

    Cost: ``steps`` forward+backward passes per example. The ``B × steps`` interpolation points are
    evaluated in chunks of ``internal_batch_size`` points (or as many as fit the memory budget) by one compiled
    function traced once per input shape, so chunking never retraces.

    Args:
        model: a single-input Keras model with floating inputs (not modified; run with ``training=False``).
        baseline: ``"zeros"``; ``"mean"`` (the mean input of the batch being attributed); a number (an input
            filled with it); or an array of shape ``x.shape[1:]`` (one baseline for all) or ``x.shape`` (one per
            example).
        steps: quadrature nodes on the path (gradient evaluations per example), >= 1.
        rule: ``"riemann_trapezoid"`` (default) or ``"gauss_legendre"`` (fewer steps for the same delta on
            smooth models).
        internal_batch_size: interpolation points per compiled call; None plans it from the memory budget.
        max_memory: working-memory budget (default half the available memory).

    ``attribute(x, target=None, return_delta=False)`` returns the attributions, or ``(attributions, delta)``
    with ``return_delta=True`` where ``delta[i] = Σ A_i − (f(x_i) − f(x'_i))`` (float64, shape ``(B,)``).

    Example:
        >>> import numpy as np, keras
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        >>> w = model.layers[0].kernel.numpy()[:, 0]
        >>> x = np.array([[1.0, -2.0, 0.5]], "float32")
        >>> a, delta = IntegratedGradients(model, steps=4).attribute(x, return_delta=True)
        >>> bool(np.allclose(a, x * w)), bool(abs(delta[0]) < 1e-5)   # exact for a linear model
        (True, True)
    """

    name = "integrated-gradients"

    def __init__(self, model, baseline: str | float | np.ndarray = "zeros", steps: int = 64,
                 rule: Rule = "riemann_trapezoid", internal_batch_size: int | None = None, *,
                 max_memory: str | int | None = None):
        super().__init__(model, max_memory=max_memory)
        self.steps = check_positive_int("steps", steps)
        self.rule = check_choice("rule", rule, RULES)
        if internal_batch_size is not None:
            internal_batch_size = check_positive_int("internal_batch_size", internal_batch_size)
        self.internal_batch_size = internal_batch_size
        self.baseline = self._check_baseline(baseline)
        self.alphas, self.weights = path_nodes(self.steps, self.rule)

    # -- the verb ---------------------------------------------------------------------------------------------
    def attribute(self, x, target: TargetSpec = None, *, return_delta: bool = False):
        """Integrated gradients of ``target`` at ``x`` (shape of ``x``); with ``return_delta=True`` also the
        ``(B,)`` completeness delta ``Σ A − (f(x) − f(x'))``."""
        xs = self.check_inputs(x)
        tgt = self.resolve_target(xs, target)
        base = self._prepare(xs)
        attr = self._attribute(xs, tgt, base)
        if not return_delta:
            return attr
        return attr, self.completeness_delta(xs, attr, tgt, base)

    def completeness_delta(self, x: np.ndarray, attributions: np.ndarray, target: Target,
                           baseline: np.ndarray) -> np.ndarray:
        """``Σ_j A_ij − (f(x_i) − f(x'_i))`` in float64 for validated inputs and a resolved target."""
        fx = self.values(x, target).astype(np.float64)
        fb = self.values(np.broadcast_to(baseline, x.shape).astype(x.dtype), target).astype(np.float64)
        total = attributions.reshape(len(x), -1).astype(np.float64).sum(axis=1)
        return total - (fx - fb)

    # -- baseline ---------------------------------------------------------------------------------------------
    def _check_baseline(self, baseline):
        if isinstance(baseline, str):
            return check_choice("baseline", baseline, ("zeros", "mean"))
        feat = self.signature.input_shapes[0]
        if isinstance(baseline, bool):
            raise InputError(f"baseline: expected 'zeros', 'mean', a number or an array, got {baseline!r}")
        try:
            arr = np.asarray(baseline.numpy() if hasattr(baseline, "numpy") else baseline)
        except (TypeError, ValueError):
            raise InputError(f"baseline: expected 'zeros', 'mean', a number or an array, got "
                             f"{type(baseline).__name__}") from None
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
            raise InputError(f"baseline: expected numbers, got dtype {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            raise InputError("baseline: NaN or Inf values")
        shape = tuple(arr.shape)

        def matches(dims) -> bool:
            return len(dims) == len(feat) and all(f is None or f == g for f, g in zip(feat, dims))

        if not (arr.ndim == 0 or matches(shape) or (arr.ndim == len(feat) + 1 and matches(shape[1:]))):
            shown = "(" + ", ".join("?" if d is None else str(d) for d in feat) + (",)" if len(feat) == 1 else ")")
            raise InputError(f"baseline: expected a number or an array of shape {shown} or (B, *{shown}), "
                             f"got shape {shape}")
        return arr.astype(self.dtype.as_numpy_dtype)

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        """The baseline for this batch: shape ``(1, ...)`` (shared) or ``(B, ...)`` (per example)."""
        b = self.baseline
        if isinstance(b, str):
            if b == "zeros":
                return np.zeros((1, *x.shape[1:]), x.dtype)
            return x.mean(axis=0, keepdims=True, dtype=np.float64).astype(x.dtype)
        if b.ndim == 0:
            return np.full((1, *x.shape[1:]), b, x.dtype)
        if b.ndim == x.ndim - 1:
            if b.shape != x.shape[1:]:
                raise InputError(f"baseline: expected shape {x.shape[1:]} to match the inputs, got {b.shape}")
            return b[None]
        if b.shape != x.shape:
            raise InputError(f"baseline: expected shape {x.shape[1:]} or {x.shape} to match the inputs, "
                             f"got {b.shape}")
        return b

    def _tile_state(self, state: Any, copies: int) -> Any:
        return state if len(state) == 1 else np.concatenate([state] * copies)

    # -- the computation --------------------------------------------------------------------------------------
    def _block_fn(self, target: Target):
        """Compiled ``(x, baseline, α, w, index) -> Σ_k w_k ∇f(x' + α_k (x − x'))`` for E examples × S nodes."""
        feat = list(self.signature.input_shapes[0])
        rank = len(feat)

        def build():
            def block(x, base, alphas, weights, index):
                num_nodes = tf.shape(alphas)[0]
                diff = x - base
                a = tf.reshape(alphas, [1, -1] + [1] * rank)
                pts = tf.expand_dims(base, 1) + a * tf.expand_dims(diff, 1)        # (E, S, ...)
                pts = tf.ensure_shape(tf.reshape(pts, tf.concat([[-1], tf.shape(x)[1:]], 0)), [None, *feat])
                idx = tf.repeat(index, num_nodes)
                with tf.GradientTape() as tape:
                    tape.watch(pts)
                    f = self._select(self.model(pts, training=False), target.fn, target.output, idx)
                    total = tf.reduce_sum(f)
                g = tape.gradient(total, pts)
                g = tf.reshape(g, tf.concat([[-1, num_nodes], tf.shape(x)[1:]], 0))
                w = tf.reshape(weights, [1, -1] + [1] * rank)
                return tf.reduce_sum(g * w, axis=1)
            return block

        spec = self._x_spec()
        node = tf.TensorSpec((None,), self.dtype)
        return self._compiled(("integrated_gradients", target.output, target.fn), build,
                              [spec, spec, node, node, tf.TensorSpec((None,), tf.int32)])

    def plan(self, num_examples: int) -> tuple[int, int]:
        """``(examples, nodes)`` evaluated per compiled call: all nodes of several examples when they fit,
        else one example with the nodes split."""
        if self.internal_batch_size is not None:
            points = self.internal_batch_size
        else:
            per_point = self.example_bytes() + 3 * self.dtype.size * int(
                np.prod(self.signature.input_shapes[0], dtype=np.int64))
            points = plan_chunks(num_examples * self.steps, per_point, budget=self.budget,
                                 what=f"integrated gradients ({num_examples} examples x {self.steps} steps)",
                                 max_chunk=_MAX_CHUNK).chunk
        if points >= self.steps:
            return max(1, min(num_examples, points // self.steps)), self.steps
        return 1, points

    def _attribute(self, x: np.ndarray, target: Target, state: Any) -> np.ndarray:
        base = state
        fn = self._block_fn(target)
        dtype = x.dtype
        alphas = self.alphas.astype(dtype)
        weights = self.weights.astype(dtype)
        per_call, nodes = self.plan(len(x))
        node_blocks = [(a, min(a + nodes, self.steps)) for a in range(0, self.steps, nodes)]
        n = len(x)
        out = np.empty(x.shape, np.float64 if len(node_blocks) > 1 else dtype)
        calls = -(-n // per_call) * len(node_blocks)
        with progress("integrated gradients", calls, unit="chunks") as bar:
            for start in range(0, n, per_call):
                stop = min(start + per_call, n)
                xb = tf.constant(x[start:stop])
                bb = tf.constant(np.broadcast_to(base if len(base) == 1 else base[start:stop], xb.shape))
                idx = tf.constant(_index_or_dummy(target.take(np.arange(start, stop)), stop - start))
                acc = None
                for a, b in node_blocks:
                    g = fn(xb, bb, tf.constant(alphas[a:b]), tf.constant(weights[a:b]), idx).numpy()
                    acc = g if acc is None else acc + g.astype(np.float64)
                    bar.advance(1)
                out[start:stop] = acc
        diff = x - np.broadcast_to(base, x.shape)
        return (diff * out).astype(dtype)
