"""Per-token scores of a token model: integrated gradients at the embedding, with the token strings.

    s_it = Σ_d (h_itd − h'_itd) · ∫₀¹ ∂f/∂h_itd (h' + α (h − h')) dα,   Σ_t s_it ≈ f(x_i) − f(x'_i)

where ``h`` is the embedding output of the token ids ``x`` and ``h'`` that of the baseline ids (0, usually the
padding token). What a report draws as coloured text: one score per token, red raising the explained output,
blue lowering it. Reference: Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks", ICML 2017.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._backend import keras
from .._checks import InputError
from .base import TargetSpec
from .integrated_gradients import IntegratedGradients

__all__ = ["TokenAttributions", "token_attributions"]


@dataclass(frozen=True)
class TokenAttributions:
    """Scores per token.

    Attributes:
        ids: ``(B, T)`` token ids.
        tokens: ``(B, T)`` token strings (``str(id)`` without a vocabulary).
        scores: ``(B, T)`` integrated gradients at the layer, summed over its feature axis.
        targets: ``(B,)`` output index explained per example.
        delta: ``(B,)`` completeness error ``Σ_t s_t − (f(x) − f(x'))`` (float64).
        layer: the layer attributed at.

    Example:
        >>> import numpy as np, keras, tfpartials as tp
        >>> ids = keras.Input((3,), dtype="int32")
        >>> h = keras.layers.Embedding(4, 2, name="emb")(ids)
        >>> model = keras.Model(ids, keras.layers.Dense(1)(keras.layers.Flatten()(h)))
        >>> x = np.array([[1, 2, 3]])
        >>> t = tp.token_attributions(model, x, vocab=["<pad>", "a", "b", "c"])
        >>> t.tokens.tolist(), t.layer, t.targets.tolist()
        ([['a', 'b', 'c']], 'emb', [0])
        >>> gap = float(model(x)[0, 0] - model(np.zeros((1, 3), "int32"))[0, 0])   # f(x) - f(baseline)
        >>> bool(np.isclose(t.scores.sum(), gap, atol=1e-5))                        # completeness
        True
    """

    ids: np.ndarray
    tokens: np.ndarray
    scores: np.ndarray
    targets: np.ndarray
    delta: np.ndarray
    layer: str


def token_attributions(model, x, vocab: Sequence[str] | None = None, *, layer: str | None = None,
                       target: TargetSpec = None, steps: int = 32, baseline: int | np.ndarray = 0,
                       max_memory: str | int | None = None) -> TokenAttributions:
    """Per-token integrated-gradients scores of a model over token ids, at its embedding (or ``layer``).

    Cost: ``steps`` forward and backward passes of the model after the layer per example.

    Args:
        model: a Keras model whose one input is integer token ids ``(B, T)``.
        x: token ids ``(B, T)``.
        vocab: token strings, ``vocab[i]`` for id ``i`` (None: the ids as strings).
        layer: the layer to attribute at (default: the model's first Embedding layer).
        target: what to explain (default: the predicted class); see :class:`AttributionMethod`.
        steps: quadrature steps (Gauss–Legendre).
        baseline: baseline token id(s), default 0 (padding).
        max_memory: working-memory budget.

    Example:
        >>> import numpy as np, keras
        >>> ids = keras.Input((3,), dtype="int32")
        >>> h = keras.layers.Embedding(4, 2, name="emb")(ids)
        >>> model = keras.Model(ids, keras.layers.Dense(1)(keras.layers.Flatten()(h)))
        >>> t = token_attributions(model, np.array([[1, 2, 3]]), vocab=["<pad>", "a", "b", "c"])
        >>> t.tokens.tolist(), t.scores.shape, bool(abs(t.delta[0]) < 1e-5)   # linear after the embedding: exact
        ([['a', 'b', 'c']], (1, 3), True)
    """
    if layer is None:
        layer = next((la.name for la in getattr(model, "layers", []) if isinstance(la, keras.layers.Embedding)),
                     None)
        if layer is None:
            raise InputError("layer: the model has no Embedding layer; pass layer= the layer whose output holds "
                             "one vector per token")
    ig = IntegratedGradients(model, baseline=baseline, steps=steps, rule="gauss_legendre", layer=layer,
                             max_memory=max_memory)
    job = ig.begin(x, target)
    ids = ig.check_inputs(x)
    if ids.ndim != 2 or np.issubdtype(ids.dtype, np.floating):
        raise InputError(f"x: expected integer token ids of shape (B, T), got {ids.dtype} of shape {ids.shape}")
    raw = ig._attribute(job.z, job.target, job.state)
    scores = ig.finish(raw)
    if scores.shape != ids.shape:
        raise InputError(f"layer {layer!r}: expected one vector per token (output (B, T, D)), got scores of shape "
                         f"{scores.shape}")
    if vocab is None:
        tokens = ids.astype(str)
    else:
        vocab = list(vocab)
        bad = (ids < 0) | (ids >= len(vocab))
        if np.any(bad):
            raise InputError(f"vocab: token id {int(ids[bad][0])} is outside the vocabulary of {len(vocab)} tokens")
        tokens = np.asarray(vocab, dtype=str)[ids]
    delta = ig.completeness_delta(job.z, raw, job.target, job.state)
    targets = job.target.index if job.target.index is not None else np.full(len(ids), -1, np.int32)
    return TokenAttributions(ids, tokens, scores, targets, delta, layer)
