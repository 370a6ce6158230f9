"""A counter-based random number per (row seed, step): splitmix64 in TF integer ops.

Each row draws from its own stream, so a prompt samples the same text alone or in any
batch, and the graph needs no random state (TF Serving can run it, and the same seed
always gives the same output).

Example:
    >>> row_uniform(tf.constant([1, 1, 2], tf.int64), tf.constant(0)).numpy()  # [B] in (0, 1)
    array([0.3681..., 0.3681..., 0.3922...])
"""

from __future__ import annotations

import tensorflow as tf

_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def splitmix64(x: tf.Tensor) -> tf.Tensor:
    """The splitmix64 finalizer on uint64 (wrapping arithmetic)."""
    x = x + tf.constant(_GOLDEN, tf.uint64)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(30, tf.uint64))) * tf.constant(_MIX1, tf.uint64)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(27, tf.uint64))) * tf.constant(_MIX2, tf.uint64)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(31, tf.uint64)))


def row_uniform(seed: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
    """float64 [B] uniform in (0, 1) from int64 seeds [B] and a scalar step."""
    x = splitmix64(tf.bitcast(tf.cast(seed, tf.int64), tf.uint64))
    return _unit(splitmix64(x + tf.cast(step, tf.uint64)))


def next_uniforms(u: tf.Tensor, count: int) -> tf.Tensor:
    """float64 [B, count] uniform in (0, 1): further draws of the streams that gave u [B],
    splitmix64's own stream seeded by u's bits (number j: the finalizer of bits + j x the
    golden gamma), all in one pass, for a strategy that needs more numbers.

    Example:
        >>> next_uniforms(row_uniform(tf.constant([1], tf.int64), tf.constant(0)), 2).numpy()
        array([[0.5778..., 0.5561...]])
    """
    steps = tf.cast(tf.range(count), tf.uint64) * tf.constant(_GOLDEN, tf.uint64)
    bits = tf.bitcast(tf.cast(u, tf.float64), tf.uint64)[:, None] + steps[None, :]
    return _unit(splitmix64(bits))


def _unit(x: tf.Tensor) -> tf.Tensor:
    """uint64 [B] -> float64 [B] in (0, 1) from the top 53 bits."""
    top53 = tf.bitwise.right_shift(x, tf.constant(11, tf.uint64))
    return (tf.cast(top53, tf.float64) + 0.5) * (2.0 ** -53)
