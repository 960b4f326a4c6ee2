"""pfor rules for convolutions with a varying filter: vectorised ops against a Python loop of plain TF ops."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfpartials import _pfor_rules

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

K = 3  # iterations of the vectorised map
# (strides, padding, dilations); TensorFlow's CPU kernels take no stride > 1 together with a dilation > 1
CONFIGS = [(1, "SAME", 1), (2, "SAME", 1), (2, "VALID", 1), (1, "VALID", 2), (1, "SAME", 2),
           (1, [[0, 0], [1, 2], [0, 1], [0, 0]], 1)]
IDS = ["s1-same", "s2-same", "s2-valid", "d2-valid", "d2-same", "explicit"]
# CPU kernels of the backprop ops reject dilations (TensorFlow's gradient of a dilated conv avoids them)
UNDILATED = [c for c in CONFIGS if c[2] == 1]
UNDILATED_IDS = [i for c, i in zip(CONFIGS, IDS) if c[2] == 1]


@pytest.fixture(autouse=True, scope="module")
def _rules():
    assert _pfor_rules.install()
    assert _pfor_rules.install()  # idempotent
    yield


def _rand(rng, *shape):
    return tf.constant(rng.normal(size=shape), tf.float64)


def _kw(cfg):
    s, p, d = cfg
    return {"strides": [1, s, s, 1], "padding": p, "dilations": [1, d, d, 1]}


def _vectorised(fn, elems):
    """``tf.vectorized_map(fn, elems)`` compiled, with the op types of its graph."""
    f = tf.function(lambda *e: tf.vectorized_map(lambda a: fn(*a), e, fallback_to_while_loop=False))
    concrete = f.get_concrete_function(*elems)
    ops = {op.type for op in concrete.graph.get_operations()}
    return f(*elems), ops


def _check(fn, elems):
    got, ops = _vectorised(fn, elems)
    assert not ops & {"While", "StatelessWhile", "TensorListReserve"}, sorted(ops)
    want = np.stack([fn(*(e[i] for e in elems)).numpy() for i in range(int(elems[0].shape[0]))])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


def _raw(cfg):
    s, p, d = cfg
    kw = {"strides": [1, s, s, 1], "padding": p, "dilations": [1, d, d, 1]}
    if not isinstance(p, str):
        kw.update(padding="EXPLICIT", explicit_paddings=[v for pair in p for v in pair])
    return kw


def _out_shape(x, w, cfg):
    return tf.nn.conv2d(x, w, **_kw(cfg)).shape


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_conv2d_filter_varies(cfg, rng):
    x, W = _rand(rng, 2, 9, 8, 3), _rand(rng, K, 3, 2, 3, 4)
    _check(lambda w: tf.nn.conv2d(x, w, **_kw(cfg)), (W,))


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_conv2d_input_and_filter_vary(cfg, rng):
    X, W = _rand(rng, K, 2, 9, 8, 3), _rand(rng, K, 3, 2, 3, 4)
    _check(lambda x, w: tf.nn.conv2d(x, w, **_kw(cfg)), (X, W))


@pytest.mark.parametrize("cfg", UNDILATED, ids=UNDILATED_IDS)
def test_conv2d_backprop_input_filter_varies(cfg, rng):
    W = _rand(rng, K, 3, 2, 3, 4)
    shape = _out_shape(tf.zeros([2, 9, 8, 3], tf.float64), W[0], cfg)
    dy = _rand(rng, *shape)
    _check(lambda w: tf.raw_ops.Conv2DBackpropInput(input_sizes=[2, 9, 8, 3], filter=w, out_backprop=dy, **_raw(cfg)), (W,))


@pytest.mark.parametrize("cfg", UNDILATED, ids=UNDILATED_IDS)
def test_conv2d_backprop_filter_input_varies(cfg, rng):
    X = _rand(rng, K, 2, 9, 8, 3)
    dy = _rand(rng, *_out_shape(X[0], tf.zeros([3, 2, 3, 4], tf.float64), cfg))
    _check(lambda x: tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=[3, 2, 3, 4], out_backprop=dy,
                                                                  **_raw(cfg)), (X,))


@pytest.mark.parametrize("cfg", UNDILATED, ids=UNDILATED_IDS)
@pytest.mark.parametrize("kernel", [(3, 2), (1, 1)], ids=["3x2", "1x1"])
def test_conv2d_backprop_filter_input_and_gradient_vary(cfg, kernel, rng):
    X = _rand(rng, K, 2, 9, 8, 3)
    fs = [*kernel, 3, 4]
    DY = _rand(rng, K, *_out_shape(X[0], tf.zeros(fs, tf.float64), cfg))
    _check(lambda x, dy: tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=fs, out_backprop=dy, **_raw(cfg)), (X, DY))


def _dkw(cfg):
    s, p, d = cfg
    if not isinstance(p, str):
        p = "SAME"
    return {"strides": [1, s, s, 1], "padding": p, "dilations": [d, d]}


@pytest.mark.parametrize("cfg", UNDILATED[:3], ids=UNDILATED_IDS[:3])
def test_depthwise_every_single_varying_operand(cfg, rng):
    x, W = _rand(rng, 2, 9, 8, 3), _rand(rng, K, 3, 2, 3, 2)
    X, w = _rand(rng, K, 2, 9, 8, 3), W[0]
    kw = _dkw(cfg)
    _check(lambda w_: tf.nn.depthwise_conv2d(x, w_, **kw), (W,))
    _check(lambda x_: tf.nn.depthwise_conv2d(x_, w, **kw), (X,))
    shape = tf.nn.depthwise_conv2d(x, w, **kw).shape
    dy, DY = _rand(rng, *shape), _rand(rng, K, *shape)
    s, p, d = kw["strides"], kw["padding"], [1, *kw["dilations"], 1]
    bpi = tf.raw_ops.DepthwiseConv2dNativeBackpropInput
    bpf = tf.raw_ops.DepthwiseConv2dNativeBackpropFilter
    _check(lambda w_: bpi(input_sizes=[2, 9, 8, 3], filter=w_, out_backprop=dy, strides=s, padding=p,
                          dilations=d), (W,))
    _check(lambda dy_: bpi(input_sizes=[2, 9, 8, 3], filter=w, out_backprop=dy_, strides=s, padding=p,
                           dilations=d), (DY,))
    _check(lambda x_: bpf(input=x_, filter_sizes=[3, 2, 3, 2], out_backprop=dy, strides=s, padding=p,
                          dilations=d), (X,))
    _check(lambda dy_: bpf(input=x, filter_sizes=[3, 2, 3, 2], out_backprop=dy_, strides=s, padding=p,
                           dilations=d), (DY,))


@pytest.mark.parametrize("cfg", UNDILATED, ids=UNDILATED_IDS)
@pytest.mark.parametrize("kernel,mult", [((3, 2), 2), ((3, 3), 1), ((1, 1), 1)], ids=["3x2m2", "3x3", "1x1"])
def test_depthwise_backprop_filter_input_and_gradient_vary(cfg, kernel, mult, rng):
    """Per-example filter gradients of a depthwise convolution: one product and sum per kernel offset, equal to
    TensorFlow's own kernel run on every iteration, with no loop left in the graph."""
    X = _rand(rng, K, 2, 9, 8, 3)
    fs = [*kernel, 3, mult]
    kw = _raw(cfg)
    shape = tf.raw_ops.DepthwiseConv2dNative(input=X[0], filter=tf.zeros(fs, tf.float64), **kw).shape
    DY = _rand(rng, K, *shape)
    bpf = tf.raw_ops.DepthwiseConv2dNativeBackpropFilter
    fn = lambda x, dy: bpf(input=x, filter_sizes=fs, out_backprop=dy, **kw)  # noqa: E731
    _check(fn, (X, DY))
    f = tf.function(lambda *e: tf.vectorized_map(lambda a: fn(*a), e, fallback_to_while_loop=False))
    converted = [op.name for op in f.get_concrete_function(X, DY).graph.get_operations()
                 if op.type == "DepthwiseConv2dNativeBackpropFilter" and "pfor" in op.name]
    assert not converted  # the rule's sums, not TensorFlow's one op over K*c channels


@pytest.mark.parametrize("strides,padding,dilation", [(1, "same", 1), (2, "valid", 1), (1, "causal", 2)])
def test_conv1d_through_keras_ops(strides, padding, dilation, rng):
    """Keras' Conv1D lowers to Conv2D; filter varying, and per-example filter gradients (both vary)."""
    import keras

    x, W = _rand(rng, 2, 11, 3), _rand(rng, K, 3, 3, 4)
    X = _rand(rng, K, 1, 11, 3)

    def conv(x_, w_):
        if padding == "causal":
            x_ = tf.pad(x_, [[0, 0], [dilation * 2, 0], [0, 0]])
        return keras.ops.conv(x_, w_, strides=strides, padding="valid" if padding == "causal" else padding,
                              dilation_rate=dilation)

    _check(lambda w_: conv(x, w_), (W,))

    w0 = W[0]

    def grad(x_):
        with tf.GradientTape() as tape:
            tape.watch(w0)
            value = tf.reduce_sum(tf.sin(conv(x_, w0)))
        return tape.gradient(value, w0)

    _check(grad, (X,))


def test_nchw_is_left_to_tensorflow():
    """An unsupported layout is handed to TensorFlow's converter (which cannot vectorise a varying filter)."""
    x = tf.zeros([1, 3, 5, 5], tf.float64)
    W = tf.zeros([K, 3, 3, 3, 2], tf.float64)
    f = tf.function(lambda w: tf.vectorized_map(
        lambda w_: tf.nn.conv2d(x, w_, strides=1, padding="SAME", data_format="NCHW"), w,
        fallback_to_while_loop=False))
    with pytest.raises(ValueError, match="expected to be loop invariant"):
        f.get_concrete_function(W)


def test_unexpected_pfor_internals_install_nothing():
    import types

    def original(pfor_input):
        return "tensorflow's"

    assert not _pfor_rules._install_into(types.SimpleNamespace())  # no registry at all
    partial = {"Conv2D": original}  # some op types missing: nothing is wrapped
    fake = types.SimpleNamespace(_pfor_converter_registry=partial, _PforInput=object, wrap=lambda t, s: t)
    assert not _pfor_rules._install_into(fake) and partial == {"Conv2D": original}
    full = dict.fromkeys(_pfor_rules.COVERED_OPS, original)
    fake = types.SimpleNamespace(_pfor_converter_registry=full, _PforInput=object, wrap=lambda t, s: t)
    assert _pfor_rules._install_into(fake) and _pfor_rules._install_into(fake)  # idempotent: wrapped once
    assert all(f.__wrapped__ is original for f in full.values())


def test_rules_unavailable_keep_convolutions_on_the_loop(monkeypatch):
    import keras

    from tfpartials._tracing import pfor_looped_layers

    model = keras.Sequential([keras.Input((6, 6, 1))] + [keras.layers.Conv2D(1, 2, name=f"c{i}") for i in range(4)])
    assert pfor_looped_layers(model) == 0
    monkeypatch.setattr(_pfor_rules, "install", lambda: False)
    assert pfor_looped_layers(model) == 4
