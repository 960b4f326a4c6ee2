"""SmoothGrad: any attribution method averaged over Gaussian perturbations of what it attributes.

    A(x) = (1/n) Σ_{s=1..n} A_inner(x + ε_s),   ε_s ~ N(0, σ² I),   σ = noise_std · (max x − min x)

A wrapper, not a subclass (like captum's NoiseTunnel): it takes any method and perturbs the array that method
attributes, the input or, for a method built with ``layer=``, the layer's activations (token ids cannot be
perturbed). The target is resolved once on the clean input (the predicted class of ``x``, not of each noisy
copy), and method state such as an integrated-gradients baseline is computed from the clean input too.
Reference: Smilkov, Thorat, Kim, Viégas & Wattenberg, "SmoothGrad: removing noise by adding noise",
arXiv:1706.03825 (2017).
"""

from __future__ import annotations

import numpy as np

from .._checks import check_positive_float, check_positive_int, check_seed
from .._memory import plan_chunks
from .base import _MAX_CHUNK, AttributionMethod, TargetSpec

__all__ = ["SmoothGrad"]


class SmoothGrad:
    """The mean of ``method``'s attributions over ``num_samples`` noisy copies of the input.

    The noise scale is relative to each example's value range: ``σ_i = noise_std · (max x_i − min x_i)``
    (``σ_i = noise_std`` for a constant example), so ``noise_std=0.1`` is 10% of the range of the input as the
    paper recommends, whatever the units. ``noise_std=0`` returns the inner method's attributions exactly. For
    a method attributing at a layer, ``x`` here is the layer's activations.

    Cost: ``num_samples`` times the inner method's cost. Noisy copies are drawn from
    ``numpy.random.default_rng(seed)`` one sample after the other, so the same seed gives the same result.

    Args:
        method: any attribution method (:class:`Saliency`, :class:`GradientXInput`,
            :class:`IntegratedGradients`, ..., with or without ``layer=``).
        num_samples: noisy copies averaged, >= 1.
        noise_std: noise standard deviation as a fraction of the input range, >= 0.
        seed: seed of the noise.

    Example:
        >>> import numpy as np, keras
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        >>> from tfpartials.attribution import Saliency
        >>> w = model.layers[0].kernel.numpy()[:, 0]
        >>> sg = SmoothGrad(Saliency(model), num_samples=8, noise_std=0.1, seed=0)
        >>> bool(np.allclose(sg.attribute(np.ones((4, 3), "float32")), w))  # linear: the noise changes nothing
        True
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

    # what the wrapped method is about
    @property
    def model(self):
        return self.inner.model

    @property
    def layer(self) -> str | None:
        return self.inner.layer

    @property
    def trace_counts(self) -> dict[str, int]:
        return self.inner.trace_counts

    def check_inputs(self, x) -> np.ndarray:
        """The inner method's input check."""
        return self.inner.check_inputs(x)

    def targets(self, x, target: TargetSpec = None) -> np.ndarray | None:
        """The flat output index explained for each example, resolved on the clean input."""
        return self.inner.targets(x, target)

    def noise_scale(self, z: np.ndarray) -> np.ndarray:
        """``σ_i`` per example, shape ``(B,)``."""
        flat = z.reshape(len(z), -1)
        span = flat.max(axis=1).astype(np.float64) - flat.min(axis=1)
        return self.noise_std * np.where(span > 0, span, 1.0)

    def attribute(self, x, target: TargetSpec = None) -> np.ndarray:
        """The inner method's attributions averaged over noisy copies (the shape the inner method returns)."""
        job = self.inner.begin(x, target)
        z = job.z
        n = len(z)
        sigma = self.noise_scale(z).reshape((n,) + (1,) * (z.ndim - 1))
        rng = np.random.default_rng(self.seed)
        # several noisy copies go through the inner method as one stacked batch when they fit
        copies = plan_chunks(self.num_samples, 4 * z[0].nbytes * n, budget=self.inner.budget,
                             what=f"smoothgrad ({n} examples)", max_chunk=max(1, _MAX_CHUNK // n)).chunk
        total = np.zeros(z.shape, np.float64)
        for start in range(0, self.num_samples, copies):
            k = min(copies, self.num_samples - start)
            noisy = np.concatenate([z + (rng.standard_normal(z.shape) * sigma).astype(z.dtype) for _ in range(k)])
            attr = self.inner._attribute(noisy, job.target.tile(k), self.inner._tile_state(job.state, k))
            total += attr.reshape((k, *z.shape)).sum(axis=0, dtype=np.float64)
        return self.inner.finish((total / self.num_samples).astype(z.dtype))

    def __repr__(self) -> str:
        return (f"SmoothGrad({self.inner!r}, num_samples={self.num_samples}, noise_std={self.noise_std}, "
                f"seed={self.seed})")
