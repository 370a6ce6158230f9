"""How the next token is chosen from processed logits: one small class per strategy.

All take processed logits (`logits_processors`: penalties, temperature and bans already
applied) and one uniform number per row (from `counter_rng`; top-p and top-k derive more
from it), sample by inverse CDF (`sampling`), and so are deterministic given the seed.

    greedy   the most probable token
    sample   from the whole distribution, in vocabulary order
    top_k    from the k most probable tokens (k per row): a small k by `tf.math.top_k`
             and the inverse CDF of its values; a large k by drawing from the tokens
             at or above a guessed threshold, the first draw among the k kept (exact
             rejection sampling), else as a small k
    top_p    from the smallest set whose probability reaches p (at least one token; all
             tokens tied at the boundary): draws from the whole distribution, the first
             that lands in the set kept (exact rejection sampling), else a draw from the
             set itself

Only top-k sorts anything (a small k its k values, a large k the largest of a 1/32
sample); the rest is a softmax and a few passes over the [N, V] probabilities (block
sums, membership tests of the draws, and for top-p's rare row whose draws all miss one
weighted histogram, `nucleus_threshold`), whatever the nucleus size (see each class;
bench/generate.py times them against greedy).

Example:
    >>> get_strategy("top_k").select(logits, knobs, u)   # int32 [B]
    >>> get_strategy("top_q")
    Traceback (most recent call last):
    ValueError: unknown decoding strategy 'top_q'; choose one of: greedy, sample, top_k, top_p
"""

from __future__ import annotations

import functools

import tensorflow as tf

from serving.decoders.nucleus_threshold import NucleusThreshold
from serving.decoders.sampling import (draws, first_hit, in_nucleus, in_top_k, inverse_cdf, never_inlined,
                                      surely_in_top_k, update_rows)
from serving.knobs import Knobs


class Greedy:
    """The most likely token of each row (ties: the lowest id)."""

    name = "greedy"
    uses_random = False

    def select(self, logits, knobs: Knobs, u) -> tf.Tensor:
        """logits [B, V] -> token [B] int32 (`u` unused)."""
        return tf.argmax(logits, axis=1, output_type=tf.int32)


class Sample:
    """Inverse CDF over the whole softmax: one softmax and one pass of block sums."""

    name = "sample"
    uses_random = True

    def select(self, logits, knobs: Knobs, u) -> tf.Tensor:
        """logits [B, V], uniforms u [B] -> token [B]: the inverse CDF of softmax(logits) at u."""
        return inverse_cdf(tf.nn.softmax(logits), u)


class TopK:
    """The k largest logits of each row (the set `tf.math.top_k` ranks: ties keep the
    lower token id), sampled in proportion to their probabilities.

    A row with k <= `direct_k` samples `tf.math.top_k`'s values by inverse CDF
    (`top_k_draw`: ~20 us a row of 10,000 at k = 40 here). For a larger k `tf.math.top_k`
    is the cost (~150 us a row at k = 1,000), so such a row samples by rejection from a
    superset instead (`superset_draw`): the r-th largest of every `stride`-th logit
    (r = k/stride + 3 sqrt(k/stride) + 2: three standard deviations of the count above
    it) is a guess g at or below the k-th largest; the row draws `draws` tokens from its
    softmax restricted to {logit >= g} and keeps the first that is among its k largest.
    The first draw is settled by one pass of counts (`surely_in_top_k`); only the rows
    it does not settle draw on and test by `in_top_k` (ties by id). When {logit >= g}
    holds at least k tokens it holds the k largest, so the kept draw is an exact draw
    from them; each draw lands with probability at least k / |{logit >= g}| (~0.6 on a
    flat row, ~1 on a peaked one). A row whose guess was too high (fewer than k tokens at
    or above it) or whose draws all miss takes `top_k_draw` at the number after its
    draws. So every row's token depends on its own logits, k and numbers only, whichever
    rows share its batch.
    """

    name = "top_k"
    uses_random = True
    direct_k = 128  # rows with k up to this sample tf.math.top_k's values directly
    stride = 32  # every stride-th logit goes into the guess (16 or 8: no faster on flat rows, slower on peaked)
    draws = 3  # from the superset, for a row with k > direct_k

    def select(self, logits, knobs: Knobs, u) -> tf.Tensor:
        """logits [B, V], u [B] -> token [B] drawn from each row's k most likely tokens."""
        k = tf.clip_by_value(knobs.k, 1, tf.shape(logits)[1])
        large = k > self.direct_k
        return tf.cond(tf.reduce_any(large),
                       lambda: tf.cond(tf.reduce_all(large), lambda: self._superset_call(logits, k, u),
                                       lambda: self._by_size(logits, k, u, large)),
                       lambda: self.top_k_draw(logits, k, u, narrow=True))

    def _by_size(self, logits, k, u, large) -> tf.Tensor:
        """token [B] of a batch that mixes small and large k: each row by its own path."""
        direct = functools.partial(self.top_k_draw, narrow=True)
        token = update_rows(direct, tf.zeros_like(k), tf.where(~large)[:, 0], logits, k, u)
        return update_rows(self._superset_call, token, tf.where(large)[:, 0], logits, k, u)

    def top_k_draw(self, logits, k, u, narrow: bool = False) -> tf.Tensor:
        """token [N]: the inverse CDF at u [N] of the softmax of each row's k [N] largest
        logits [N, V], in order of probability (`narrow`: every k is at most `direct_k`,
        so one cumsum)."""
        values, indices = tf.math.top_k(logits, k=tf.reduce_max(k))
        keep = tf.range(tf.shape(values)[1])[None, :] < k[:, None]
        probs = tf.where(keep, tf.nn.softmax(values), 0.0)
        return tf.gather(indices, inverse_cdf(probs, u, narrow), batch_dims=1)

    def guess(self, logits, k) -> tf.Tensor:
        """g [N]: the r-th largest of every `stride`-th logit of logits [N, V], for k [N];
        at or below the k-th largest logit unless the row is far from random."""
        sub = logits[:, ::self.stride]
        share = tf.cast(k, tf.float32) / self.stride
        r = tf.cast(tf.math.ceil(share + 3.0 * tf.sqrt(share) + 2.0), tf.int32)
        r = tf.clip_by_value(r, 1, tf.shape(sub)[1])
        return tf.gather(tf.math.top_k(sub, k=tf.reduce_max(r)).values, r - 1, batch_dims=1)

    def superset_draw(self, logits, k, u) -> tf.Tensor:
        """token [N] for rows with a large k [N]: the first of `draws` draws from the
        softmax of {logits >= guess} that is among the k largest, else `top_k_draw`. The
        first draw is settled by one pass of counts; only rows it does not settle draw on."""
        inside = logits >= self.guess(logits, k)[:, None]
        holds = tf.reduce_sum(tf.cast(inside, tf.int32), axis=1) >= k  # {logit >= g} holds the k largest
        probs = tf.where(inside, tf.nn.softmax(logits), 0.0)
        token = inverse_cdf(probs, u)
        settled = holds & surely_in_top_k(logits, token, k)
        return tf.cond(tf.reduce_all(settled), lambda: token,
                       lambda: self._unsettled_call(token, settled, probs, holds, logits, k, u))

    def _unsettled(self, probs, holds, logits, k, u) -> tf.Tensor:
        """token [n] of rows whose first draw was not surely in: the first of their draws
        (at u [n], then `next_uniforms` of it) among the k largest (`in_top_k`, ties by
        id), else `top_k_draw` at the number after them."""
        tokens, after = draws(probs, u, self.draws)
        token, hit = first_hit(tokens, in_top_k(logits, tokens, k) & holds[:, None])
        return tf.cond(tf.reduce_all(hit), lambda: token,
                       lambda: update_rows(self.top_k_draw, token, tf.where(~hit)[:, 0], logits, k, after))

    @functools.cached_property
    def _superset_call(self):
        """`superset_draw` as one never-inlined call: rows with a small k never pass its nodes."""
        return never_inlined(self.superset_draw)

    @functools.cached_property
    def _unsettled_call(self):
        """(token, settled, probs, holds, logits, k, u) -> token [N] with the rows not
        `settled` chosen by `_unsettled`, as one never-inlined call."""
        return never_inlined(lambda token, settled, *rows: update_rows(self._unsettled, token,
                                                                       tf.where(~settled)[:, 0], *rows))


class TopP(NucleusThreshold):
    """Nucleus sampling (the nucleus, and its threshold tau: `NucleusThreshold`).

    A row draws `draws` tokens from the whole distribution (inverse CDF at u, then at
    `next_uniforms` of u) and keeps the first inside its nucleus (`in_nucleus`: one
    pass); conditioned on landing inside, a draw from the whole distribution is a draw
    from the nucleus, so this is exact, and a nucleus of mass m >= p is hit with
    probability 1 - (1 - m)**draws (p = 0.9, 2 draws: 99%). A row that misses every
    draw takes the next uniform to the inverse CDF of its nucleus itself
    (`nucleus_draw`, by the threshold tau), so every row's token depends on its own
    logits and numbers only, whichever rows share its batch. (The threshold for every
    row at every step was measured against the draws: 2.7x greedy's time per token at
    batch 16 against 1.5x; `bench/generate.py`.)

    Example:
        >>> probs = tf.constant([[0.02, 0.3, 0.25, 0.2, 0.15, 0.08]])
        >>> TopP().threshold(probs, tf.constant([0.7])).numpy()   # keeps 0.3, 0.25, 0.2
        array([0.2], dtype=float32)
    """

    name = "top_p"
    uses_random = True
    draws = 2  # from the whole distribution before a row draws from its nucleus itself

    def select(self, logits, knobs: Knobs, u) -> tf.Tensor:
        """logits [B, V], u [B] -> token [B] drawn from each row's nucleus (mass p, ties kept)."""
        probs = tf.nn.softmax(logits)
        tokens, after = draws(probs, u, self.draws)
        token, hit = first_hit(tokens, in_nucleus(probs, tokens, knobs.p))
        return tf.cond(tf.reduce_all(hit), lambda: token, lambda: self._redraw_call(token, hit, probs, knobs.p, after))

    def nucleus_draw(self, probs, p, u) -> tf.Tensor:
        """token [N]: the inverse CDF at u [N] of each row's nucleus of probs [N, V]."""
        tau = self.threshold(probs, p)
        return inverse_cdf(tf.where(probs >= tau[:, None], probs, 0.0), u)

    @functools.cached_property
    def _redraw_call(self):
        """(token, hit, probs, p, u) -> token [N] with the rows not `hit` drawn by
        `nucleus_draw` at u, as one never-inlined call (it holds the threshold's whole
        graph, and runs at few steps)."""
        return never_inlined(lambda token, hit, *rows: update_rows(self.nucleus_draw, token, tf.where(~hit)[:, 0],
                                                                   *rows))


STRATEGIES = {cls.name: cls for cls in (Greedy, Sample, TopK, TopP)}


def get_strategy(name: str):
    """The strategy called `name`; the error quotes the name it got."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown decoding strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]()
