"""Beam search in one graph loop, with GNMT length normalisation and an early stop.

Each prompt keeps `beam_width` alive hypotheses (per row; the batch runs at the largest
width and masks the rest) and a pool of finished ones. At each step the 2W best
extensions are split: those ending in <eos> (or at `max_new_tokens`) join the finished
pool (if ranked among the W best), scored by log P / ((5 + length) / 6) ** length_penalty;
the W best others stay alive. A row is done when its worst kept finished score beats the best an alive beam
could still reach (the tensor2tensor rule), and the loop ends when every row is done.

Example:
    >>> out = beam_search(model, prompt_ids, prompt_lengths, Knobs.defaults(2, beam_width=4))
    >>> out.token_ids.shape   # [B, W, T], best first
    TensorShape([2, 4, 32])
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from pipeline.constants import EOS_ID
from serving.generate import output_prefix, prime, seen_tokens
from serving.knobs import Knobs
from serving.logits_processors import NEG_INF, NEVER_TEXT, apply_processors

_DEAD = NEG_INF / 2  # scores below this are not hypotheses


class BeamOutput(NamedTuple):
    token_ids: tf.Tensor  # int32 [B, W, T], best hypothesis first, 0-padded
    lengths: tf.Tensor  # int32 [B, W]
    log_prob: tf.Tensor  # float32 [B, W] model log-probability of each hypothesis
    score: tf.Tensor  # float32 [B, W] the length-normalised search score


def length_norm(length, alpha):
    """GNMT: ((5 + length) / 6) ** alpha."""
    return tf.pow((5.0 + tf.cast(length, tf.float32)) / 6.0, alpha)


def beam_search(model, prompt_ids, prompt_lengths, knobs: Knobs, banned=NEVER_TEXT) -> BeamOutput:
    """The `beam_width` best continuations of each prompt [B, P] (right-padded, lengths
    [B] >= 1), best first; `banned`: the token ids never chosen."""
    prompt_ids = tf.cast(prompt_ids, tf.int32)
    prompt_lengths = tf.cast(prompt_lengths, tf.int32)
    batch = tf.shape(prompt_ids)[0]
    width = tf.maximum(tf.reduce_max(knobs.beam_width), 1)
    widths = tf.clip_by_value(knobs.beam_width, 1, width)
    max_new = tf.maximum(tf.reduce_max(knobs.max_new_tokens), 1)
    row_max = tf.maximum(knobs.max_new_tokens, 1)
    alpha = knobs.length_penalty

    logits, states = prime(model, prompt_ids, prompt_lengths)
    vocab = tf.shape(logits)[1]

    def tile(x):
        return tf.repeat(x, width, axis=0)  # row b, beam w -> b * W + w

    flat_knobs = Knobs(*[tile(k) for k in knobs])
    prefix_ids, prefix_lengths = output_prefix(model, prompt_ids, prompt_lengths)
    history = tile(tf.pad(prefix_ids, [[0, 0], [0, max_new]]))
    last_slot = tf.shape(history)[1] - 1
    cur_len = tile(prefix_lengths)
    seen = tile(seen_tokens(prefix_ids, prefix_lengths, vocab))
    logits, states = tile(logits), [tile(s) for s in states]
    beam_index = tf.range(width)[None, :]
    in_width = beam_index < widths[:, None]  # [B, W]
    alive_score = tf.where(tf.logical_and(tf.equal(beam_index, 0), in_width), 0.0, NEG_INF)
    alive_raw = tf.zeros([batch, width])
    alive_seq = tf.zeros([batch, width, max_new], tf.int32)
    fin_score = tf.fill([batch, width], NEG_INF)
    fin_raw = tf.zeros([batch, width])
    fin_seq = tf.zeros([batch, width, max_new], tf.int32)
    fin_len = tf.zeros([batch, width], tf.int32)

    def row_done(t, alive_score, fin_score):
        best_alive = alive_score[:, 0] / length_norm(row_max, alpha)
        worst_kept = tf.gather(fin_score, widths - 1, batch_dims=1)
        no_alive = alive_score[:, 0] <= _DEAD
        return tf.logical_or(no_alive, tf.logical_and(worst_kept > _DEAD, worst_kept >= best_alive))

    def cond(t, alive_score, alive_raw, alive_seq, fin_score, *_):
        return tf.logical_and(t < max_new, tf.logical_not(tf.reduce_all(row_done(t, alive_score, fin_score))))

    def body(t, alive_score, alive_raw, alive_seq, fin_score, fin_raw, fin_seq, fin_len,
             history, cur_len, seen, logits, states):
        generated = tf.fill([batch * width], t)
        processed = apply_processors(logits, flat_knobs, seen, history, cur_len, generated, banned)
        step_lp = tf.reshape(tf.nn.log_softmax(processed), [batch, width, vocab])
        raw_lp = tf.reshape(tf.nn.log_softmax(logits), [batch, width, vocab])
        total = tf.reshape(alive_score[:, :, None] + step_lp, [batch, width * vocab])
        raw_total = tf.reshape(alive_raw[:, :, None] + raw_lp, [batch, width * vocab])
        cand_score, cand_index = tf.math.top_k(total, k=2 * width)
        cand_raw = tf.gather(raw_total, cand_index, batch_dims=1)
        parent, token = cand_index // vocab, cand_index % vocab
        position = tf.one_hot(t, max_new, dtype=tf.int32)[None, None, :]
        cand_seq = tf.gather(alive_seq, parent, batch_dims=1) * (1 - position) + token[:, :, None] * position
        finishing = tf.logical_or(tf.equal(token, EOS_ID), (t + 1 >= row_max)[:, None])
        # Only an <eos> among the W best extensions finishes a hypothesis (so a beam of
        # width 1 is exactly greedy); lower-ranked ones are dropped, not kept alive.
        top_ranked = tf.range(2 * width)[None, :] < widths[:, None]
        valid = tf.logical_and(cand_score > _DEAD, top_ranked)
        # Finished pool: the best W of old and new, length-normalised.
        new_fin = tf.where(tf.logical_and(finishing, valid), cand_score / length_norm(t + 1, alpha)[..., None], NEG_INF)
        pool_score = tf.concat([fin_score, new_fin], axis=1)
        pool_score = tf.where(tf.concat([in_width, tf.ones_like(new_fin, tf.bool)], 1), pool_score, NEG_INF)
        fin_score, keep = tf.math.top_k(pool_score, k=width)
        fin_score = tf.where(in_width, fin_score, NEG_INF)
        fin_raw = tf.gather(tf.concat([fin_raw, cand_raw], 1), keep, batch_dims=1)
        fin_seq = tf.gather(tf.concat([fin_seq, cand_seq], 1), keep, batch_dims=1)
        fin_len = tf.gather(tf.concat([fin_len, tf.fill(tf.shape(new_fin), t + 1)], 1), keep, batch_dims=1)
        # Alive: the best W extensions that did not finish.
        alive_cand = tf.where(finishing, NEG_INF, cand_score)
        alive_score, pick = tf.math.top_k(alive_cand, k=width)
        alive_score = tf.where(in_width, alive_score, NEG_INF)
        alive_raw = tf.gather(cand_raw, pick, batch_dims=1)
        alive_seq = tf.gather(cand_seq, pick, batch_dims=1)
        source = tf.reshape(tf.gather(parent, pick, batch_dims=1) + tf.range(batch)[:, None] * width, [-1])
        new_token = tf.reshape(tf.gather(token, pick, batch_dims=1), [-1])
        history, cur_len, seen = tf.gather(history, source), tf.gather(cur_len, source), tf.gather(seen, source)
        states = [tf.gather(s, source) for s in states]
        slot = tf.stack([tf.range(batch * width), tf.minimum(cur_len, last_slot)], axis=1)
        history = tf.tensor_scatter_nd_update(history, slot, new_token)
        seen = tf.maximum(seen, tf.one_hot(new_token, vocab))
        logits, states = model.step(new_token, states)
        return (t + 1, alive_score, alive_raw, alive_seq, fin_score, fin_raw, fin_seq, fin_len,
                history, cur_len + 1, seen, logits, states)

    init = (tf.constant(0), alive_score, alive_raw, alive_seq, fin_score, fin_raw, fin_seq, fin_len,
            history, cur_len, seen, logits, states)
    out = tf.while_loop(cond, body, init, maximum_iterations=max_new)
    _, _, _, _, fin_score, fin_raw, fin_seq, fin_len = out[:8]
    dead = fin_score <= _DEAD
    return BeamOutput(
        token_ids=tf.where(dead[:, :, None], 0, fin_seq),
        lengths=tf.where(dead, 0, fin_len),
        log_prob=tf.where(dead, NEG_INF, fin_raw),
        score=fin_score,
    )
