"""Products and Lanczos steps of :func:`~tfpartials.estimators.top_eigenvalues` without host bookkeeping.

For an operator whose products can run inside a graph (:meth:`~tfpartials.linalg.operator.LinearOperator.
_traceable_product`: a Hessian of one in-memory batch):

* :class:`GraphSteps` (``compiled=True``): the steps between two host decisions in one ``tf.while_loop``:
  product, CGS2 reorthogonalisation against the whole basis, the Ritz values of the projected matrix and the
  same residual test ``|beta s_m| <= max(tol |theta|, floor |A|)``. The loop returns to the host at the first
  step that needs a decision (converged, the basis full, an invariant subspace, the matvec budget, a
  non-finite product), and the host then runs its ordinary code for that step, so restarts, breakdowns and
  the final vectors are unchanged. Tracing costs 1-2 s per model; it pays on tiny models (see the docstring
  of ``compiled``).

All arithmetic is float64 like the host loop's; only the order of floating-point sums differs (round-off).
The compiled function is cached on the operator's objective, per product (batch shape), basis size,
``k`` and ``which``.
"""

from __future__ import annotations

import numpy as np

from .._backend import tf

__all__ = ["GraphSteps"]

GRAPH_MAX_N = 1_000_000  # larger operators keep the host loop (their product dominates; basis copies grow)


def _ordered(theta, which: str):
    if which == "largest":
        return tf.argsort(theta, direction="DESCENDING", stable=True)
    if which == "smallest":
        return tf.argsort(theta, direction="ASCENDING", stable=True)
    return tf.argsort(tf.abs(theta), direction="DESCENDING", stable=True)


def _build(product, n: int, m: int, k: int, which: str, op_dtype):
    f64 = tf.float64

    def steps(product_args, B, T, j, used, anorm, fresh, max_matvecs, tol, floor, breakdown_eps):
        def body(B, T, j, used, anorm, fresh, w, h, done, finite):
            rows = product(*product_args, tf.cast(B[j][None, :], op_dtype))
            w = tf.cast(rows[0], f64)
            finite = tf.reduce_all(tf.math.is_finite(w))
            w = tf.where(finite, w, tf.zeros_like(w))  # a NaN product ends the loop (b = 0); the host raises
            used = used + 1
            fresh = tf.where(fresh >= 0, fresh + 1, fresh)
            anorm = tf.maximum(anorm, tf.norm(w))
            size = j + 1
            Q = B[:size]  # the basis so far (CGS2); slicing also lets the row update below reuse B's buffer
            h1 = tf.linalg.matvec(Q, w)
            w = w - tf.linalg.matvec(Q, h1, transpose_a=True)
            h2 = tf.linalg.matvec(Q, w)
            w = w - tf.linalg.matvec(Q, h2, transpose_a=True)
            h = h1 + h2
            T = tf.tensor_scatter_nd_update(T, tf.stack([tf.range(size), tf.fill([size], j)], axis=1), h)
            upper = tf.linalg.band_part(T[:size, :size], 0, -1)
            theta, S = tf.linalg.eigh(upper + tf.linalg.band_part(tf.transpose(upper), -1, 0)
                                      - tf.linalg.diag(tf.linalg.diag_part(upper)))
            want = _ordered(theta, which)[: tf.minimum(k, size)]
            b = tf.norm(w)
            broke = tf.logical_or(b <= breakdown_eps * tf.maximum(anorm, np.finfo(np.float64).tiny), size >= n)
            res = tf.abs(b * tf.gather(S[-1], want))
            thresh = tf.maximum(tol * tf.abs(tf.gather(theta, want)), floor * anorm)
            may_stop = tf.logical_or(fresh < 0, fresh >= k + 1)
            converged = may_stop & (size >= k) & tf.reduce_all(res <= thresh)
            done = (converged | (used >= max_matvecs) | broke | (size >= m) | tf.logical_not(finite))
            # the next basis row (harmless when done: the host reads rows up to j only)
            B = tf.tensor_scatter_nd_update(B, [[size]], tf.math.divide_no_nan(w, b)[None, :])
            j = tf.where(done, j, size)
            return B, T, j, used, anorm, fresh, w, h, done, finite

        zero_w, zero_h = tf.zeros([n], f64), tf.zeros([0], f64)
        shapes = (B.shape, T.shape, j.shape, used.shape, anorm.shape, fresh.shape, zero_w.shape,
                  tf.TensorShape([None]), tf.TensorShape([]), tf.TensorShape([]))
        out = tf.while_loop(lambda *s: tf.logical_not(s[8]), body,
                            (B, T, j, used, anorm, fresh, zero_w, zero_h, tf.constant(False), tf.constant(True)),
                            shape_invariants=shapes)
        return out[:8] + (out[9],)

    return steps


class GraphSteps:
    """Runs the Lanczos steps between host decisions in one compiled call (see the module docstring)."""

    @classmethod
    def create(cls, op, dtype, m: int, k: int, which: str, tol: float, floor: float, breakdown_eps: float,
               max_matvecs: int) -> GraphSteps | None:
        """The compiled steps for ``op``, or None when it takes no graph products, is too large
        (:data:`GRAPH_MAX_N`) or the host arrays are not float64. Call after a first product (it settles the
        operator's kernel)."""
        if dtype != np.float64 or op.n >= GRAPH_MAX_N:
            return None
        spec = op._traceable_product()
        if spec is None or getattr(spec[0], "jit_compile", False):  # XLA: no dynamically sized eigh
            return None
        return cls(op, spec, m, k, which, tol, floor, breakdown_eps, max_matvecs)

    def __init__(self, op, spec, m: int, k: int, which: str, tol: float, floor: float, breakdown_eps: float,
                 max_matvecs: int):
        owner, key, product, self._args = spec
        self._op = op
        n = op.n
        # keyed by the product too (one per batch shape); the cached function keeps it alive, so its id is unique
        self._fn = owner.function(f"lanczos-steps/{key}/{id(product)}/n{n}/m{m}/k{k}/{which}",
                                  lambda: _build(product, n, m, k, which, op.dtype))
        self._scalars = (tf.constant(max_matvecs, tf.int32), tf.constant(tol, tf.float64),
                         tf.constant(floor, tf.float64), tf.constant(breakdown_eps, tf.float64))

    def run(self, V: np.ndarray, T: np.ndarray, j: int, used: int, anorm: float, fresh: int | None, bar):
        """Steps from basis column ``j`` (columns past it ignored) until the host must decide.

        Updates ``V`` and ``T`` in place (columns ``j..``); returns ``(w, h, j, used, anorm, fresh)`` of the
        last step, as the host loop would have them after its product and reorthogonalisation.
        """
        B = V.T.copy()
        B[j + 1:] = 0.0
        out = self._fn(self._args, tf.constant(B), tf.constant(T), tf.constant(j, tf.int32),
                       tf.constant(used, tf.int32), tf.constant(anorm, tf.float64),
                       tf.constant(-1 if fresh is None else fresh, tf.int32), *self._scalars)
        B2, T2, j2, used2, anorm2, fresh2, w, h, finite = (t.numpy() for t in out)
        j2, used2, fresh2 = int(j2), int(used2), int(fresh2)
        done = used2 - used
        self._op.num_matvecs += done
        if bar is not None:
            bar.advance(done)
        if not finite:
            raise FloatingPointError(f"the operator returned NaN or Inf ({self._op!r}); check the model and data "
                                     "(try precision='float64')")
        V[:, j:j2 + 1] = B2[j:j2 + 1].T
        T[:] = T2
        return w, h, j2, used2, float(anorm2), (None if fresh2 < 0 else fresh2)
