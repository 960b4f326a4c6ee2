"""Whole-model and per-layer trace and diagonal from one set of shared probes, run to a stated accuracy.

For a probe ``z`` with ``E[z z^T] = I`` and the product ``w = A z``, the block ``b`` of the parameters gives
``z_b^T w_b = z_b^T A_bb z_b + z_b^T A_{b,rest} z_rest``, whose mean is ``tr(A_bb)`` because the cross term has
mean zero. So one product serves every layer's trace (and, elementwise, the diagonal ``z * w``) at once: a
per-layer breakdown costs no extra matvecs, where running an estimator on each block separately costs one set
of products per layer.

The whole-model estimate takes probes in blocks until its standard error is at most ``rel_tol * |trace|`` (or
the matvec or time budget ends) and says which ended it in :attr:`LayerwiseTrace.stopped`.

Reference: Hutchinson, Commun. Stat. Simul. Comput. 18 (1989); Bekas, Kokiopoulou & Saad, Appl. Numer. Math.
57 (2007) (diagonal); Yao et al., "PyHessian" (2020) for per-block traces of network Hessians.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import InitVar, dataclass
from typing import Any, Literal

import numpy as np

from .._checks import InputError, check_positive_float, check_positive_int, check_seed
from .._progress import progress
from ._probes import Distribution, apply, as_operator, draw_probes, host_dtype, split_by_space

__all__ = ["BlockTrace", "LayerwiseTrace", "layerwise_trace"]

Stopped = Literal["tolerance", "matvecs", "time"]


@dataclass(frozen=True)
class BlockTrace:
    """The trace of one diagonal block ``A[b, b]`` (a layer), estimated from the shared probes.

    Attributes:
        name: the block's name (a layer name for parameter-space operators).
        num_parameters: size of the block.
        value: estimate of ``tr(A_bb)``.
        std_error: its standard error (NaN from fewer than two probes).
    """

    name: str
    num_parameters: int
    value: float
    std_error: float

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "num_parameters": self.num_parameters, "value": self.value,
                "std_error": None if np.isnan(self.std_error) else self.std_error}


@dataclass(frozen=True)
class LayerwiseTrace:
    """Trace of ``A`` with per-block traces and the diagonal, all from the same ``num_matvecs`` probes.

    Attributes:
        value: estimate of ``tr(A)``.
        std_error: its standard error.
        num_matvecs: products with the operator used (one per probe).
        stopped: what ended the run: ``"tolerance"`` (``std_error <= rel_tol * |value|``), ``"matvecs"``
            (``max_matvecs`` used first) or ``"time"`` (``time_budget`` spent first).
        rel_tol: the relative standard error asked for.
        blocks: per-block traces, in the order given.
        diagonal: ``(n,)`` estimate of ``diag(A)``.
        diagonal_std_error: ``(n,)`` its per-entry standard errors.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> i1, i2 = keras.Input((1,)), keras.Input((1,))          # f = a x1 + b x2
        >>> out = keras.layers.Add()([keras.layers.Dense(1, name="a", use_bias=False)(i1),
        ...                           keras.layers.Dense(1, name="b", use_bias=False)(i2)])
        >>> model = keras.Model([i1, i2], out)
        >>> x = [np.array([[1.0], [0.0]], "float32"), np.array([[0.0], [2.0]], "float32")]
        >>> est = tp.layerwise_trace(tp.HessianOperator(model, (x, np.zeros((2, 1), "float32")), loss="mse"))
        >>> est.value, [(b.name, b.value) for b in est.blocks], est.stopped   # H = diag(1, 4): exact samples
        (5.0, [('a', 1.0), ('b', 4.0)], 'tolerance')
    """

    value: float
    std_error: float
    num_matvecs: int
    stopped: str
    rel_tol: float
    blocks: tuple[BlockTrace, ...]
    diagonal: np.ndarray
    diagonal_std_error: np.ndarray
    space: InitVar[Any] = None  # the operator's ParameterSpace, kept out of fields() (and of JSON)

    def __post_init__(self, space: Any) -> None:
        object.__setattr__(self, "_space", space)

    @property
    def relative_error(self) -> float:
        """``std_error / |value|`` (inf for a zero estimate)."""
        return float(self.std_error / abs(self.value)) if self.value != 0 else float("inf")

    def block(self, name: str) -> BlockTrace:
        """The block called ``name``; InputError if there is none."""
        for b in self.blocks:
            if b.name == name:
                return b
        raise InputError(f"name: expected one of {', '.join(b.name for b in self.blocks)}, got {name!r}")

    def diagonal_dict(self) -> dict[str, np.ndarray]:
        """The diagonal as ``{parameter name: array}`` (needs a parameter-space operator)."""
        return split_by_space(self._space, self.diagonal, "diagonal_dict")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (without the diagonal, which can be long)."""
        return {"value": self.value, "std_error": None if np.isnan(self.std_error) else self.std_error,
                "num_matvecs": self.num_matvecs, "stopped": self.stopped, "rel_tol": self.rel_tol,
                "blocks": [b.as_dict() for b in self.blocks]}


def _block_indices(op, blocks) -> list[tuple[str, np.ndarray]]:
    """``[(name, indices)]`` for the blocks asked for (default: the layers of the operator's space)."""
    from .blocks import layer_names

    n = op.n
    if blocks is None:
        if op.space is None:
            return [("all", np.arange(n))]
        blocks = layer_names(op.space)
    if isinstance(blocks, Mapping):
        items = list(blocks.items())
    elif isinstance(blocks, Sequence) and not isinstance(blocks, str | bytes):
        items = [(b if isinstance(b, str) else f"block {i}", b) for i, b in enumerate(blocks)]
    else:
        raise TypeError(f"blocks: expected layer names, a mapping name -> indices/slice/names, got {blocks!r}")
    out = []
    for name, sel in items:
        if isinstance(sel, slice):
            idx = np.arange(n)[sel]
        elif isinstance(sel, np.ndarray) and np.issubdtype(sel.dtype, np.integer):
            idx = sel.reshape(-1)
        else:
            space = op.space
            if space is None:
                raise InputError("blocks by name need an operator with a parameter space; pass slices or indices")
            pats = [sel] if isinstance(sel, str) else list(sel)
            chosen = space.matching(pats)
            if not chosen:
                raise InputError(f"blocks: no parameter of the operator matches {sel!r}")
            idx = np.concatenate([np.arange(space.slice_of(c).start, space.slice_of(c).stop) for c in chosen])
        if idx.size == 0 or idx.min() < 0 or idx.max() >= n:
            raise InputError(f"blocks: block {name!r} expected indices in [0, {n}), got {idx.size} indices")
        out.append((str(name), np.asarray(idx, np.int64)))
    return out


def _mean_se(s1, s2, m: int):
    mean = s1 / m
    if m < 2:
        return mean, np.full_like(np.asarray(mean, np.float64), np.nan)
    var = np.maximum(s2 - m * mean ** 2, 0.0) / (m - 1)
    return mean, np.sqrt(var / m)


def layerwise_trace(op, blocks=None, *, rel_tol: float = 0.05, max_matvecs: int = 200, min_matvecs: int = 8,
                    time_budget: float | None = None, block_size: int = 8,
                    distribution: Distribution = "rademacher", seed: int = 0,
                    quiet: bool = False) -> LayerwiseTrace:
    """Hutchinson's trace of ``A`` and of each diagonal block ``A_bb``, and ``diag(A)``, from shared probes.

    Maths: samples ``z_i^T A z_i`` (whole), ``z_{i,b}^T (A z_i)_b`` (block ``b``, mean ``tr A_bb``) and
    ``z_i * (A z_i)`` (diagonal); each estimate is a sample mean with standard error ``std / sqrt(m)``. Probes
    are added ``block_size`` at a time until the whole trace's standard error is ``<= rel_tol * |trace|``
    (checked from ``min_matvecs`` probes on), or ``max_matvecs`` or ``time_budget`` is reached.

    Cost: ``m <= max_matvecs`` matvecs in all, however many blocks; ``O(n)`` floats of state.

    Args:
        op: any square operator or array (symmetry not needed).
        blocks: default every layer of the operator's parameter space (or one block ``"all"``); or a list of
            layer names / patterns, or a mapping ``name -> names, slice or integer index array``.
        rel_tol: relative standard error of the whole trace at which to stop.
        max_matvecs: at most this many products.
        min_matvecs: products before the tolerance is checked (a standard error from two or three samples is
            itself too noisy to stop on).
        time_budget: seconds; stop (after a whole block of probes) once spent. The numbers then depend on the
            machine's speed: leave it None for reproducible results.
        block_size: probes per operator call.
        distribution: ``"rademacher"`` or ``"gaussian"``.
        seed: seed of the probes (the first ``m`` probes are the same whatever ends the run).

    Reference: Hutchinson (1989); Bekas, Kokiopoulou & Saad (2007).

    Example:
        >>> import numpy as np
        >>> A = np.diag([1.0, 2.0, 3.0, 4.0])
        >>> est = layerwise_trace(A, {"first": slice(0, 2), "last": slice(2, 4)}, rel_tol=0.01)
        >>> est.value, [b.value for b in est.blocks], est.stopped   # diagonal: every sample is exact
        (10.0, [3.0, 7.0], 'tolerance')
    """
    op = as_operator(op)
    rel_tol = check_positive_float("rel_tol", rel_tol)
    max_matvecs = check_positive_int("max_matvecs", max_matvecs)
    min_matvecs = min(check_positive_int("min_matvecs", min_matvecs), max_matvecs)
    block_size = check_positive_int("block_size", block_size)
    if time_budget is not None:
        time_budget = check_positive_float("time_budget", time_budget)
    rng = np.random.default_rng(check_seed(seed))
    parts = _block_indices(op, blocks)
    n = op.n
    owner = np.full(n, -1, np.int64)  # block of each coordinate, for one bincount per probe batch
    overlap = False
    for j, (_, idx) in enumerate(parts):
        overlap = overlap or bool(np.any(owner[idx] >= 0))
        owner[idx] = j
    nb = len(parts)
    owned = owner >= 0
    every = bool(owned.all())
    own = owner if every else owner[owned]
    dt = host_dtype(op)
    tot1 = tot2 = 0.0
    blk1, blk2 = np.zeros(nb), np.zeros(nb)
    dia1, dia2 = np.zeros(n), np.zeros(n)
    m, stopped = 0, "matvecs"
    t0 = time.perf_counter()
    with progress("shared-probe trace", max_matvecs, quiet=quiet, unit="matvecs") as bar:
        while m < max_matvecs:
            k = min(block_size, max_matvecs - m)
            Z = draw_probes(n, k, distribution, rng, dtype=dt)
            ZAZ = Z * apply(op, Z, bar, block=k, dtype=dt)  # (n, k): elementwise samples
            del Z
            m += k
            s = ZAZ.sum(axis=0, dtype=np.float64)
            tot1 += float(s.sum())
            tot2 += float((s ** 2).sum())
            if overlap:
                per = np.stack([ZAZ[idx].sum(axis=0) for _, idx in parts])
            else:
                per = np.stack([np.bincount(own, ZAZ[:, c] if every else ZAZ[owned, c], minlength=nb)
                                for c in range(k)], axis=1)
            blk1 += per.sum(axis=1)
            blk2 += (per ** 2).sum(axis=1)
            dia1 += ZAZ.sum(axis=1, dtype=np.float64)
            dia2 += np.square(ZAZ).sum(axis=1, dtype=np.float64)
            if m >= min_matvecs and m >= 2:
                mean, se = _mean_se(tot1, tot2, m)
                if se <= rel_tol * abs(mean):
                    stopped = "tolerance"
                    break
            if time_budget is not None and time.perf_counter() - t0 >= time_budget and m < max_matvecs:
                stopped = "time"
                break
    value, err = _mean_se(tot1, tot2, m)
    bv, be = _mean_se(blk1, blk2, m)
    dv, de = _mean_se(dia1, dia2, m)
    out = tuple(BlockTrace(name=name, num_parameters=int(idx.size), value=float(bv[j]), std_error=float(be[j]))
                for j, (name, idx) in enumerate(parts))
    return LayerwiseTrace(value=float(value), std_error=float(err), num_matvecs=m, stopped=stopped,
                          rel_tol=rel_tol, blocks=out, diagonal=dv, diagonal_std_error=de, space=op.space)
