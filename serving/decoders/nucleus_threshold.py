"""tau, the probability threshold of a top-p nucleus, without sorting the vocabulary:
weighted histograms of the probabilities' float32 bit patterns (`NucleusThreshold`).

Example:
    >>> probs = tf.constant([[0.02, 0.3, 0.25, 0.2, 0.15, 0.08]])
    >>> NucleusThreshold().threshold(probs, tf.constant([0.7])).numpy()   # keeps 0.3, 0.25, 0.2
    array([0.2], dtype=float32)
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import tensorflow as tf

from serving.decoders.sampling import never_inlined


class NucleusThreshold:
    """The nucleus is {tokens with probability >= tau} for the largest tau whose set still
    holds mass p (tokens tied at the boundary are all kept). Masses are float32 sums, so
    a boundary within ~1e-6 of p may fall either way (as with any float32 cumulative sum).

    One weighted histogram per row (`bins` bins of the probabilities' float32 bit
    patterns, so log-spaced; the first window reaches `spread` * ln(V p_max) nats below
    the most probable token, fine enough for flat and peaked rows alike: ~5-25 tokens in
    the bin at the boundary) gives the bin where the mass reaches p; the tokens of that
    bin are gathered and sorted. A row whose crossing bin may hold `bin_tokens` or more
    tokens (a spike over a flat tail, mass ties), or lies below the window, is refined
    (`_refine`): exact, only slower. Each row's tau is the same whichever path its batch
    takes.
    """

    bins = 4096  # a power of 4, so the crossing search runs on a square grid
    bin_tokens = 64
    spread = 2.5

    def threshold(self, probs, p) -> tf.Tensor:
        """tau [N] of probs [N, V] (float32, rows summing to 1) for mass p [N]; 0 (keep
        all) where p >= 1."""
        bits = tf.bitcast(probs, tf.int32)  # monotone in the probability
        top = tf.reduce_max(probs, axis=1)
        top_bits = tf.bitcast(top, tf.int32)
        vocab = probs.shape[1] if probs.shape[1] is not None else tf.cast(tf.shape(probs)[1], tf.float32)
        depth = self.spread * tf.math.log(tf.maximum(top * vocab, 1.0)) + 1e-3  # nats below the top
        # bit patterns per bin = depth / ln 2 * 2**23 / bins; the shift is its log2, rounded up
        shift = tf.math.ceil(tf.math.log(depth) / math.log(2.0) + (23 - _log2(self.bins) - math.log2(math.log(2.0))))
        shift = tf.clip_by_value(tf.cast(shift, tf.int32), 1, 31 - _log2(self.bins))
        key = _depth_key(top_bits, bits, shift, self.bins)
        hist = tf.raw_ops.DenseBincount(input=key, size=self.bins, weights=probs)
        at, found, before, _ = _crossing(hist, tf.zeros_like(p), p)
        tokens = _compact(tf.equal(key, at[:, None]))
        few = tf.logical_and(found, tokens[2] < self.bin_tokens)
        keep_all = p >= 1.0

        tau = tf.cond(tf.reduce_all(few | keep_all), lambda: _tau_from(probs, tokens, before, p),
                      lambda: self._refine_call(bits, probs, top_bits, shift, p, at, found, few, before, hist))
        return tf.where(keep_all, 0.0, tau)

    @functools.cached_property
    def _refine_call(self):
        """`_refine` from the first histogram's answer, as one never-inlined call: the
        refine branch holds a whole while loop (measured: ~40 us less per token at batch 1)."""
        def refine(bits, probs, top_bits, shift, p, at, found, few, before, hist):
            first = _Level(at, found, few, before, tf.reduce_sum(hist[:, :-1], axis=1))
            return self._refine(bits, probs, top_bits, shift, p, first)

        return never_inlined(refine)

    def _refine(self, bits, probs, top_bits, shift, p, first: _Level):
        """tau when some row's first window (`first`) misses: move a row's window deeper
        when the mass stays below p in it, or zoom into its crowded crossing bin
        (log2(bins) bits a level) down to single bit patterns, which are exact. A row that
        the first window settles gets the tau it gets there."""
        zoom_bits, max_shift = _log2(self.bins), 31 - _log2(self.bins)

        def advance(level, base, shift, above, done, tau, pick):
            exact = tf.logical_and(level.found, tf.equal(shift, 0))  # one bit pattern: tau itself
            window = tf.bitwise.left_shift(tf.constant(self.bins - 1, tf.int64), tf.cast(shift, tf.int64))
            bottom = tf.cast(base, tf.int64) - window
            everything = tf.logical_and(~level.found, bottom <= 0)  # all the mass is below p: keep all
            few = level.few & ~exact
            new = ~done & (exact | everything | few)
            tau = tf.where(new & exact, tf.bitcast(base - level.bin, tf.float32), tau)
            tau = tf.where(new & everything, 0.0, tau)
            pick = [tf.where(new & few, a, b) for a, b in zip((level.bin, base, shift, level.before), pick)]
            width = tf.bitwise.left_shift(1, shift)
            base = tf.where(level.found, base - level.bin * width, tf.cast(tf.maximum(bottom, 0), tf.int32))
            shift = tf.where(level.found, tf.maximum(shift - zoom_bits, 0), tf.minimum(shift + 4, max_shift))
            above = tf.where(level.found, level.before, above + level.total)
            return base, shift, above, done | new, tau, pick

        def body(base, shift, above, *rest):
            return advance(self._level(base, shift, above, bits, probs, p), base, shift, above, *rest)

        n = tf.shape(p)[0]
        pick = [tf.fill([n], -1), top_bits, shift, tf.zeros_like(p)]  # bin, base, shift, mass above
        state = advance(first, top_bits, shift, tf.zeros_like(p), tf.zeros([n], tf.bool), tf.zeros_like(p), pick)
        *_, tau, (at, base, shift, before) = tf.while_loop(
            lambda *s: ~tf.reduce_all(s[3]), body, state, maximum_iterations=32)
        mask = tf.equal(_depth_key(base, bits, shift, self.bins), at[:, None])
        return tf.where(at >= 0, _tau_from(probs, _compact(mask), before, p), tau)

    def _level(self, base, shift, above, bits, probs, p) -> _Level:
        """The histogram of one window per row: tokens with bit pattern <= base [N], in bins
        of 2**shift [N] patterns; above [N]: the mass over the window. `few` is bounded
        from the bin's mass and its lowest possible probability."""
        hist = tf.raw_ops.DenseBincount(input=_depth_key(base, bits, shift, self.bins), size=self.bins, weights=probs)
        at, found, before, mass = _crossing(hist, above, p)
        edge = tf.cast(base, tf.int64) - tf.bitwise.left_shift(tf.cast(at, tf.int64) + 1, tf.cast(shift, tf.int64))
        edge_p = tf.bitcast(tf.cast(tf.clip_by_value(edge, 0, 2**31 - 1), tf.int32), tf.float32)
        few = found & (edge > 0) & (mass <= edge_p * (self.bin_tokens - 1))  # every token > edge_p
        return _Level(at, found, few, before, tf.reduce_sum(hist[:, :-1], axis=1))


class _Level(NamedTuple):
    """One histogram's answer, per row [N]."""

    bin: tf.Tensor  # int32: the bin where the running mass reaches p
    found: tf.Tensor  # bool: that bin is in the window
    few: tf.Tensor  # bool: it holds fewer than bin_tokens tokens
    before: tf.Tensor  # float32: the mass before it (the mass above the window included)
    total: tf.Tensor  # float32: the window's mass


def _log2(n: int) -> int:
    return n.bit_length() - 1


def _depth_key(base, bits, shift, bins: int):
    """min((base [N] - bits [N, V]) >> shift [N], bins - 1) as int32 [N, V], computed
    unsigned, so a token above base (or a NaN) wraps to a large key: bin bins - 1 holds
    every token outside the window (every token counts, so the histogram's loop never
    mispredicts a skip; that bin is never a crossing)."""
    key = tf.bitwise.right_shift(tf.bitcast(base[:, None] - bits, tf.uint32), tf.cast(shift, tf.uint32)[:, None])
    return tf.bitcast(tf.minimum(key, bins - 1), tf.int32)


def _crossing(hist, above, p):
    """The first bin [N] of hist [N, bins] at which above [N] + the running sum reaches p
    [N]; whether it is a bin of the window (not the last); the mass before it and in it.
    Two levels on a square grid."""
    side = math.isqrt(hist.shape[1])
    grid = tf.reshape(hist, [tf.shape(hist)[0], side, side])
    rows = tf.concat([above[:, None], above[:, None] + tf.cumsum(tf.reduce_sum(grid, axis=2), axis=1)], axis=1)
    row = tf.minimum(tf.searchsorted(rows[:, 1:], p[:, None])[:, 0], side - 1)
    cells = tf.gather(grid, row, batch_dims=1)
    start = tf.gather(rows, row, batch_dims=1)
    cols = tf.concat([start[:, None], start[:, None] + tf.cumsum(cells, axis=1)], axis=1)
    col = tf.searchsorted(cols[:, 1:], p[:, None])[:, 0]
    at = row * side + tf.minimum(col, side - 1)
    found = at < side * side - 1  # the last bin holds what is outside the window
    col = tf.minimum(col, side - 1)
    return at, found, tf.gather(cols, col, batch_dims=1), tf.gather(cells, col, batch_dims=1)


def _compact(mask):
    """The True entries of mask [N, V], row-major: (coordinates [M, 2], rows [M], counts
    per row [N])."""
    where = tf.where(mask)
    rows = tf.cast(where[:, 0], tf.int32)
    return where, rows, tf.math.unsorted_segment_sum(tf.ones_like(rows), rows, tf.shape(mask)[0])


def _tau_from(probs, tokens, before, p):
    """tau [N] from the tokens (`_compact`) of each row's crossing bin, `before` [N] the
    mass above it: sorted, the first whose running mass reaches p."""
    where, rows, counts = tokens
    slot = tf.range(tf.shape(rows)[0]) - tf.gather(tf.cumsum(counts, exclusive=True), rows)
    dense = tf.scatter_nd(tf.stack([rows, slot], axis=1), tf.gather_nd(probs, where),
                          tf.stack([tf.shape(counts)[0], tf.maximum(tf.reduce_max(counts), 1)]))
    ordered = tf.sort(dense, axis=1, direction="DESCENDING")
    reached = tf.searchsorted(before[:, None] + tf.cumsum(ordered, axis=1), p[:, None])[:, 0]
    return tf.gather(ordered, tf.minimum(reached, tf.maximum(counts - 1, 0)), batch_dims=1)
