"""Trace estimators from matvecs only: Hutchinson and Hutch++, with standard errors.

Hutchinson: ``tr(A) = E[z^T A z]`` for probes with ``E[z z^T] = I``; the estimate is the mean of ``m`` samples
and its standard error the sample standard deviation over ``sqrt(m)``.

Hutch++ spends a third of the matvecs on a sketch ``Q = orth(A S)`` of the dominant range, computes
``tr(Q^T A Q)`` exactly and runs Hutchinson on the deflated ``(I - QQ^T) A (I - QQ^T)``, whose Frobenius norm
is small when the spectrum decays: error ``O(1/m)`` instead of ``O(1/sqrt(m))`` for PSD matrices.

References: Hutchinson, Commun. Stat. Simul. Comput. 18 (1989); Meyer, Musco, Musco & Woodruff, "Hutch++:
Optimal stochastic trace estimation", SOSA 2021.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._checks import InputError, check_positive_int, check_seed
from .._progress import progress
from ._probes import Distribution, apply, as_operator, draw_probes

__all__ = ["TraceEstimate", "hutchinson_trace", "hutchpp_trace"]


@dataclass(frozen=True)
class TraceEstimate:
    """An estimate of ``tr(A)``.

    Attributes:
        value: the estimate.
        std_error: its standard error (NaN when it cannot be estimated: a single random sample).
        num_matvecs: products with the operator used.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="lin")])
        >>> x = np.array([[1.0, 0.0], [0.0, 2.0]], "float32"); y = np.zeros((2, 1), "float32")
        >>> est = tp.hutchpp_trace(tp.HessianOperator(model, (x, y), loss="mse"), num_matvecs=9)
        >>> round(est.value, 4), est.num_matvecs      # tr((2/N) [X 1]^T [X 1]) = 1 + 4 + 2; n = 3 is sketched whole
        (7.0, 9)
    """

    value: float
    std_error: float
    num_matvecs: int

    def as_dict(self) -> dict[str, float | int | None]:
        return {"value": self.value, "std_error": None if np.isnan(self.std_error) else self.std_error,
                "num_matvecs": self.num_matvecs}


def _mean_and_error(samples: np.ndarray) -> tuple[float, float]:
    m = samples.shape[-1]
    mean = float(np.mean(samples))
    err = float(np.std(samples, ddof=1) / np.sqrt(m)) if m > 1 else float("nan")
    return mean, err


def hutchinson_trace(op, num_matvecs: int = 100, distribution: Distribution = "rademacher", seed: int = 0, *,
                     quiet: bool = False) -> TraceEstimate:
    """Hutchinson's estimate of ``tr(A)`` from ``num_matvecs`` random probes.

    Maths: ``tr(A) ~ (1/m) sum_i z_i^T A z_i``; standard error ``std(z_i^T A z_i) / sqrt(m)``. With Rademacher
    probes the variance is ``2 (|A|_F^2 - sum_i a_ii^2)`` per sample (for symmetric A).

    Cost: ``num_matvecs`` matvecs.

    Args:
        op: any square :class:`~tfpartials.linalg.operator.LinearOperator` (symmetry not needed) or array.
        num_matvecs: number of probes, ``>= 1`` (``>= 2`` for a standard error).
        distribution: ``"rademacher"`` (lower variance) or ``"gaussian"``.
        seed: seed of the probes.

    Reference: Hutchinson (1989); Avron & Toledo, J. ACM 58 (2011).

    Example:
        >>> import numpy as np
        >>> est = hutchinson_trace(np.diag([1.0, 2.0, 3.0]), num_matvecs=10)
        >>> est.value, est.std_error    # a diagonal matrix: every Rademacher sample is exact
        (6.0, 0.0)
    """
    op = as_operator(op)
    m = check_positive_int("num_matvecs", num_matvecs)
    rng = np.random.default_rng(check_seed(seed))
    Z = draw_probes(op.n, m, distribution, rng)
    with progress("Hutchinson trace", m, quiet=quiet, unit="matvecs") as bar:
        AZ = apply(op, Z, bar)
    value, err = _mean_and_error(np.einsum("ij,ij->j", Z, AZ))
    return TraceEstimate(value=value, std_error=err, num_matvecs=m)


def hutchpp_trace(op, num_matvecs: int = 99, distribution: Distribution = "rademacher", seed: int = 0, *,
                  quiet: bool = False) -> TraceEstimate:
    """Hutch++ estimate of ``tr(A)``: exact trace on a sketched top subspace plus Hutchinson on the rest.

    Maths: ``S, G`` random ``(n, s)`` and ``(n, g)``; ``Q = orth(A S)``;
    ``tr(A) ~ tr(Q^T A Q) + (1/g) sum_i g_i^T P A P g_i`` with ``P = I - QQ^T``. ``s = num_matvecs // 3``, the
    sketch and ``A Q`` cost ``s`` matvecs each, and the remaining ``g = num_matvecs - 2 s`` go to Hutchinson.
    The standard error is that of the Hutchinson part on the deflated residual (the sketch part is exact).

    Cost: ``num_matvecs`` matvecs (``>= 3``; fewer when ``s > n``) and a QR of an ``(n, s)`` matrix.

    Args:
        op: any square operator or array.
        num_matvecs: total products, ``>= 3``.
        distribution: ``"rademacher"`` or ``"gaussian"`` probes.
        seed: seed of the probes.

    Reference: Meyer, Musco, Musco & Woodruff, "Hutch++: Optimal stochastic trace estimation", SOSA 2021,
    Algorithm 1.

    Example:
        >>> import numpy as np
        >>> A = np.diag(2.0 ** -np.arange(10))
        >>> round(hutchpp_trace(A, num_matvecs=30).value, 6) == round(float(np.trace(A)), 6)
        True
    """
    op = as_operator(op)
    m = check_positive_int("num_matvecs", num_matvecs)
    if m < 3:
        raise InputError(f"num_matvecs: Hutch++ needs at least 3 matvecs (sketch, projection, probe), got {m}")
    rng = np.random.default_rng(check_seed(seed))
    n = op.n
    s = m // 3
    g = m - 2 * s
    S = draw_probes(n, s, distribution, rng)
    G = draw_probes(n, g, distribution, rng)
    with progress("Hutch++ trace", m, quiet=quiet, unit="matvecs") as bar:
        Q, _ = np.linalg.qr(apply(op, S, bar))
        PG = G - Q @ (Q.T @ G)
        both = apply(op, np.concatenate([Q, PG], axis=1), bar)
    AQ, APG = both[:, : Q.shape[1]], both[:, Q.shape[1]:]
    exact = float(np.einsum("ij,ij->", Q, AQ))
    rest, err = _mean_and_error(np.einsum("ij,ij->j", PG, APG))
    return TraceEstimate(value=exact + rest, std_error=err, num_matvecs=s + Q.shape[1] + g)
