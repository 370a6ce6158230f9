"""The passes over a row's probabilities that the strategies share: the inverse CDF of
one or more uniform numbers per row, membership of drawn tokens in a nucleus or a top k,
the draws of a rejection sampler, and a per-row replacement of some rows' tokens.

Example:
    >>> tokens, after = draws(tf.nn.softmax(logits), u, 2)   # [B, 2] from the whole distribution
    >>> token, hit = first_hit(tokens, in_nucleus(probs, tokens, p))
"""

from __future__ import annotations

import math

import tensorflow as tf

from serving.decoders.counter_rng import next_uniforms

FLAT_CDF_WIDTH = 256  # up to this many columns one cumsum is cheap; wider rows go by blocks


def inverse_cdf(probs: tf.Tensor, u: tf.Tensor, narrow: bool = False) -> tf.Tensor:
    """Index j [N] (or [N, A]) with cdf[j-1] < u * total <= cdf[j] along probs [N, W]
    (>= 0, float32), for u [N] (or A numbers per row, [N, A]) in (0, 1); zero-probability
    entries are never hit. Rows of up to FLAT_CDF_WIDTH (or any width, with `narrow`, when
    the caller knows it is small) take one cumsum; wider rows go in two levels: block
    sums, then the cumsum of the one block that holds the target, so no full cumsum (a
    slow serial scan on CPU) is taken, and more numbers per row cost only more of the
    second level. Few graph nodes: at batch 1 each node's dispatch costs more than its
    arithmetic.

    Example:
        >>> inverse_cdf(tf.constant([[0.5, 0.0, 0.5]]), tf.constant([0.7], tf.float64))
        <tf.Tensor: shape=(1,), dtype=int32, numpy=array([2], dtype=int32)>
    """
    if u.shape.rank == 1:
        return inverse_cdf(probs, u[:, None], narrow)[:, 0]
    width = probs.shape[1]
    if narrow or (width is not None and width <= FLAT_CDF_WIDTH):
        cdf = tf.cumsum(probs, axis=1)
        target = tf.cast(u, cdf.dtype) * cdf[:, -1:]
        return tf.minimum(_lower_bound(cdf, target), _last_column(cdf))
    block = math.isqrt(width - 1) + 1 if width is not None else 128
    blocks = _as_blocks(probs, block)
    cdf = tf.cumsum(tf.reduce_sum(blocks, axis=2), axis=1)  # [N, blocks]
    target = tf.cast(u, cdf.dtype) * cdf[:, -1:]  # [N, A]
    at = tf.minimum(_lower_bound(cdf, target), _last_column(cdf))
    before = tf.gather(tf.pad(cdf, [[0, 0], [1, 0]]), at, batch_dims=1)  # < target
    inner = tf.cumsum(tf.gather(blocks, at, batch_dims=1), axis=2)  # [N, A, block]
    rest = tf.minimum(target - before, inner[:, :, -1])  # > 0, so a positive entry is hit
    inside = _lower_bound(tf.reshape(inner, [-1, block]), tf.reshape(rest, [-1, 1]))
    return at * block + tf.minimum(tf.reshape(inside, tf.shape(at)), block - 1)


def _last_column(x):
    """The index of x's last column [N, W]: a constant when W is static."""
    return x.shape[1] - 1 if x.shape[1] is not None else tf.shape(x)[1] - 1


def _lower_bound(sorted_rows, values):
    """`tf.searchsorted(side="left")` of values [N, A] in each of sorted_rows [N, M], as
    the one kernel it wraps (int32 [N, A])."""
    return tf.raw_ops.LowerBound(sorted_inputs=sorted_rows, values=values, out_type=tf.int32)


def in_nucleus(probs, token, p) -> tf.Tensor:
    """bool [N] (or [N, A]): token [N] (or A tokens per row, [N, A]) is in the nucleus of
    mass p [N] of probs [N, V] (ties kept): the tokens more probable than it hold less
    than p (or p >= 1).

    Example:
        >>> in_nucleus(tf.constant([[0.5, 0.3, 0.2]]), tf.constant([1]), tf.constant([0.7]))
        <tf.Tensor: shape=(1,), dtype=bool, numpy=array([ True])>
    """
    if token.shape.rank == 1:
        return in_nucleus(probs, token[:, None], p)[:, 0]
    q = tf.gather(probs, token, batch_dims=1)  # [N, A]
    rows = probs[:, None, :]
    above = tf.reduce_sum(tf.where(rows > q[:, :, None], rows, 0.0), axis=2)
    return (above < p[:, None]) | (p[:, None] >= 1.0)


def in_top_k(logits, token, k) -> tf.Tensor:
    """bool [N, A]: each of token [N, A] is among the k [N] largest of logits [N, V] as
    `tf.math.top_k` ranks them (ties: the lower id first).

    Example:
        >>> in_top_k(tf.constant([[1.0, 3.0, 3.0, 2.0]]), tf.constant([[2, 3]]), tf.constant([2]))
        <tf.Tensor: shape=(1, 2), dtype=bool, numpy=array([[ True, False]])>
    """
    q = tf.gather(logits, token, batch_dims=1)[:, :, None]  # [N, A, 1]
    rows, ids = logits[:, None, :], tf.range(tf.shape(logits)[1])[None, None, :]
    before = (rows > q) | ((rows == q) & (ids < token[:, :, None]))
    return tf.reduce_sum(tf.cast(before, tf.int32), axis=2) < k[:, None]


def surely_in_top_k(logits, token, k) -> tf.Tensor:
    """bool [N]: token [N] is among the k [N] largest of logits [N, V] because at most k
    logits are >= its own (one pass; a token tied across the k-th place reads False,
    where `in_top_k` decides by id).

    Example:
        >>> surely_in_top_k(tf.constant([[1.0, 3.0, 3.0, 2.0]]), tf.constant([2]), tf.constant([2]))
        <tf.Tensor: shape=(1,), dtype=bool, numpy=array([ True])>
    """
    q = tf.gather(logits, token, batch_dims=1)[:, None]
    return tf.reduce_sum(tf.cast(logits >= q, tf.int32), axis=1) <= k


def _as_blocks(x, block: int):
    """[N, W] -> [N, ceil(W / block), block], zero-padded at the end."""
    width = x.shape[1]
    if width is None:
        x = tf.pad(x, [[0, 0], [0, -tf.shape(x)[1] % block]])
    elif width % block:
        x = tf.pad(x, [[0, 0], [0, -width % block]])
    return tf.reshape(x, [-1, -(-width // block) if width is not None else tf.shape(x)[1] // block, block])


def draws(probs, u, count: int) -> tuple[tf.Tensor, tf.Tensor]:
    """count draws per row from the whole distribution probs [N, V]: tokens [N, count], by
    inverse CDF at u [N], then at `next_uniforms` of u; and the number after them [N]
    (for a row that has to draw once more)."""
    numbers = tf.concat([u[:, None], next_uniforms(u, count)], axis=1)
    return inverse_cdf(probs, numbers[:, :count]), numbers[:, count]


def first_hit(tokens, hits) -> tuple[tf.Tensor, tf.Tensor]:
    """The first of tokens [N, A] whose hits [N, A] is True (token [N]), and whether a row
    has one (hit [N])."""
    first = tf.argmax(tf.cast(hits, tf.int8), axis=1, output_type=tf.int32)
    return tf.gather(tokens, first, batch_dims=1), tf.reduce_any(hits, axis=1)


def update_rows(choose, token, rows, *tensors) -> tf.Tensor:
    """token [B] with its rows [n] replaced by choose(each of tensors, nests of [B, ...]
    tensors, at those rows) [n]: a choice among some rows, as if they were sent alone.

    Example:
        >>> update_rows(strategy.select, token, tf.where(~hit)[:, 0], logits, knobs, u)
    """
    picked = choose(*tf.nest.map_structure(lambda t: tf.gather(t, rows), tensors))
    return tf.tensor_scatter_nd_update(token, tf.cast(rows, tf.int32)[:, None], picked)


def never_inlined(fn):
    """fn as one function-call node that grappler never inlines: in a graph loop the branch
    of a `tf.cond` that is not taken still passes every one of its nodes (as dead tensors)
    each step, so a rarely taken branch with a large graph is cheaper as one call."""
    return tf.function(fn, autograph=False, experimental_attributes={"_noinline": True})
