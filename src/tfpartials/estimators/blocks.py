"""Per-layer curvature: diagonal blocks of a parameter-space operator, and estimators run block by block.

``restrict(H, "dense_1")`` is the operator ``H[S, S]`` of the chosen variables ``S``: a vector of the block is
embedded into the full parameter vector (zeros elsewhere), multiplied, and the block's rows are kept. Any
estimator then gives that layer's sharpness, trace or density, so a user can see which layer is sharp.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .._backend import tf
from .._checks import InputError
from ..linalg.operator import LinearOperator
from ._probes import as_operator

__all__ = ["RestrictedOperator", "restrict", "per_layer", "layer_names"]


class RestrictedOperator(LinearOperator):
    """The principal block ``A[idx, idx]`` of an operator, itself an operator (symmetric/psd if A is).

    Cost: one matvec of the parent per matvec of the block.
    """

    def __init__(self, parent: LinearOperator, indices: np.ndarray, space=None):
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        super().__init__(idx.shape[0], parent.dtype, symmetric=parent.symmetric, psd=parent.psd, space=space)
        self.parent = parent
        self.indices = idx
        self._idx = tf.constant(idx[:, None])

    def _matmat(self, V):
        shape = tf.stack([tf.constant(self.parent.n, tf.int64), tf.shape(V, out_type=tf.int64)[1]])
        full = tf.scatter_nd(self._idx, V, shape)
        return tf.gather_nd(self.parent.matmat(full), self._idx)


def layer_names(space) -> list[str]:
    """Layer names of a ParameterSpace in order: each variable name without its last component."""
    out: list[str] = []
    for name in space.names:
        layer = name.rsplit("/", 1)[0] if "/" in name else name
        if layer not in out:
            out.append(layer)
    return out


def restrict(op, names: str | Sequence[str] | slice | np.ndarray) -> RestrictedOperator:
    """The diagonal block of ``op`` for some variables (names, globs or layer names) or indices.

    Args:
        op: an operator; with a parameter space (HessianOperator, GGNOperator, ...) ``names`` may be variable
            names, glob patterns or layer names, and the block gets its own space (so ``eigenvector_dict`` and
            ``as_dict`` work on it). Any operator accepts a slice or an integer index array.
        names: what to keep.

    Example:
        >>> import numpy as np
        >>> B = restrict(np.diag([1.0, 2.0, 3.0]), slice(1, 3))
        >>> B.to_dense().numpy().tolist()
        [[2.0, 0.0], [0.0, 3.0]]
    """
    op = as_operator(op)
    if isinstance(names, slice):
        return RestrictedOperator(op, np.arange(op.n)[names])
    if isinstance(names, np.ndarray) and np.issubdtype(names.dtype, np.integer):
        idx = names.reshape(-1)
        if idx.size == 0 or idx.min() < -op.n or idx.max() >= op.n or len(np.unique(idx % op.n)) != idx.size:
            raise InputError(f"indices: expected distinct integers in [0, {op.n}), got {idx.size} indices")
        return RestrictedOperator(op, idx % op.n)
    patterns = [names] if isinstance(names, str) else list(names)
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"names: expected variable names or patterns (str), a slice or an index array, got {names!r}")
    space = op.space
    if space is None:
        raise InputError("restrict by name needs an operator with a parameter space; pass a slice or indices")
    chosen = space.matching(patterns)
    for p in patterns:
        if not space.matching([p]):
            raise InputError(f"no parameter of the operator matches {p!r}; available: {', '.join(space.names)}")
    idx = np.concatenate([np.arange(space.slice_of(n).start, space.slice_of(n).stop) for n in chosen])
    return RestrictedOperator(op, idx, space=_subspace(space, chosen))


def _subspace(space, chosen: list[str]):
    """A ParameterSpace of the same model for the chosen names (same order), or None if one cannot be made."""
    from ..params import ParameterSpace

    model = getattr(space, "model", None)
    if model is None:
        return None
    try:
        sub = ParameterSpace(model, wrt=list(chosen))
    except (InputError, TypeError):  # pragma: no cover - names that are not patterns of themselves
        return None
    return sub if sub.names == list(chosen) else None


def per_layer(estimator: Callable[..., Any], source, names: Sequence[str] | None = None, **kwargs) -> dict[str, Any]:
    """Run ``estimator`` on the block of each layer (or each name): ``{name: result}``.

    Args:
        estimator: any estimator of this package, e.g. ``top_eigenvalues`` or ``hutchpp_trace``.
        source: a parameter-space operator (its blocks are taken with :func:`restrict`), or a callable
            ``make_operator(name)`` returning the operator of one layer (e.g.
            ``lambda n: HessianOperator(model, data, wrt=n)``).
        names: layers, variables or patterns; default every layer of the operator's space.
        **kwargs: passed to ``estimator``.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> model = keras.Sequential([keras.Input((1,)),               # f = b a x, a = 1, b = 2
        ...     keras.layers.Dense(1, name="a", use_bias=False, kernel_initializer="ones"),
        ...     keras.layers.Dense(1, name="b", use_bias=False, kernel_initializer=keras.initializers.Constant(2.0))])
        >>> x = np.array([[1.0], [2.0]], "float32"); y = np.zeros((2, 1), "float32")
        >>> H = tp.HessianOperator(model, (x, y), loss="mse")
        >>> traces = tp.per_layer(tp.hutchinson_trace, H, num_matvecs=2)
        >>> {name: t.value for name, t in traces.items()}          # 2 b^2 mean(x^2), 2 a^2 mean(x^2)
        {'a': 20.0, 'b': 5.0}
    """
    if isinstance(source, LinearOperator):
        if names is None:
            if source.space is None:
                raise InputError("per_layer needs names (slices) for an operator without a parameter space")
            names = layer_names(source.space)
        return {str(n): estimator(restrict(source, n), **kwargs) for n in names}
    if callable(source):
        if names is None:
            raise InputError("per_layer with a make_operator callable needs names")
        return {str(n): estimator(source(n), **kwargs) for n in names}
    raise TypeError(f"source: expected an operator or a make_operator(name) callable, got {type(source).__name__}")
