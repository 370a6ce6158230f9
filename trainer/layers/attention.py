"""Attention over encoder outputs for the sequence-to-sequence model, as Keras layers.

    luong (multiplicative, Luong et al. 2015)   general: score = h_t . (W_a h_s)
                                                dot:     score = h_t . h_s
    bahdanau (additive, Bahdanau et al. 2015)   score = v . tanh(W_1 h_s + W_2 h_t)

Both split the work in two: `keys(memory)` projects the encoder outputs once per source
(the decoders carry the keys in their state, so a step does not redo it), and the call
scores every query against them. Scores at padded source positions are set to a large
negative number before the softmax, so their weights are exactly 0.

Scores, softmax and context are float32 even under `mixed_bfloat16` (only the
projections run in the compute dtype).

Example:
    >>> attention = get_attention("luong", units=4)
    >>> attention.build((None, None, 4), (None, None, 6))
    >>> context, weights = attention(tf.zeros([2, 3, 4]), tf.zeros([2, 5, 6]), source_mask=tf.ones([2, 5]))
    >>> context.shape, weights.shape
    (TensorShape([2, 3, 6]), TensorShape([2, 3, 5]))
"""

from __future__ import annotations

import abc

import keras
import tensorflow as tf

MASKED_SCORE = -1e9  # exp(MASKED_SCORE - max) underflows to exactly 0 in float32


def masked_softmax(scores, mask):
    """scores [B, T, S] -> float32 weights over S; `mask` [B, S] (bool, int or float, nonzero
    = a real position) or None."""
    scores = tf.cast(scores, tf.float32)
    if mask is not None:
        real = tf.cast(mask, tf.bool)[:, None, :]
        scores = tf.where(real, scores, MASKED_SCORE)
    return tf.nn.softmax(scores, axis=-1)


class _Attention(keras.layers.Layer):
    """Shared call: queries [B, T, Hq] against memory [B, S, D] (optionally its `keys`,
    and `source_mask` [B, S]) -> (context [B, T, D] float32, weights [B, T, S] float32).
    A subclass supplies `keys` and `_scores`."""

    def __init__(self, units: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.units = units

    @abc.abstractmethod
    def keys(self, memory):
        """The projected memory [B, S, K] that `_scores` compares queries with."""

    @abc.abstractmethod
    def _scores(self, query, keys):
        """Queries [B, T, Hq] against keys [B, S, K] -> unnormalised scores [B, T, S]."""

    def call(self, query, memory, keys=None, source_mask=None):
        keys = self.keys(memory) if keys is None else keys
        weights = masked_softmax(self._scores(tf.cast(query, self.compute_dtype), keys), source_mask)
        context = tf.einsum("bts,bsd->btd", weights, tf.cast(memory, tf.float32))
        return context, weights

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="lmpipe")
class LuongAttention(_Attention):
    """Multiplicative attention: "general" h_t . (W_a h_s), or "dot" h_t . h_s.

    Args:
        units: Hq, the size of the queries (the decoder's hidden size).
        score: "general" (a learned [D, Hq] matrix) or "dot" (needs D == Hq).

    Example:
        >>> layer = LuongAttention(4, score="dot")
        >>> layer.build((None, None, 4), (None, None, 4))
        >>> layer(tf.ones([1, 2, 4]), tf.ones([1, 3, 4]))[1].numpy()[0, 0]
        array([0.33333334, 0.33333334, 0.33333334], dtype=float32)
    """

    def __init__(self, units: int, score: str = "general", **kwargs) -> None:
        super().__init__(units, **kwargs)
        if score not in ("general", "dot"):
            raise ValueError(f"Luong attention score must be 'general' or 'dot', got {score!r}")
        self.score = score

    def build(self, query_shape, memory_shape=None) -> None:
        """Creates W of the `general` score (memory size -> units); `dot` has no weights and needs
        memory of the query's size.
        """
        memory_dim = memory_shape[-1] if memory_shape is not None else self.units
        if self.score == "dot" and memory_dim != self.units:
            raise ValueError(
                f"Luong 'dot' attention needs encoder outputs of the decoder's size {self.units}, "
                f"got {memory_dim}; use score 'general' (or a unidirectional encoder)")
        if self.score == "general":
            self.kernel = self.add_weight(name="kernel", shape=(memory_dim, self.units),
                                          initializer="glorot_uniform")
        self.built = True

    def keys(self, memory):
        """memory [B, S, D] -> keys [B, S, units] (computed once per source: `general` multiplies by
        W, `dot` uses the memory itself).
        """
        memory = tf.cast(memory, self.compute_dtype)
        if self.score == "dot":
            return memory
        return tf.tensordot(memory, tf.cast(self.kernel, memory.dtype), axes=1)

    def _scores(self, query, keys):
        return tf.einsum("bth,bsh->bts", query, tf.cast(keys, query.dtype))

    def get_config(self) -> dict:
        """The layer's arguments, `score` included, for Keras saving."""
        return {**super().get_config(), "score": self.score}


@keras.saving.register_keras_serializable(package="lmpipe")
class BahdanauAttention(_Attention):
    """Additive attention: v . tanh(W_1 h_s + W_2 h_t + b).

    Args:
        units: A, the size of the hidden layer of the score (the queries may be any size).

    Example:
        >>> layer = BahdanauAttention(3)
        >>> layer.build((None, None, 4), (None, None, 6))
        >>> [w.shape for w in layer.weights]
        [(6, 3), (4, 3), (3,), (3,)]
    """

    def build(self, query_shape, memory_shape=None) -> None:
        """Creates W_memory, W_query, the bias and v of the additive score."""
        memory_dim = memory_shape[-1] if memory_shape is not None else query_shape[-1]
        self.memory_kernel = self.add_weight(name="memory_kernel", shape=(memory_dim, self.units),
                                             initializer="glorot_uniform")
        self.query_kernel = self.add_weight(name="query_kernel", shape=(query_shape[-1], self.units),
                                            initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")
        self.v = self.add_weight(name="v", shape=(self.units,), initializer="glorot_uniform")
        self.built = True

    def keys(self, memory):
        """memory [B, S, D] -> keys [B, S, units] = memory W_memory (once per source)."""
        memory = tf.cast(memory, self.compute_dtype)
        return tf.tensordot(memory, tf.cast(self.memory_kernel, memory.dtype), axes=1)

    def _scores(self, query, keys):
        q = tf.tensordot(query, tf.cast(self.query_kernel, query.dtype), axes=1) + tf.cast(self.bias, query.dtype)
        hidden = tf.tanh(tf.cast(keys, query.dtype)[:, None, :, :] + q[:, :, None, :])  # [B, T, S, A]
        return tf.tensordot(hidden, tf.cast(self.v, query.dtype), axes=1)


ATTENTIONS = {"luong": LuongAttention, "bahdanau": BahdanauAttention}


def get_attention(kind: str, units: int, score: str = "general", **kwargs) -> _Attention:
    """The attention layer of `kind` ("luong" or "bahdanau"); `score` is Luong's
    ("general" or "dot"); `kwargs` go to the layer (name, dtype)."""
    if kind not in ATTENTIONS:
        raise ValueError(f"unknown attention {kind!r}; choose one of: {', '.join(ATTENTIONS)}")
    if kind == "luong":
        return LuongAttention(units, score=score, **kwargs)
    return BahdanauAttention(units, **kwargs)
