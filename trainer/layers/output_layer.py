"""The models' output layer: logits for decoding, and logits + cross-entropy fused for training.

A language model's output layer (hidden [N, H] -> logits [N, V]) and its loss are most of
a training step at a 10k vocabulary (the Zaremba small model: ~60% of the time). Written
as `Dense` + `tf.nn.sparse_softmax_cross_entropy_with_logits`, TensorFlow on CPU spends
more time in the cross-entropy kernel (single pass per row, ~21 ms at [700, 10000] here)
than in either matmul (~9.5 ms), then adds passes over the logits for the bias, the
incoming-gradient broadcast and the bias gradient. Here the softmax is the library's fast
one (oneDNN, ~2.5 ms), the NLL is read off it, and the backward pass is written by hand:

    p = softmax(h W + b)            nll_n = -log p[n, y_n]
    d_logits = g_n (p - onehot(y))  (g_n: the incoming gradient of nll_n)
    dh = (p - onehot) W^T * g       dW = (h * g)^T (p - onehot)     db = g^T (p - onehot)

so the [N, V] gradient is formed once and `g` is applied to the small operands.
Values and gradients equal the unfused layers' to float32 round-off (tests). A target whose
probability underflows float32 (NLL above ~87 nats, never seen in training but possible
from a hand-built model) takes an exact log-sum-exp path instead.
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import tensorflow as tf

_TINY = 1e-30  # below this, -log(p) is recomputed exactly from the logits


def softmax_nll(hidden, kernel, bias, labels, kernel_rows_are_classes: bool = False):
    """Per-row negative log-likelihood of `labels` under softmax(hidden @ kernel + bias).

    Args:
        hidden: [N, H] (float32, or the 16-bit compute dtype under mixed precision).
        kernel: [H, V], or [V, H] when `kernel_rows_are_classes` (a tied embedding table).
        bias: [V] or None.
        labels: [N] int32 class ids.
    Returns:
        nll [N] float32 (logits and softmax are computed in float32).

    Example:
        >>> h = tf.constant([[1.0, 0.0]]); w = tf.constant([[2.0, 0.0], [0.0, 0.0]])
        >>> float(softmax_nll(h, w, None, tf.constant([0]))[0])  # -log(e^2 / (e^2 + 1))
        0.126928...
    """
    compute = hidden.dtype
    kernel = tf.cast(kernel, compute)
    with_bias = bias is not None
    bias = tf.cast(bias, tf.float32) if with_bias else tf.zeros([0], tf.float32)
    labels = tf.cast(labels, tf.int32)

    @tf.custom_gradient
    def fused(hidden, kernel, bias):
        logits = tf.cast(tf.matmul(hidden, kernel, transpose_b=kernel_rows_are_classes), tf.float32)
        if with_bias:
            logits = tf.nn.bias_add(logits, bias)
        probs = tf.nn.softmax(logits)
        rows = tf.shape(labels)[0]
        target = tf.stack([tf.range(rows), labels], axis=1)
        p_target = tf.gather_nd(probs, target)
        nll = tf.cond(tf.reduce_all(p_target > _TINY),
                      lambda: -tf.math.log(p_target),
                      lambda: tf.reduce_logsumexp(logits, axis=-1) - tf.gather_nd(logits, target))

        def grad(g):
            d_logits32 = tf.tensor_scatter_nd_sub(probs, target, tf.ones([rows], probs.dtype))
            d_logits = tf.cast(d_logits32, compute)
            g_col = tf.cast(g[:, None], compute)
            if kernel_rows_are_classes:
                d_hidden = tf.matmul(d_logits, kernel) * g_col
                d_kernel = tf.matmul(d_logits, hidden * g_col, transpose_a=True)
            else:
                d_hidden = tf.matmul(d_logits, kernel, transpose_b=True) * g_col
                d_kernel = tf.matmul(hidden * g_col, d_logits, transpose_a=True)
            d_bias = tf.matmul(g[None, :], d_logits32)[0] if with_bias else tf.zeros([0])  # float32
            return d_hidden, d_kernel, d_bias

        return nll, grad

    return fused(hidden, kernel, bias)


class OutputParts(NamedTuple):
    """A model's output layer: `output_layer` (a Dense H -> V), or, when it is None, the
    embedding table (`embedding.embeddings` [V, E]) tied with `output_bias` [V], after the
    optional `projection` (H -> E). Inputs are cast to the embedding's compute dtype."""

    embedding: keras.layers.Embedding
    projection: keras.layers.Dense | None = None
    output_layer: keras.layers.Dense | None = None
    output_bias: tf.Variable | None = None


def output_layer_nll(x, targets, parts: OutputParts):
    """The output layer and NLL, fused: x [..., H] float, targets [...] int -> nll [...]."""
    x = _output_input(x, parts)
    flat = tf.reshape(x, [-1, tf.shape(x)[-1]])
    labels = tf.reshape(targets, [-1])
    if parts.output_layer is None:
        nll = softmax_nll(flat, parts.embedding.embeddings, parts.output_bias, labels, kernel_rows_are_classes=True)
    else:
        nll = softmax_nll(flat, parts.output_layer.kernel, parts.output_layer.bias, labels)
    return tf.reshape(nll, tf.shape(targets))


def output_logits(x, parts: OutputParts):
    """The same output layer unfused: x [..., H] -> logits [..., V] float32 (for decoding,
    scoring and reports)."""
    x = _output_input(x, parts)
    if parts.output_layer is None:
        table = tf.cast(parts.embedding.embeddings, x.dtype)
        logits = tf.einsum("...h,vh->...v", x, table) + tf.cast(parts.output_bias, x.dtype)
    else:
        logits = parts.output_layer(x)
    return tf.cast(logits, tf.float32)


def _output_input(x, parts: OutputParts):
    x = tf.cast(x, parts.embedding.compute_dtype)  # 16-bit under the mixed policies
    return parts.projection(x) if parts.projection is not None else x


def windowed_output_nll(x, targets, lengths, parts: OutputParts, chunk_tokens: int):
    """`output_layer_nll` over x [B, T, H] a window of positions at a time (about
    `chunk_tokens` / B positions), so memory holds one window's logits [B, w, V], never
    [B, T, V]: -> nll [B, T] float32, 0 past each row's length [B].

    Example:
        >>> windowed_output_nll(x, targets, tf.constant([5, 2]), parts, chunk_tokens=2048).shape
        TensorShape([2, 5])
    """
    batch, steps = tf.shape(x)[0], tf.shape(x)[1]
    window = tf.maximum(chunk_tokens // tf.maximum(batch, 1), 1)
    real = tf.sequence_mask(lengths, steps)

    def body(start, parts_done):
        end = tf.minimum(start + window, steps)
        nll = output_layer_nll(x[:, start:end], targets[:, start:end], parts)
        return end, parts_done.write(parts_done.size(), tf.transpose(nll))

    done = tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False)
    _, done = tf.while_loop(lambda start, _: start < steps, body, (tf.constant(0), done))
    nll = tf.cond(steps > 0, lambda: tf.transpose(done.concat()), lambda: tf.zeros([batch, 0]))
    return tf.where(real, nll, 0.0)
