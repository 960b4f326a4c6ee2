"""The audited models: one tiny Keras model per built-in layer (or activation), plus a transformer block.

This module imports only Keras and NumPy, so the same builders serve the TensorFlow side (the models under
test) and the JAX reference process (which loads the saved files and must find the two small custom layers
registered below). Weights are drawn from a seeded generator, never from Keras' global seed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np

L = keras.layers
BATCH = 4  # examples per audit dataset


@keras.saving.register_keras_serializable(package="tfpartials_soundness")
class ApproximateGelu(L.Layer):
    """``gelu(x, approximate=True)`` (the tanh form); Keras' string ``"gelu"`` is the exact, erf form."""

    def call(self, x):
        return keras.activations.gelu(x, approximate=True)


@keras.saving.register_keras_serializable(package="tfpartials_soundness")
class Threshold(L.Layer):
    """``threshold(x, 0.1, -0.5)``: the only Keras activation that needs arguments besides ``x``."""

    def call(self, x):
        return keras.activations.threshold(x, 0.1, -0.5)


@keras.saving.register_keras_serializable(package="tfpartials_soundness")
class Glu(L.Layer):
    """``glu`` with the right output shape: ``Activation("glu")`` claims it keeps the last dimension, so a
    saved model that uses it cannot be loaded again (the next layer is rebuilt for twice the width)."""

    def call(self, x):
        return keras.activations.glu(x)

    def compute_output_shape(self, shape):
        return (*shape[:-1], shape[-1] // 2)


@dataclass(frozen=True)
class Case:
    """One audited model: ``key`` names it in the matrix, ``layer`` is what the table shows."""

    key: str
    layer: str
    build: Callable[[], keras.Model]
    input_shape: tuple[int, ...]
    vocab: int | None = None          # token ids in [0, vocab) instead of float inputs
    loss: str = "mse"                 # "mse" or "sparse_categorical_crossentropy" (from logits)
    training: bool = False            # the parameter-space quantities run with training=True
    tags: frozenset = field(default_factory=frozenset)
    note: str = ""
    branches: tuple[str, ...] = ()   # independent branches, one output component and layer pair each

    @property
    def float_input(self) -> bool:
        return self.vocab is None and not self.training


def _seq(input_shape, *layers, dtype=None):
    inp = keras.Input(input_shape, dtype=dtype)
    h = inp
    for layer in layers:
        h = layer(h)
    return keras.Model(inp, h)


def _head(*layers, flatten=False):
    return [*layers, *( [L.Flatten()] if flatten else []), L.Dense(2, name="head")]


def dense_then(make_layers, d_in=3, hidden=4):
    """Builder of Input(d_in) -> Dense(hidden) -> make_layers() -> Dense(2); new layers on every call."""
    def build():
        extra = make_layers()
        extra = extra if isinstance(extra, list) else [extra]
        return _seq((d_in,), L.Dense(hidden, name="pre"), *extra, L.Dense(2, name="head"))
    return build


def _mha_model():
    inp = keras.Input((4, 3))
    h = L.MultiHeadAttention(num_heads=2, key_dim=2, name="mha")(inp, inp, use_causal_mask=True)
    h = L.GlobalAveragePooling1D()(h)
    return keras.Model(inp, L.Dense(2, name="head")(h))


def _gqa_model():
    inp = keras.Input((4, 3))
    h = L.GroupQueryAttention(head_dim=2, num_query_heads=2, num_key_value_heads=1, name="gqa")(
        inp, inp, use_causal_mask=True)
    h = L.GlobalAveragePooling1D()(h)
    return keras.Model(inp, L.Dense(2, name="head")(h))


def _attention_model(layer):
    def build():
        inp = keras.Input((4, 3))
        q = L.Dense(3, name="query")(inp)
        h = layer()([q, inp])
        h = L.GlobalAveragePooling1D()(h)
        return keras.Model(inp, L.Dense(2, name="head")(h))
    return build


def _transformer(vocab=11, seq=6, dim=4):
    """Embedding -> MultiHeadAttention -> LayerNormalization -> GELU feed-forward -> LayerNormalization ->
    pooling -> Dense, with residual connections (226 parameters)."""
    tokens = keras.Input((seq,), dtype="int32")
    e = L.Embedding(vocab, dim, name="embedding")(tokens)
    a = L.MultiHeadAttention(num_heads=2, key_dim=2, name="attention")(e, e)
    h = L.LayerNormalization(name="norm_1")(L.Add()([e, a]))
    f = L.Dense(8, activation="gelu", name="ff_1")(h)
    f = L.Dense(dim, name="ff_2")(f)
    h = L.LayerNormalization(name="norm_2")(L.Add()([h, f]))
    h = L.GlobalAveragePooling1D()(h)
    return keras.Model(tokens, L.Dense(3, name="classifier")(h))


def _embedding(mask_zero):
    return lambda: _seq((5,), L.Embedding(7, 3, mask_zero=mask_zero, name="embedding"),
                        L.GlobalAveragePooling1D(), L.Dense(2, name="head"), dtype="int32")


def _rnn(layer):
    return lambda: _seq((3, 2), layer(), L.Dense(2, name="head"))


ACTIVATIONS = ("celu", "elu", "exponential", "gelu", "glu", "hard_shrink", "hard_sigmoid", "hard_silu",
               "hard_swish", "hard_tanh", "leaky_relu", "linear", "log_sigmoid", "log_softmax", "mish", "relu",
               "relu6", "selu", "sigmoid", "silu", "soft_shrink", "softmax", "softplus", "softsign", "sparse_plus",
               "sparse_sigmoid", "sparsemax", "squareplus", "swish", "tanh", "tanh_shrink")


def _cases() -> list[Case]:
    c = [
        Case("dense", "Dense", dense_then(lambda: L.Activation("tanh")), (3,)),
        Case("einsum_dense", "EinsumDense", lambda: _seq(
            (3,), L.EinsumDense("ab,bc->ac", output_shape=4, bias_axes="c", activation="tanh", name="einsum"),
            L.Dense(2, name="head")), (3,)),
        Case("conv1d", "Conv1D", lambda: _seq((6, 2), L.Conv1D(3, 3, activation="tanh", name="conv"),
                                              *_head(flatten=True)), (6, 2)),
        Case("conv2d", "Conv2D", lambda: _seq((5, 5, 1), L.Conv2D(2, 3, activation="tanh", name="conv"),
                                              *_head(flatten=True)), (5, 5, 1)),
        Case("conv3d", "Conv3D", lambda: _seq((3, 3, 3, 1), L.Conv3D(2, 2, activation="tanh", name="conv"),
                                              *_head(flatten=True)), (3, 3, 3, 1)),
        Case("depthwise_conv1d", "DepthwiseConv1D", lambda: _seq(
            (6, 2), L.DepthwiseConv1D(3, depth_multiplier=2, activation="tanh", name="conv"),
            *_head(flatten=True)), (6, 2)),
        Case("depthwise_conv2d", "DepthwiseConv2D", lambda: _seq(
            (4, 4, 2), L.DepthwiseConv2D(3, activation="tanh", name="conv"), *_head(flatten=True)), (4, 4, 2)),
        Case("separable_conv1d", "SeparableConv1D", lambda: _seq(
            (6, 2), L.SeparableConv1D(3, 3, activation="tanh", name="conv"), *_head(flatten=True)), (6, 2)),
        Case("separable_conv2d", "SeparableConv2D", lambda: _seq(
            (4, 4, 2), L.SeparableConv2D(2, 3, activation="tanh", name="conv"), *_head(flatten=True)),
            (4, 4, 2)),
        Case("conv2d_transpose", "Conv2DTranspose", lambda: _seq(
            (3, 3, 1), L.Conv2DTranspose(2, 2, activation="tanh", name="conv"), *_head(flatten=True)),
            (3, 3, 1)),
        Case("embedding", "Embedding", _embedding(False), (5,), vocab=7),
        Case("embedding_mask_zero", "Embedding (mask_zero=True)", _embedding(True), (5,), vocab=7),
        Case("simple_rnn", "SimpleRNN", _rnn(lambda: L.SimpleRNN(3, name="rnn")), (3, 2)),
        Case("gru", "GRU", _rnn(lambda: L.GRU(3, name="rnn")), (3, 2)),
        Case("lstm", "LSTM", _rnn(lambda: L.LSTM(3, name="rnn")), (3, 2)),
        Case("bidirectional", "Bidirectional(LSTM)", _rnn(lambda: L.Bidirectional(L.LSTM(2), name="bi")), (3, 2)),
        Case("conv_lstm2d", "ConvLSTM2D", lambda: _seq(
            (2, 4, 4, 1), L.ConvLSTM2D(1, 2, name="convlstm"), *_head(flatten=True)), (2, 4, 4, 1)),
        Case("multi_head_attention", "MultiHeadAttention (causal mask)", _mha_model, (4, 3),
             tags=frozenset({"attention"})),
        Case("grouped_query_attention", "GroupQueryAttention (causal mask)", _gqa_model, (4, 3),
             tags=frozenset({"attention"})),
        Case("attention", "Attention (use_scale)", _attention_model(lambda: L.Attention(use_scale=True)),
             (4, 3), tags=frozenset({"attention"})),
        Case("additive_attention", "AdditiveAttention", _attention_model(lambda: L.AdditiveAttention()),
             (4, 3), tags=frozenset({"attention"})),
        Case("batch_norm", "BatchNormalization (inference)",
             dense_then(lambda: [L.BatchNormalization(name="bn"), L.Activation("tanh")]), (3,)),
        Case("batch_norm_training", "BatchNormalization (training=True)",
             dense_then(lambda: [L.BatchNormalization(name="bn"), L.Activation("tanh")]), (3,), training=True,
             note="batch statistics: the examples of a batch are coupled, so per-example and input "
                  "derivatives are not defined"),
        Case("layer_norm", "LayerNormalization",
             dense_then(lambda: [L.LayerNormalization(name="ln"), L.Activation("tanh")]), (3,)),
        Case("layer_norm_rms", "LayerNormalization (rms_scaling=True)",
             dense_then(lambda: [L.LayerNormalization(rms_scaling=True, name="ln"), L.Activation("tanh")]), (3,)),
        Case("rms_norm", "RMSNormalization",
             dense_then(lambda: [L.RMSNormalization(name="rms"), L.Activation("tanh")]), (3,)),
        Case("group_norm", "GroupNormalization",
             dense_then(lambda: [L.GroupNormalization(groups=2, name="gn"), L.Activation("tanh")]), (3,)),
        Case("unit_norm", "UnitNormalization", dense_then(lambda: L.UnitNormalization(name="un")), (3,)),
        Case("dropout", "Dropout (inference)", dense_then(lambda: [L.Activation("tanh"), L.Dropout(0.3)]), (3,)),
        Case("spatial_dropout", "SpatialDropout1D (inference)", lambda: _seq(
            (6, 2), L.Conv1D(3, 3, activation="tanh", name="conv"), L.SpatialDropout1D(0.3),
            *_head(flatten=True)), (6, 2)),
        Case("max_pooling1d", "MaxPooling1D", lambda: _seq(
            (6, 2), L.Conv1D(2, 2, activation="tanh", name="conv"), L.MaxPooling1D(2), *_head(flatten=True)),
            (6, 2)),
        Case("average_pooling2d", "AveragePooling2D", lambda: _seq(
            (5, 5, 1), L.Conv2D(2, 2, activation="tanh", name="conv"), L.AveragePooling2D(2),
            *_head(flatten=True)), (5, 5, 1)),
        Case("max_pooling2d", "MaxPooling2D", lambda: _seq(
            (5, 5, 1), L.Conv2D(2, 2, activation="tanh", name="conv"), L.MaxPooling2D(2),
            *_head(flatten=True)), (5, 5, 1)),
        Case("global_pooling", "GlobalMaxPooling1D + GlobalAveragePooling2D", _global_pooling, (4, 3)),
        Case("prelu", "PReLU", dense_then(lambda: L.PReLU(name="prelu")), (3,)),
        Case("transformer", "Transformer block (Embedding, MHA, LayerNorm, GELU MLP, pooling, Dense)",
             _transformer, (6,), vocab=11, loss="sparse_categorical_crossentropy",
             tags=frozenset({"attention"})),
    ]
    c.append(Case("activations", "every Keras activation (one branch each)", _activations, (2,),
                  branches=BRANCHES, note="one model with a separate Dense -> activation -> Dense branch per "
                  "activation, outputs concatenated: every branch has its own parameter blocks and output "
                  "component, so each activation is checked on its own"))
    return c


BRANCHES = (*ACTIVATIONS, "gelu_approximate", "threshold")


def _activation_layer(name: str):
    if name == "gelu_approximate":
        return ApproximateGelu(name=f"act_{name}")
    if name == "threshold":
        return Threshold(name=f"act_{name}")
    if name == "glu":
        return Glu(name=f"act_{name}")
    return L.Activation(name, name=f"act_{name}")


def _activations():
    """Input(2) -> [Dense(2) -> activation -> Dense(1)] per activation, concatenated (9 parameters each)."""
    inp = keras.Input((2,))
    heads = [L.Dense(1, name=f"head_{a}")(_activation_layer(a)(L.Dense(2, name=f"pre_{a}")(inp)))
             for a in BRANCHES]
    return keras.Model(inp, L.Concatenate()(heads))


def branch_of(name: str) -> str | None:
    """The branch a parameter name belongs to (``pre_<a>/...`` or ``head_<a>/...``)."""
    layer = name.split("/")[0]
    for prefix in ("pre_", "head_"):
        if layer.startswith(prefix):
            return layer[len(prefix):]
    return None


def _global_pooling():
    inp = keras.Input((4, 3))
    h = L.Conv1D(2, 2, activation="tanh", name="conv")(inp)          # (3, 2)
    a = L.GlobalMaxPooling1D()(h)
    b = L.GlobalAveragePooling2D()(L.Reshape((3, 2, 1))(h))
    return keras.Model(inp, L.Dense(2, name="head")(L.Concatenate()([a, b])))


def _selected(cases: list[Case]) -> dict[str, Case]:
    """Every case, or those named in ``TFPARTIALS_AUDIT_ONLY`` (comma-separated keys; for local work)."""
    only = [k.strip() for k in os.environ.get("TFPARTIALS_AUDIT_ONLY", "").split(",") if k.strip()]
    return {c.key: c for c in cases if not only or c.key in only}


CASES: dict[str, Case] = _selected(_cases())


def _draw(var, rng) -> np.ndarray:
    name = var.path.split("/")[-1]
    shape = tuple(var.shape)
    if name in ("gamma", "scale") or name.endswith("_scale"):
        value = 1.0 + 0.3 * rng.normal(size=shape)
    elif name == "moving_variance":
        value = rng.uniform(0.5, 1.5, size=shape)
    elif name == "moving_mean":
        value = 0.3 * rng.normal(size=shape)
    elif name in ("alpha",):
        value = rng.uniform(0.1, 0.4, size=shape)
    else:
        value = 0.6 * rng.normal(size=shape)
    return value


def make(case: Case, seed: int = 0):
    """``(model, x, y)`` for ``case``: weights and data drawn from ``seed`` (float32 model)."""
    rng = np.random.default_rng([seed, sum(map(ord, case.key))])
    model = case.build()
    for var in model.weights:
        if "float" in str(var.dtype):
            var.assign(_draw(var, rng).astype(str(var.dtype)))
    if case.vocab is not None:
        x = rng.integers(0, case.vocab, size=(BATCH, *case.input_shape)).astype("int32")
        x[:, -1] = 0  # padding at the end: exercises mask_zero
    else:
        x = rng.normal(size=(BATCH, *case.input_shape)).astype("float32")
    out = model.output_shape[-1]
    if case.loss == "mse":
        y = rng.normal(size=(BATCH, out)).astype("float32")
    else:
        y = rng.integers(0, out, size=(BATCH,)).astype("int32")
    return model, x, y
