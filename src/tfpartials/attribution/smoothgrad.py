"""SmoothGrad: any attribution method averaged over Gaussian perturbations of the input.

    A(x) = (1/n) Σ_{s=1..n} A_inner(x + ε_s),   ε_s ~ N(0, σ² I),   σ = noise_std · (max x − min x)

The target is resolved once on the clean input (the predicted class of ``x``, not of each noisy copy), and
method state such as an integrated-gradients baseline is computed from the clean input too. Reference:
Smilkov, Thorat, Kim, Viégas & Wattenberg, "SmoothGrad: removing noise by adding noise", arXiv:1706.03825
(2017).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._checks import check_positive_float, check_positive_int, check_seed
from .._memory import plan_chunks
from .base import _MAX_CHUNK, AttributionMethod, Target, TargetSpec

__all__ = ["SmoothGrad"]


class SmoothGrad(AttributionMethod):
    """The mean of ``method``'s attributions over ``num_samples`` noisy copies of the input.

    The noise scale is relative to each example's value range: ``σ_i = noise_std · (max x_i − min x_i)``
    (``σ_i = noise_std`` for a constant example), so ``noise_std=0.1`` is 10% of the range of the input as the
    paper recommends, whatever the units. ``noise_std=0`` returns the inner method's attributions exactly.

    Cost: ``num_samples`` times the inner method's cost. Noisy copies are drawn from
    ``numpy.random.default_rng(seed)`` one sample after the other, so the same seed gives the same result.

    Args:
        method: any attribution method (:class:`Saliency`, :class:`GradientXInput`,
            :class:`IntegratedGradients`, ...).
        num_samples: noisy copies averaged, >= 1.
        noise_std: noise standard deviation as a fraction of the input range, >= 0.
        seed: seed of the noise.

    Example:
        >>> import numpy as np, keras
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="tanh")])
        >>> from tfpartials.attribution import Saliency
        >>> sg = SmoothGrad(Saliency(model), num_samples=8, noise_std=0.1, seed=0)
        >>> sg.attribute(np.ones((4, 3), "float32"), target=1).shape
        (4, 3)
    """

    name = "smoothgrad"

    def __init__(self, method: AttributionMethod, num_samples: int = 32, noise_std: float = 0.1, seed: int = 0):
        if not isinstance(method, AttributionMethod):
            raise TypeError(f"method: expected an attribution method such as Saliency(model), got "
                            f"{type(method).__name__}")
        self.inner = method
        self.num_samples = check_positive_int("num_samples", num_samples)
        self.noise_std = check_positive_float("noise_std", noise_std, allow_zero=True)
        self.seed = check_seed(seed)
        self.model = method.model
        self.signature = method.signature
        self.dtype = method.dtype
        self.budget = method.budget
        self.trace_counts = method.trace_counts

    # inputs and targets are the inner method's
    def check_inputs(self, x) -> np.ndarray:
        return self.inner.check_inputs(x)

    def resolve_target(self, x: np.ndarray, target: TargetSpec) -> Target:
        return self.inner.resolve_target(x, target)

    def _prepare(self, x: np.ndarray) -> Any:
        return self.inner._prepare(x)

    def _tile_state(self, state: Any, copies: int) -> Any:
        return self.inner._tile_state(state, copies)

    def noise_scale(self, x: np.ndarray) -> np.ndarray:
        """``σ_i`` per example, shape ``(B,)``."""
        flat = x.reshape(len(x), -1)
        span = flat.max(axis=1).astype(np.float64) - flat.min(axis=1)
        return self.noise_std * np.where(span > 0, span, 1.0)

    def _attribute(self, x: np.ndarray, target: Target, state: Any) -> np.ndarray:
        n = len(x)
        sigma = self.noise_scale(x).reshape((n,) + (1,) * (x.ndim - 1))
        rng = np.random.default_rng(self.seed)
        # several noisy copies go through the inner method as one stacked batch when they fit
        copies = plan_chunks(self.num_samples, 4 * x[0].nbytes * n, budget=self.budget,
                             what=f"smoothgrad ({n} examples)",
                             max_chunk=max(1, _MAX_CHUNK // n)).chunk
        total = np.zeros(x.shape, np.float64)
        for start in range(0, self.num_samples, copies):
            k = min(copies, self.num_samples - start)
            noisy = np.concatenate([x + (rng.standard_normal(x.shape) * sigma).astype(x.dtype)
                                    for _ in range(k)])
            tiled = Target(target.output, None if target.index is None else np.tile(target.index, k), target.fn)
            attr = self.inner._attribute(noisy, tiled, self._tile_state(state, k))
            total += attr.reshape((k, *x.shape)).sum(axis=0, dtype=np.float64)
        return (total / self.num_samples).astype(x.dtype)

    def __repr__(self) -> str:
        return (f"SmoothGrad({self.inner!r}, num_samples={self.num_samples}, noise_std={self.noise_std}, "
                f"seed={self.seed})")
