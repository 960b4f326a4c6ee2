"""The audit's reference: the saved ``.keras`` files differentiated by JAX, in float64, with no TensorFlow.

Run as ``KERAS_BACKEND=jax python -m tests.soundness.jax_reference MANIFEST.json OUTDIR`` (the audit's
session fixture starts it once; it writes ``OUTDIR/<model>.npz`` model after model, so the TensorFlow
side runs alongside). For every model in the manifest it loads the file, rebuilds it with every
floating dtype set to float64 (weights cast), and differentiates ``model.stateless_call`` with JAX:

* ``grad``      ``jax.grad`` of L(theta) = (1/N) sum_i loss_i (inference mode unless the case trains)
* ``hvp``       ``jax.jvp`` of ``jax.grad`` (forward over reverse) along the manifest's vector v
* ``hessian``   ``jax.hessian`` (small models only)
* ``ggn``       J^T H_out J v by ``jax.jvp`` / output-space HVP / ``jax.vjp``
* ``per_example``  ``jax.vmap(jax.grad)`` over single examples
* ``input_jacobian``, ``input_hessian``, ``laplacian``: ``jax.jacrev`` / ``jax.hessian`` of the outputs with
  respect to the whole input batch, keeping the per-example diagonal blocks
* ``fd_*``      float64 central differences of L along the manifest's vectors (a second opinion)

Flat parameter vectors follow ``model.trainable_variables`` order (C order within each); the variable paths
are checked against the manifest's so both sides name the same parameter at the same offset.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras.src.backend.common import dtypes as _keras_dtypes  # noqa: E402
from keras.src.backend.jax import nn as _keras_jax_nn  # noqa: E402

# Keras' type promotion on non-TensorFlow backends demotes float64 to float32 (keras.ops.tanh of a float64
# array is float32), which would put float32 round-off into the reference; keep float64 as float64.
_keras_dtypes.BIT64_TO_BIT32_DTYPE["float64"] = "float64"


def _dot_product_attention(query, key, value, bias=None, mask=None, scale=None, is_causal=False,
                           flash_attention=None, attn_logits_soft_cap=None):
    """softmax(q k^T * scale + bias, masked) v on (batch, time, heads, depth) arrays, in the inputs' dtype.

    Replaces Keras' JAX ``dot_product_attention``, which always takes the softmax in float32 and would
    limit the float64 reference to float32 round-off. Keys/values with fewer heads are repeated (GQA).
    """
    if attn_logits_soft_cap is not None:
        raise NotImplementedError("attn_logits_soft_cap")
    if key.shape[2] != query.shape[2]:
        key = jnp.repeat(key, query.shape[2] // key.shape[2], axis=2)
        value = jnp.repeat(value, query.shape[2] // value.shape[2], axis=2)
    scale = 1.0 / np.sqrt(query.shape[-1]) if scale is None else scale
    logits = jnp.einsum("BTNH,BSNH->BNTS", query, key) * jnp.asarray(scale, dtype=query.dtype)
    if bias is not None:
        logits = logits + bias
    big_negative = jnp.asarray(-0.7 * np.finfo(np.dtype(logits.dtype)).max, logits.dtype)
    if mask is not None:
        logits = jnp.where(mask, logits, big_negative)
    if is_causal:
        t, s_len = logits.shape[-2:]
        logits = jnp.where(jnp.tril(jnp.ones((t, s_len), bool)), logits, big_negative)
    return jnp.einsum("BNTS,BSNH->BTNH", jax.nn.softmax(logits, axis=-1), value)


_keras_jax_nn.dot_product_attention = _dot_product_attention

from tests.soundness import catalogue  # noqa: E402,F401  (registers the custom activation layers)


def _to_float64(cfg):
    """Every floating ``dtype`` entry of a serialised Keras config set to float64 (integer ones kept)."""
    if isinstance(cfg, dict):
        out = {}
        for k, v in cfg.items():
            if k == "dtype" and isinstance(v, str) and v.startswith(("float", "mixed")):
                out[k] = "float64"
            elif k == "dtype" and isinstance(v, dict) and "float" in str((v.get("config") or {}).get("name", "")):
                out[k] = "float64"
            else:
                out[k] = _to_float64(v)
        return out
    if isinstance(cfg, list):
        return [_to_float64(v) for v in cfg]
    return cfg


def float64_model(path: str):
    model = keras.saving.load_model(path, compile=False)
    config = _to_float64(keras.saving.serialize_keras_object(model))
    copy = keras.saving.deserialize_keras_object(config)
    if [v.path for v in copy.weights] != [v.path for v in model.weights]:
        raise RuntimeError(f"{path}: the float64 rebuild has different variables")
    for src, dst in zip(model.weights, copy.weights):
        value = np.asarray(src.numpy())
        dst.assign(value.astype("float64") if np.issubdtype(value.dtype, np.floating) else value)
    if any("float32" in str(v.dtype) for v in copy.weights):
        raise RuntimeError(f"{path}: a variable stayed float32 in the float64 rebuild")
    return model, copy


def per_example_loss(kind: str, out, y):
    if kind == "mse":
        return jnp.mean((out - y) ** 2, axis=-1)
    logp = jax.nn.log_softmax(out, axis=-1)
    return -jnp.take_along_axis(logp, y[:, None].astype("int32"), axis=-1)[:, 0]


def reference(entry: dict, arrays: dict) -> dict[str, np.ndarray]:
    original, model = float64_model(entry["path"])
    paths = [v.path for v in model.trainable_variables]
    if paths != entry["paths"]:
        raise RuntimeError(f"{entry['key']}: variable paths differ from TensorFlow's: {paths} vs {entry['paths']}")
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    sizes = [int(np.prod(s)) for s in shapes]
    theta0 = jnp.concatenate([jnp.ravel(jnp.asarray(v.value)) for v in model.trainable_variables])
    frozen = [jnp.asarray(v.value) for v in model.non_trainable_variables]
    training = bool(entry["training"])
    key = entry["key"]
    x = arrays[f"{key}:x"]
    x = jnp.asarray(x if np.issubdtype(x.dtype, np.integer) else x.astype("float64"))
    y = jnp.asarray(arrays[f"{key}:y"])
    y = y if np.issubdtype(y.dtype, np.integer) else y.astype("float64")
    v = jnp.asarray(arrays[f"{key}:v"])
    u = jnp.asarray(arrays[f"{key}:u"])

    def unflatten(theta):
        parts, off = [], 0
        for s, n in zip(shapes, sizes):
            parts.append(jnp.reshape(theta[off:off + n], s))
            off += n
        return parts

    def forward(theta, xb, train=training):
        out, _ = model.stateless_call(unflatten(theta), frozen, xb, training=train)
        return out

    def loss(theta):
        return jnp.mean(per_example_loss(entry["loss"], forward(theta, x), y))

    def ggn(theta, w):
        out, jv = jax.jvp(lambda t: forward(t, x), (theta,), (w,))
        out_loss = lambda o: jnp.mean(per_example_loss(entry["loss"], o, y))  # noqa: E731
        h_jv = jax.jvp(jax.grad(out_loss), (out,), (jv,))[1]
        _, pullback = jax.vjp(lambda t: forward(t, x), theta)
        return pullback(h_jv)[0]

    def one(theta, xi, yi):
        return per_example_loss(entry["loss"], forward(theta, xi[None]), yi[None])[0]

    b = x.shape[0]
    n_in = int(np.prod(x.shape[1:]))

    def outputs(xx):
        return jnp.reshape(forward(theta0, xx, False), (b, -1))

    def everything(theta):
        """Every reference quantity of this model, traced and compiled as one program."""
        res = {"grad": jax.grad(loss)(theta), "hvp": jax.jvp(jax.grad(loss), (theta,), (v,))[1],
               "ggn": ggn(theta, v)}
        if entry["dense_hessian"]:
            res["hessian"] = jax.hessian(loss)(theta)
        if not training:
            res["per_example"] = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(theta, x, y)
        if entry["float_input"]:
            k = outputs(x).shape[1]
            jac = jnp.reshape(jax.jacrev(outputs)(x), (b, k, b, n_in))
            hes = jnp.reshape(jax.hessian(outputs)(x), (b, k, b, n_in, b, n_in))
            # inference mode: example i's derivatives are the diagonal blocks (i, i) of the whole-batch ones
            res["input_jacobian"] = jnp.stack([jac[i, :, i] for i in range(b)])           # (b, k, n_in)
            res["input_hessian"] = jnp.stack([hes[i, :, i, :, i, :] for i in range(b)])   # (b, k, n_in, n_in)
            res["laplacian"] = jnp.trace(res["input_hessian"], axis1=2, axis2=3)          # (b, k)
        if entry["fd"]:
            # central differences of the float64 loss: g.u with step 1e-5, u^T H v by the 4-point formula
            h1, h2 = 1e-5, 1e-4
            res["fd_gu"] = (loss(theta + h1 * u) - loss(theta - h1 * u)) / (2 * h1)
            res["fd_uhv"] = (loss(theta + h2 * u + h2 * v) - loss(theta + h2 * u - h2 * v)
                             - loss(theta - h2 * u + h2 * v) + loss(theta - h2 * u - h2 * v)) / (4 * h2 * h2)
        return res

    # the reference must be float64 throughout: no float32 value anywhere in the traced loss
    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(theta0))
    if "f32" in jaxpr:
        raise RuntimeError(f"{key}: the JAX reference computes in float32 somewhere: "
                           f"{[line for line in jaxpr.splitlines() if 'f32' in line][:3]}")
    res = jax.jit(everything)(theta0)
    del original
    return {f"{key}:{name}": np.asarray(value, dtype="float64") for name, value in res.items()}


def main(argv: list[str]) -> int:
    manifest_path, out_dir = argv
    with open(manifest_path) as fh:
        manifest = json.load(fh)
    arrays = dict(np.load(manifest["arrays"]))
    out = Path(out_dir)
    for entry in manifest["models"]:
        t0 = time.perf_counter()
        try:
            results = reference(entry, arrays)
        except Exception as exc:  # one model's failure must not hide the others' references
            results = {f"{entry['key']}:error": np.array(f"{type(exc).__name__}: {exc}")}
        results[f"{entry['key']}:seconds"] = np.array(time.perf_counter() - t0)
        partial = out / f"{entry['key']}.partial.npz"
        np.savez(partial, **results)
        os.replace(partial, out / f"{entry['key']}.npz")  # the parent polls for this name: write it whole
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
