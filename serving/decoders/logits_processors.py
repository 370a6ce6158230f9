"""Changes to next-token logits before a token is chosen, all per row and in-graph.

Order: the repetition penalty (CTRL: divide a seen token's positive logit by the
penalty, multiply a negative one); the temperature; then the bans, so that top-k and
top-p renormalise without the banned tokens: the special tokens that are never text
(`<pad>`, `<bos>` and, unless the export lets it through, `<unk>`), tokens that would
repeat an n-gram of the sequence so far, and `<eos>` before `min_new_tokens`. When the
n-gram ban leaves no token at all, the text ends (`<eos>`).

Example:
    >>> logits = apply_processors(logits, knobs, seen, history, cur_len, generated)
"""

from __future__ import annotations

import tensorflow as tf

from pipeline.core.constants import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from serving.knobs import MAX_NGRAM, Knobs

NEG_INF = -1e9
NEVER_TEXT = (PAD_ID, BOS_ID, UNK_ID)  # banned by default; `<unk>` may be let through


def apply_processors(logits, knobs: Knobs, seen, history, cur_len, generated, banned=NEVER_TEXT):
    """logits [N, V] float32 -> processed logits [N, V], ready for a strategy.

    Args:
        seen: [N, V] float32, 1 where a token occurs in the prompt or output so far.
        history: int32 [N, L], the sequence so far (prompt then output), valid up to cur_len.
        cur_len: int32 [N] valid length of history.
        generated: int32 [N] tokens generated so far.
        banned: the token ids never chosen.
    """
    # Each rule costs [N, V] work per step: skip it when no row of the batch asks for it.
    logits = tf.cond(tf.reduce_any(tf.not_equal(knobs.repetition_penalty, 1.0)),
                     lambda: repetition_penalty(logits, seen, knobs.repetition_penalty), lambda: logits)
    logits = tf.cond(tf.reduce_any(tf.not_equal(knobs.temperature, 1.0)),
                     lambda: logits / knobs.temperature[:, None], lambda: logits)
    # Bans on a few columns: O(N) work.
    early = generated < knobs.min_new_tokens
    never = tf.fill(tf.shape(early), NEG_INF)
    eos_column = tf.where(early, NEG_INF, logits[:, EOS_ID])
    logits = _set_columns(logits, [*banned, EOS_ID], [never] * len(banned) + [eos_column])
    return tf.cond(tf.reduce_any(knobs.no_repeat_ngram_size > 0),
                   lambda: _end_if_stuck(no_repeat_ngram(logits, history, cur_len, knobs.no_repeat_ngram_size)),
                   lambda: logits)


def _set_columns(logits, columns: list[int], values: list):
    """logits with column c of every row replaced by values[i] [N] (a scatter, not a pass)."""
    rows = tf.range(tf.shape(logits)[0])
    indices = tf.concat([tf.stack([rows, tf.fill(tf.shape(rows), c)], axis=1) for c in columns], axis=0)
    return tf.tensor_scatter_nd_update(logits, indices, tf.concat(values, axis=0))


def _end_if_stuck(logits):
    """When the rules ban every token (a tiny vocabulary, say), end the text instead."""
    stuck = tf.reduce_max(logits, axis=1) <= NEG_INF / 2
    eos = tf.where(stuck, 0.0, logits[:, EOS_ID])
    return _set_columns(logits, [EOS_ID], [eos])


def repetition_penalty(logits, seen, penalty):
    """CTRL's penalty on logits [B, V] of the tokens already seen (`seen` [B, V] > 0): positive
    logits divided by penalty [B], negative ones multiplied.
    """
    penalty = penalty[:, None]
    penalized = tf.where(logits > 0, logits / penalty, logits * penalty)
    return tf.where(seen > 0, penalized, logits)


def no_repeat_ngram(logits, history, cur_len, size):
    """Bans, per row, every token t such that (last size-1 tokens, t) already occurred."""
    size = tf.minimum(size, MAX_NGRAM)
    length = tf.shape(history)[1]
    positions = tf.range(length)[None, :]  # candidate n-gram starts i
    match = tf.ones_like(history, tf.bool)
    for j in range(MAX_NGRAM - 1):  # compare history[i + j] with the prefix's j-th token
        active = j < size - 1  # [N]
        prefix_pos = cur_len - (size - 1) + j  # [N]
        prefix_tok = tf.gather(history, tf.clip_by_value(prefix_pos, 0, length - 1), batch_dims=1)
        shifted = tf.roll(history, shift=-j, axis=1)
        same = tf.equal(shifted, prefix_tok[:, None])
        match = tf.logical_and(match, tf.logical_or(~active[:, None], same))
    target_pos = positions + size[:, None] - 1
    valid = tf.logical_and(target_pos < cur_len[:, None], size[:, None] > 0)
    valid = tf.logical_and(valid, (cur_len >= size - 1)[:, None])
    hit = tf.logical_and(match, valid)
    tokens = tf.gather(history, tf.clip_by_value(target_pos, 0, length - 1), batch_dims=1)
    rows = tf.broadcast_to(tf.range(tf.shape(history)[0])[:, None], tf.shape(history))
    indices = tf.stack([tf.boolean_mask(rows, hit), tf.boolean_mask(tokens, hit)], axis=1)
    counts = tf.scatter_nd(indices, tf.ones([tf.shape(indices)[0]]), tf.shape(logits))
    return tf.where(counts > 0, NEG_INF, logits)
