"""How the next token is chosen from processed logits: one small class per strategy.

All take processed logits (`logits_processors`: penalties, temperature and bans already
applied) and one uniform number per row (from `counter_rng`; top-p derives more from it),
sample by inverse CDF, and so are deterministic given the seed.

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
rare row whose draws all miss one weighted histogram), whatever the nucleus size (see
each class; bench/generate.py times them against greedy).

Example:
    >>> get_strategy("top_k").select(logits, knobs, u)   # int32 [B]
    >>> get_strategy("top_q")
    Traceback (most recent call last):
    ValueError: unknown decoding strategy 'top_q'; choose one of: greedy, sample, top_k, top_p
"""

from __future__ import annotations

import math
from typing import NamedTuple

import tensorflow as tf

from serving.decoders.counter_rng import next_uniform
from serving.knobs import Knobs

FLAT_CDF_WIDTH = 256  # up to this many columns one cumsum is cheap; wider rows go by blocks


def inverse_cdf(probs: tf.Tensor, u: tf.Tensor) -> tf.Tensor:
    """Index j [N] (or [N, A]) with cdf[j-1] < u * total <= cdf[j] along probs [N, W]
    (>= 0, float32), for u [N] (or A numbers per row, [N, A]) in (0, 1); zero-probability
    entries are never hit. Wide rows go in two levels: block sums, then the cumsum of the
    one block that holds the target, so no full cumsum (a slow serial scan on CPU) is
    taken, and more numbers per row cost only more of the second level.

    Example:
        >>> inverse_cdf(tf.constant([[0.5, 0.0, 0.5]]), tf.constant([0.7], tf.float64))
        <tf.Tensor: shape=(1,), dtype=int32, numpy=array([2], dtype=int32)>
    """
    if u.shape.rank == 1:
        return inverse_cdf(probs, u[:, None])[:, 0]
    width = probs.shape[1]
    if width is not None and width <= FLAT_CDF_WIDTH:
        cdf = tf.cumsum(probs, axis=1)
        target = tf.cast(u, cdf.dtype) * cdf[:, -1:]
        return tf.minimum(tf.searchsorted(cdf, target), tf.shape(probs)[1] - 1)
    block = math.isqrt(width - 1) + 1 if width is not None else 128
    blocks = _as_blocks(probs, block)
    cdf = tf.cumsum(tf.reduce_sum(blocks, axis=2), axis=1)  # [N, blocks]
    target = tf.cast(u, cdf.dtype) * cdf[:, -1:]  # [N, A]
    at = tf.minimum(tf.searchsorted(cdf, target), tf.shape(cdf)[1] - 1)
    before = tf.gather(tf.pad(cdf, [[0, 0], [1, 0]]), at, batch_dims=1)  # < target
    inner = tf.cumsum(tf.gather(blocks, at, batch_dims=1), axis=2)  # [N, A, block]
    rest = tf.minimum(target - before, inner[:, :, -1])  # > 0, so a positive entry is hit
    inside = tf.searchsorted(tf.reshape(inner, [-1, block]), tf.reshape(rest, [-1, 1]))
    return at * block + tf.minimum(tf.reshape(inside, tf.shape(at)), block - 1)


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


def _as_blocks(x, block: int):
    """[N, W] -> [N, ceil(W / block), block], zero-padded at the end."""
    pad = -tf.shape(x)[1] % block if x.shape[1] is None else -x.shape[1] % block
    if not isinstance(pad, int) or pad:
        x = tf.pad(x, [[0, 0], [0, pad]])
    return tf.reshape(x, [tf.shape(x)[0], -1, block])


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
        numbers = [u]
        for _ in range(self.draws):
            numbers.append(next_uniform(numbers[-1]))
        tokens = inverse_cdf(probs, tf.stack(numbers[:-1], axis=1))  # [B, draws]
        hits = in_top_k(logits, tokens, k) & hopeful[:, None]
        first = tf.argmax(tf.cast(hits, tf.int8), axis=1, output_type=tf.int32)
        token, hit = tf.gather(tokens, first, batch_dims=1), tf.reduce_any(hits, axis=1)
        u = tf.where(hopeful, numbers[-1], u)
        return tf.cond(tf.reduce_all(hit), lambda: token, lambda: self.redraw(logits, k, u, token, hit))

    def top_k_draw(self, logits, k, u) -> tf.Tensor:
        """token [N]: the inverse CDF at u [N] of the softmax of each row's k [N] largest
        logits [N, V], in order of probability."""
        values, indices = tf.math.top_k(logits, k=tf.reduce_max(k))
        keep = tf.range(tf.shape(values)[1])[None, :] < k[:, None]
        probs = tf.where(keep, tf.nn.softmax(values), 0.0)
        return tf.gather(indices, inverse_cdf(probs, u), batch_dims=1)

    def redraw(self, logits, k, u, token, hit) -> tf.Tensor:
        """token [N] with the rows not `hit` [N] drawn by `top_k_draw` at u."""
        rows = tf.cast(tf.where(~hit)[:, 0], tf.int32)
        drawn = self.top_k_draw(tf.gather(logits, rows), tf.gather(k, rows), tf.gather(u, rows))
        return tf.tensor_scatter_nd_update(token, rows[:, None], drawn)


class TopP:
    """Nucleus sampling: the nucleus is {tokens with probability >= tau} for the largest
    tau whose set still holds mass p (tokens tied at the boundary are all kept). Masses
    are float32 sums, so a boundary within ~1e-6 of p may fall either way (as with any
    float32 cumulative sum).

    A row draws `draws` tokens from the whole distribution (inverse CDF at u, then at
    `next_uniform` of u, ...) and keeps the first inside its nucleus (`in_nucleus`: one
    pass); conditioned on landing inside, a draw from the whole distribution is a draw
    from the nucleus, so this is exact, and a nucleus of mass m >= p is hit with
    probability 1 - (1 - m)**draws (p = 0.9, 2 draws: 99%). A row that misses every
    draw takes the next uniform to the inverse CDF of its nucleus itself
    (`nucleus_draw`, by the threshold tau below), so every row's token depends on its
    own logits and numbers only, whichever rows share its batch.

    tau is found without sorting: one weighted histogram per row (`bins` bins of the
    probabilities' float32 bit patterns, so log-spaced; the first window reaches
    `spread` * ln(V p_max) nats below the most probable token, fine enough for flat and
    peaked rows alike: ~5-25 tokens in the bin at the boundary) gives the bin where the
    mass reaches p; the tokens of that bin are gathered and sorted. A row whose crossing
    bin may hold `bin_tokens` or more tokens (a spike over a flat tail, mass ties), or
    lies below the window, is refined (`_refine`): exact, only slower. Each row's tau is
    the same whichever path its batch takes. (The threshold for every row at every step
    was measured against the draws: 2.7x greedy's time per token at batch 16 against
    1.5x; `bench/generate.py`.)

    Example:
        >>> probs = tf.constant([[0.02, 0.3, 0.25, 0.2, 0.15, 0.08]])
        >>> TopP().threshold(probs, tf.constant([0.7])).numpy()   # keeps 0.3, 0.25, 0.2
        array([0.2], dtype=float32)
    """

    name = "top_p"
    uses_random = True
    draws = 2  # from the whole distribution before a row draws from its nucleus itself
    bins = 4096  # a power of 4, so the crossing search runs on a square grid
    bin_tokens = 64
    spread = 2.5

    def select(self, logits, knobs: Knobs, u) -> tf.Tensor:
        """logits [B, V], u [B] -> token [B] drawn from each row's nucleus (mass p, ties kept)."""
        probs = tf.nn.softmax(logits)
        numbers = [u]
        for _ in range(self.draws):
            numbers.append(next_uniform(numbers[-1]))
        tokens = inverse_cdf(probs, tf.stack(numbers[:-1], axis=1))  # [B, draws]
        hits = in_nucleus(probs, tokens, knobs.p)
        first = tf.argmax(tf.cast(hits, tf.int8), axis=1, output_type=tf.int32)  # the first hit
        token, hit = tf.gather(tokens, first, batch_dims=1), tf.reduce_any(hits, axis=1)
        return tf.cond(tf.reduce_all(hit), lambda: token,
                       lambda: self._redraw_call(probs, knobs.p, numbers[-1], token, hit))

    def nucleus_draw(self, probs, p, u) -> tf.Tensor:
        """token [N]: the inverse CDF at u [N] of each row's nucleus of probs [N, V]."""
        tau = self.threshold(probs, p)
        return inverse_cdf(tf.where(probs >= tau[:, None], probs, 0.0), u)

    def redraw(self, probs, p, u, token, hit) -> tf.Tensor:
        """token [N] with the rows not `hit` [N] drawn from their nucleus (`nucleus_draw`) at u."""
        rows = tf.cast(tf.where(~hit)[:, 0], tf.int32)
        drawn = self.nucleus_draw(tf.gather(probs, rows), tf.gather(p, rows), tf.gather(u, rows))
        return tf.tensor_scatter_nd_update(token, rows[:, None], drawn)

    @property
    def _redraw_call(self):
        """`redraw` as one never-inlined call (see `_refine_call`; it holds the threshold's
        whole graph, and runs at few steps)."""
        if "_redraw_fn" not in self.__dict__:
            self._redraw_fn = tf.function(self.redraw, autograph=False, experimental_attributes={"_noinline": True})
        return self._redraw_fn

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

    @property
    def _refine_call(self):
        """`_refine` as one function-call node that is never inlined: in a graph loop the
        branch of a `tf.cond` that is not taken still passes every one of its nodes (as dead
        tensors) each step, and the refine branch holds a whole while loop; as one call it
        is one node (measured: ~40 us less per token at batch 1)."""
        if "_refine_fn" not in self.__dict__:
            def refine(bits, probs, top_bits, shift, p, at, found, few, before, hist):
                first = _Level(at, found, few, before, tf.reduce_sum(hist[:, :-1], axis=1))
                return self._refine(bits, probs, top_bits, shift, p, first)

            self._refine_fn = tf.function(refine, autograph=False, experimental_attributes={"_noinline": True})
        return self._refine_fn

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


STRATEGIES = {cls.name: cls for cls in (Greedy, Sample, TopK, TopP)}


def get_strategy(name: str):
    """The strategy called `name`; the error quotes the name it got."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown decoding strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]()
