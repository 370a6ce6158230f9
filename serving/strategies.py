"""How the next token is chosen from processed logits: one small class per strategy.

All take processed logits (`logits_processors`: penalties, temperature and bans already
applied) and one uniform number per row (from `counter_rng`), sample by inverse CDF, and
so are deterministic given the seed.

    greedy   the most probable token
    sample   from the whole distribution
    top_k    from the k most probable tokens (k per row)
    top_p    from the smallest set whose probability reaches p (at least one token)

Example:
    >>> get_strategy("top_k").select(logits, knobs, u)   # int32 [B]
    >>> get_strategy("top_q")
    Traceback (most recent call last):
    ValueError: unknown decoding strategy 'top_q'; choose one of: greedy, sample, top_k, top_p
"""

from __future__ import annotations

import tensorflow as tf

from serving.knobs import Knobs


def inverse_cdf(probs: tf.Tensor, u: tf.Tensor) -> tf.Tensor:
    """Index j [N] with cdf[j-1] < u * total <= cdf[j]; zero-probability entries are never hit."""
    cdf = tf.cumsum(probs, axis=1)
    target = tf.cast(u, cdf.dtype)[:, None] * cdf[:, -1:]
    index = tf.reduce_sum(tf.cast(cdf < target, tf.int32), axis=1)
    return tf.minimum(index, tf.shape(probs)[1] - 1)


class Greedy:
    name = "greedy"
    uses_random = False

    def select(self, logits, knobs: Knobs, u) -> tf.Tensor:
        return tf.argmax(logits, axis=1, output_type=tf.int32)


class Sample:
    name = "sample"
    uses_random = True

    def select(self, logits, knobs: Knobs, u) -> tf.Tensor:
        return inverse_cdf(tf.nn.softmax(logits), u)


class TopK:
    name = "top_k"
    uses_random = True

    def select(self, logits, knobs: Knobs, u) -> tf.Tensor:
        vocab = tf.shape(logits)[1]
        k = tf.clip_by_value(knobs.k, 1, vocab)
        values, indices = tf.math.top_k(logits, k=tf.reduce_max(k))
        keep = tf.range(tf.shape(values)[1])[None, :] < k[:, None]
        probs = tf.where(keep, tf.nn.softmax(values), 0.0)
        return tf.gather(indices, inverse_cdf(probs, u), batch_dims=1)


class TopP:
    """Nucleus sampling without sorting the vocabulary: the nucleus is {tokens with
    probability >= tau} for the largest tau whose set still holds mass p, found per row
    by bisection (tokens tied at the boundary are all kept). When the `head` most
    probable tokens already hold mass p in every row (usual for a trained model), the
    nucleus is cut from those instead, in sorted order."""

    name = "top_p"
    uses_random = True
    head = 64
    bisection_steps = 32

    def select(self, logits, knobs: Knobs, u) -> tf.Tensor:
        log_norm = tf.reduce_logsumexp(logits, axis=1, keepdims=True)
        values, indices = tf.math.top_k(logits, k=tf.minimum(self.head, tf.shape(logits)[1]))
        head_probs = tf.exp(values - log_norm)
        return tf.cond(tf.reduce_all(tf.reduce_sum(head_probs, axis=1) >= knobs.p),
                       lambda: self._from_head(head_probs, indices, knobs, u),
                       lambda: self._by_threshold(tf.exp(logits - log_norm), knobs, u))

    @staticmethod
    def _from_head(probs, indices, knobs, u):
        before = tf.cumsum(probs, axis=1, exclusive=True)
        keep = before < knobs.p[:, None]  # the first token always stays (before = 0 < p)
        return tf.gather(indices, inverse_cdf(tf.where(keep, probs, 0.0), u), batch_dims=1)

    def _by_threshold(self, probs, knobs, u):
        low = tf.zeros_like(knobs.p)  # mass(probs >= 0) = 1 >= p
        high = tf.reduce_max(probs, axis=1)
        for _ in range(self.bisection_steps):
            mid = (low + high) / 2
            mass = tf.reduce_sum(tf.where(probs >= mid[:, None], probs, 0.0), axis=1)
            enough = mass >= knobs.p
            low, high = tf.where(enough, mid, low), tf.where(enough, high, mid)
        keep = probs >= low[:, None]
        return inverse_cdf(tf.where(keep, probs, 0.0), u)


STRATEGIES = {cls.name: cls for cls in (Greedy, Sample, TopK, TopP)}


def get_strategy(name: str):
    """The strategy called `name`; the error quotes the name it got."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown decoding strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]()
