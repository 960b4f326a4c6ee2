"""Integrated gradients: the input gradient averaged along the straight path from a baseline to the input.

    A_i = (x_i − x'_i) · ∫₀¹ ∂f(x' + α (x − x'))/∂x_i dα  ≈  (x_i − x'_i) · Σ_k w_k ∂f(x' + α_k (x − x'))/∂x_i

By the fundamental theorem of calculus along the path, Σ_i A_i = f(x) − f(x') exactly ("completeness"); the
quadrature error shows as the completeness delta Σ_i A_i − (f(x) − f(x')), returned with
``return_delta=True``. Reference: Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks",
ICML 2017 (arXiv:1703.01365).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from .._backend import tf
from .._checks import InputError, check_choice, check_positive_int
from .._memory import plan_chunks
from .._progress import progress
from .base import _MAX_CHUNK, AttributionMethod, Target, TargetSpec, _as_input, _index_or_dummy

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
        layer: attribute at this layer's output: integrate along the layer's activations from the baseline's
            activations ``h' = head(x')`` to ``h = head(x)``, then sum over the feature axis (one score per
            token for an embedding); completeness holds for the sum, ``Σ A = f(x) − f(x')``. The baseline is
            still given in input space (``"zeros"``: token id 0; ``"mean"``: the mean activation of the batch).
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
                 layer: str | None = None, max_memory: str | int | None = None):
        super().__init__(model, layer=layer, max_memory=max_memory)
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
        job = self.begin(x, target)
        attr = self._attribute(job.z, job.target, job.state)
        if not return_delta:
            return self.finish(attr)
        return self.finish(attr), self.completeness_delta(job.z, attr, job.target, job.state)

    def completeness_delta(self, z: np.ndarray, attributions: np.ndarray, target: Target,
                           baseline: np.ndarray) -> np.ndarray:
        """``Σ_j A_ij − (f(z_i) − f(z'_i))`` in float64 for an attributed array (inputs or activations), its
        attributions (any shape with ``len(z)`` rows) and a resolved target."""
        fz = self.values(z, target).astype(np.float64)
        fb = self.values(np.broadcast_to(baseline, z.shape).astype(z.dtype), target).astype(np.float64)
        total = attributions.reshape(len(z), -1).astype(np.float64).sum(axis=1)
        return total - (fz - fb)

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
        return _as_input(arr, self.input_dtype, "baseline")

    def _prepare(self, xs: np.ndarray, z: np.ndarray) -> np.ndarray:
        """The baseline for this batch in the attributed space: shape ``(1, ...)`` (shared) or ``(B, ...)``."""
        b = self.baseline
        if isinstance(b, str) and b == "mean":
            return z.mean(axis=0, keepdims=True, dtype=np.float64).astype(z.dtype)
        if isinstance(b, str):
            b = np.zeros((1, *xs.shape[1:]), xs.dtype)
        elif b.ndim == 0:
            b = np.full((1, *xs.shape[1:]), b, xs.dtype)
        elif b.ndim == xs.ndim - 1:
            if b.shape != xs.shape[1:]:
                raise InputError(f"baseline: expected shape {xs.shape[1:]} to match the inputs, got {b.shape}")
            b = b[None]
        elif b.shape != xs.shape:
            raise InputError(f"baseline: expected shape {xs.shape[1:]} or {xs.shape} to match the inputs, "
                             f"got {b.shape}")
        return self.embed(b.astype(xs.dtype, copy=False))

    def _tile_state(self, state: Any, copies: int) -> Any:
        return state if len(state) == 1 else np.concatenate([state] * copies)

    # -- the computation --------------------------------------------------------------------------------------
    def _block_fn(self, target: Target, in_shape: tuple[int, ...]):
        """Compiled ``(z, z', α, w, index) -> Σ_k w_k ∇f(z' + α_k (z − z'))`` for E examples × S nodes (flat
        rows)."""

        def build(select):
            def block(z, base, alphas, weights, index):
                num_nodes = tf.shape(alphas)[0]
                pts = base[:, None, :] + alphas[None, :, None] * (z - base)[:, None, :]   # (E, S, n)
                pts = tf.reshape(pts, [-1, z.shape[1]])
                with tf.GradientTape() as tape:
                    tape.watch(pts)
                    total = tf.reduce_sum(select(pts, tf.repeat(index, num_nodes)))
                g = tf.reshape(tape.gradient(total, pts), [-1, num_nodes, z.shape[1]])
                return tf.reduce_sum(g * weights[None, :, None], axis=1)
            return block

        n = math.prod(in_shape)
        node = tf.TensorSpec((None,), self.dtype)
        return self.compiled("integrated_gradients", target, in_shape, build,
                             [tf.TensorSpec((None, n), self.dtype), node, node])

    def plan(self, num_examples: int) -> tuple[int, int]:
        """``(examples, nodes)`` evaluated per compiled call: all nodes of several examples when they fit,
        else one example with the nodes split."""
        if self.internal_batch_size is not None:
            points = self.internal_batch_size
        else:
            per_point = self.example_bytes() + 3 * self.dtype.size * self.space_size()
            points = plan_chunks(num_examples * self.steps, per_point, budget=self.budget,
                                 what=f"integrated gradients ({num_examples} examples x {self.steps} steps)",
                                 max_chunk=_MAX_CHUNK).chunk
        if points >= self.steps:
            return max(1, min(num_examples, points // self.steps)), self.steps
        return 1, points

    def _attribute(self, z: np.ndarray, target: Target, state: Any) -> np.ndarray:
        base = np.broadcast_to(state, z.shape).reshape(len(z), -1)
        fn = self._block_fn(target, tuple(z.shape[1:]))
        dtype = z.dtype
        flat = z.reshape(len(z), -1)
        alphas = self.alphas.astype(dtype)
        weights = self.weights.astype(dtype)
        per_call, nodes = self.plan(len(z))
        node_blocks = [(a, min(a + nodes, self.steps)) for a in range(0, self.steps, nodes)]
        n = len(z)
        out = np.empty(flat.shape, np.float64 if len(node_blocks) > 1 else dtype)
        calls = -(-n // per_call) * len(node_blocks)
        with progress("integrated gradients", calls, unit="chunks") as bar:
            for start in range(0, n, per_call):
                stop = min(start + per_call, n)
                zb = tf.constant(flat[start:stop])
                bb = tf.constant(base[start:stop])
                idx = tf.constant(_index_or_dummy(target.take(np.arange(start, stop)), stop - start))
                acc = None
                for a, b in node_blocks:
                    g = fn(zb, bb, tf.constant(alphas[a:b]), tf.constant(weights[a:b]), idx).numpy()
                    acc = g if acc is None else acc + g.astype(np.float64)
                    bar.advance(1)
                out[start:stop] = acc
        return ((flat - base) * out).astype(dtype).reshape(z.shape)
