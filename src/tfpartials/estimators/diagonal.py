"""The diagonal of an operator: Hutchinson's estimator with per-entry standard errors, or exactly for small n.

For pruning (optimal brain damage), quantisation and diagonal Laplace approximations one wants ``diag(H)``,
which costs ``n`` matvecs exactly but can be estimated from far fewer: ``diag(A) = E[z * (A z)]`` for probes
with independent entries of mean 0 and variance 1.

Reference: Bekas, Kokiopoulou & Saad, "An estimator for the diagonal of a matrix", Appl. Numer. Math. 57
(2007); LeCun, Denker & Solla, "Optimal brain damage", NeurIPS 1989.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass
from typing import Any

import numpy as np

from .._checks import check_positive_int, check_seed
from .._memory import default_budget, plan_chunks
from .._progress import progress
from ._probes import Distribution, apply, as_operator, draw_probes, split_by_space

__all__ = ["DiagonalEstimate", "hutchinson_diagonal", "exact_diagonal"]


@dataclass(frozen=True)
class DiagonalEstimate:
    """An estimate of ``diag(A)``.

    Attributes:
        values: ``(n,)`` the estimate.
        std_error: ``(n,)`` per-entry standard errors (zeros when exact; NaN from a single probe).
        num_matvecs: products with the operator used.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((1,)),               # f = b a x, a = 1, b = 2
        ...     keras.layers.Dense(1, name="a", use_bias=False, kernel_initializer="ones"),
        ...     keras.layers.Dense(1, name="b", use_bias=False, kernel_initializer=keras.initializers.Constant(2.0))])
        >>> x = np.array([[1.0], [2.0]], "float32"); y = np.zeros((2, 1), "float32")
        >>> d = tp.exact_diagonal(tp.HessianOperator(model, (x, y), loss="mse"))
        >>> d.values.tolist(), d.num_matvecs          # 2 b^2 mean(x^2), 2 a^2 mean(x^2)
        ([20.0, 5.0], 2)
        >>> {k: v.tolist() for k, v in d.as_dict().items()}
        {'a/kernel': [[20.0]], 'b/kernel': [[5.0]]}
    """

    values: np.ndarray
    std_error: np.ndarray
    num_matvecs: int
    space: InitVar[Any] = None  # the operator's ParameterSpace, kept out of fields() (and of JSON)

    def __post_init__(self, space: Any) -> None:
        object.__setattr__(self, "_space", space)

    def as_dict(self) -> dict[str, np.ndarray]:
        """The values as ``{parameter name: array}`` (needs a parameter-space operator)."""
        return split_by_space(self._space, self.values, "as_dict")

    def std_error_dict(self) -> dict[str, np.ndarray]:
        """The standard errors as ``{parameter name: array}``."""
        return split_by_space(self._space, self.std_error, "std_error_dict")



# read access to the space given at construction (an InitVar, so it is no dataclass field and no JSON key)
DiagonalEstimate.space = property(lambda self: self._space, doc="The operator's ParameterSpace, or None.")  # type: ignore[assignment,method-assign]

def hutchinson_diagonal(op, num_matvecs: int = 100, distribution: Distribution = "rademacher", seed: int = 0, *,
                        quiet: bool = False) -> DiagonalEstimate:
    """Hutchinson-type estimate of ``diag(A)`` with a standard error per entry.

    Maths: ``diag(A) ~ (1/m) sum_i z_i * (A z_i)`` (elementwise); entry ``j`` of a sample is
    ``a_jj + sum_{k != j} a_jk z_j z_k``, so the error of entry ``j`` scales with the off-diagonal norm of row
    ``j`` over ``sqrt(m)``; the standard error is the per-entry sample standard deviation over ``sqrt(m)``.

    Cost: ``num_matvecs`` matvecs (the same probes serve every entry).

    Args:
        op: any square operator or array.
        num_matvecs: number of probes, ``>= 1`` (``>= 2`` for standard errors).
        distribution: ``"rademacher"`` (exact for a diagonal matrix) or ``"gaussian"``.
        seed: seed of the probes.

    Reference: Bekas, Kokiopoulou & Saad, Appl. Numer. Math. 57 (2007).

    Example:
        >>> import numpy as np
        >>> hutchinson_diagonal(np.diag([1.0, 2.0]), num_matvecs=4).values.tolist()
        [1.0, 2.0]
    """
    op = as_operator(op)
    m = check_positive_int("num_matvecs", num_matvecs)
    rng = np.random.default_rng(check_seed(seed))
    Z = draw_probes(op.n, m, distribution, rng)
    with progress("Hutchinson diagonal", m, quiet=quiet, unit="matvecs") as bar:
        samples = Z * apply(op, Z, bar)
    values = samples.mean(axis=1)
    err = samples.std(axis=1, ddof=1) / np.sqrt(m) if m > 1 else np.full(op.n, np.nan)
    return DiagonalEstimate(values=values, std_error=err, num_matvecs=m, space=op.space)


def exact_diagonal(op, *, max_memory: str | int | None = None, quiet: bool = False) -> DiagonalEstimate:
    """``diag(A)`` exactly, from products with identity columns in chunks that fit the memory budget.

    Maths: ``a_jj = e_j^T A e_j``. Cost: ``n`` matvecs: only for small operators (or a ``restrict``-ed block).

    Example:
        >>> import numpy as np
        >>> exact_diagonal(np.array([[2.0, 1.0], [1.0, 3.0]])).values.tolist()
        [2.0, 3.0]
    """
    from .._memory import resolve_budget

    op = as_operator(op)
    n = op.n
    budget = resolve_budget(max_memory) if max_memory is not None else default_budget()
    plan = plan_chunks(n, 3 * 8 * n, budget=budget, what="exact diagonal columns", max_chunk=256)
    values = np.empty(n)
    with progress("exact diagonal", n, quiet=quiet, unit="matvecs") as bar:
        for start, stop in plan.ranges():
            E = np.zeros((n, stop - start))
            E[np.arange(start, stop), np.arange(stop - start)] = 1.0
            values[start:stop] = apply(op, E, bar, block=stop - start)[np.arange(start, stop), np.arange(stop - start)]
    return DiagonalEstimate(values=values, std_error=np.zeros(n), num_matvecs=n, space=op.space)
