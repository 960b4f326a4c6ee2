"""Image patches: the shifted-window im2col against TensorFlow's own ``tf.image.extract_patches``."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfpartials import _im2col

CASES = [  # (H, W, c, kh, kw, stride, rate, padding)
    (7, 6, 3, 3, 3, 1, 1, "VALID"), (7, 6, 3, 3, 3, 1, 1, "SAME"),
    (8, 8, 2, 2, 2, 1, 1, "SAME"),      # an even kernel: SAME pads more after than before
    (9, 7, 4, 2, 3, 1, 1, "SAME"), (9, 9, 2, 3, 3, 1, 2, "SAME"), (9, 9, 2, 3, 2, 1, 3, "VALID"),
    (8, 8, 3, 1, 1, 1, 1, "SAME"), (8, 8, 3, 3, 3, 2, 1, "SAME"), (9, 8, 2, 3, 3, 2, 1, "VALID"),
    (1, 9, 2, 1, 3, 1, 1, "SAME"),      # a Conv1D seen as a 1 x W image
    (2, 2, 1, 3, 3, 1, 1, "VALID"),     # no output position
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[3]}x{c[4]}-s{c[5]}-d{c[6]}-{c[7]}-{c[0]}x{c[1]}" for c in CASES])
def test_patches_equal_extract_patches(case):
    H, W, c, kh, kw, s, r, padding = case
    x = tf.constant(np.random.default_rng(0).normal(size=(3, H, W, c)), tf.float32)
    want = tf.image.extract_patches(x, sizes=[1, kh, kw, 1], strides=[1, s, s, 1], rates=[1, r, r, 1],
                                    padding=padding)
    got = _im2col.patches(x, (kh, kw), (s, s), (r, r), padding)
    assert tuple(got.shape) == tuple(want.shape)
    np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_patches_inside_a_graph_with_unknown_batch():
    fn = tf.function(lambda x: _im2col.patches(x, (3, 2), (1, 1), (1, 1), "SAME"),
                     input_signature=[tf.TensorSpec((None, 5, 6, 2), tf.float64)])
    x = tf.constant(np.arange(2 * 5 * 6 * 2, dtype="float64").reshape(2, 5, 6, 2))
    want = tf.image.extract_patches(x, [1, 3, 2, 1], [1, 1, 1, 1], [1, 1, 1, 1], "SAME")
    np.testing.assert_array_equal(fn(x).numpy(), want.numpy())
