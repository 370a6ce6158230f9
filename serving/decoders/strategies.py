"""How the next token is chosen from processed logits: one small class per strategy.

All take processed logits (`logits_processors`: penalties, temperature and bans already
applied) and one uniform number per row (from `counter_rng`; top-p and top-k derive more
from it), sample by inverse CDF (`sampling`), and so are deterministic given the seed.

    greedy   the most probable token
    sample   from the whole distribution, in vocabulary order
    top_k    from the k most probable tokens (k per row), in order of probability (a
             row whose k most probable may hold most of the mass: first draws from the
             whole distribution, kept when among them)
    top_p    from the smallest set whose probability reaches p (at least one token; all
             tokens tied at the boundary): draws from the whole distribution, the first
             that lands in the set kept (exact rejection sampling), else a draw from the
             set itself

None sorts the vocabulary or bisects over it: a step is a softmax and a few passes over
the [N, V] probabilities (block sums; for top-p one membership test per draw, and for the
rare row whose draws all miss one weighted histogram, `nucleus_threshold`), whatever the nucleus size (see
each class; bench/generate.py times them against greedy).

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
from serving.decoders.sampling import draws, first_hit, in_nucleus, in_top_k, inverse_cdf, never_inlined, update_rows
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
    """The k largest logits (`tf.math.top_k`: ties keep the lower token id).

    A row whose k most likely tokens may hold most of its mass (k x p_max >= `hopeful`,
    as after training) first draws `draws` tokens from the whole distribution (inverse
    CDF at u, then at `next_uniform` of u, ...) and keeps the first among its k largest
    logits (`in_top_k`: one pass of comparisons): exact rejection sampling, as in `TopP`.
    The other rows, and a row that misses every draw, sample the k largest in order of
    probability by inverse CDF (`top_k_draw`), at u (rows that drew nothing) or at the
    next number; so every row's token depends on its own logits and numbers only. On a
    flat row (k x p_max small: few draws would land) `tf.math.top_k` is the whole cost:
    ~20 us a row of 10,000 at k = 40, ~150 us at k = 1,000 here. (Pruning the row by
    block maxima before `top_k` was measured: no faster in the generation loop at k = 40,
    slower at k = 100.)
    """

    name = "top_k"
    uses_random = True
    draws = 2  # from the whole distribution, for a hopeful row
    hopeful = 0.5  # k x p_max at which a row tries the draws

    def select(self, logits, knobs: Knobs, u) -> tf.Tensor:
        """logits [B, V], u [B] -> token [B] drawn from each row's k most likely tokens."""
        k = tf.clip_by_value(knobs.k, 1, tf.shape(logits)[1])
        probs = tf.nn.softmax(logits)
        hopeful = tf.cast(k, tf.float32) * tf.reduce_max(probs, axis=1) >= self.hopeful
        return tf.cond(tf.reduce_any(hopeful), lambda: self.drawn(logits, probs, k, u, hopeful),
                       lambda: self.top_k_draw(logits, k, u))

    def drawn(self, logits, probs, k, u, hopeful) -> tf.Tensor:
        """token [B] where some rows are `hopeful` [B]: their draws, then `top_k_draw`."""
        tokens, after = draws(probs, u, self.draws)
        token, hit = first_hit(tokens, in_top_k(logits, tokens, k) & hopeful[:, None])
        u = tf.where(hopeful, after, u)
        return tf.cond(tf.reduce_all(hit), lambda: token,
                       lambda: update_rows(self.top_k_draw, token, tf.where(~hit)[:, 0], logits, k, u))

    def top_k_draw(self, logits, k, u) -> tf.Tensor:
        """token [N]: the inverse CDF at u [N] of the softmax of each row's k [N] largest
        logits [N, V], in order of probability."""
        values, indices = tf.math.top_k(logits, k=tf.reduce_max(k))
        keep = tf.range(tf.shape(values)[1])[None, :] < k[:, None]
        probs = tf.where(keep, tf.nn.softmax(values), 0.0)
        return tf.gather(indices, inverse_cdf(probs, u), batch_dims=1)


class TopP(NucleusThreshold):
    """Nucleus sampling (the nucleus, and its threshold tau: `NucleusThreshold`).

    A row draws `draws` tokens from the whole distribution (inverse CDF at u, then at
    `next_uniform` of u, ...) and keeps the first inside its nucleus (`in_nucleus`: one
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
