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

from pipeline.core.constants import EOS_ID
from serving.decoders.generate import output_prefix, prime, seen_tokens
from serving.decoders.logits_processors import NEG_INF, NEVER_TEXT, apply_processors
from serving.knobs import Knobs

_DEAD = NEG_INF / 2  # scores below this are not hypotheses


class BeamOutput(NamedTuple):
    """Beam search's W best hypotheses per row, best first (`beam_search`'s example shows the shapes)."""

    token_ids: tf.Tensor  # int32 [B, W, T], best hypothesis first, 0-padded
    lengths: tf.Tensor  # int32 [B, W]
    log_prob: tf.Tensor  # float32 [B, W] model log-probability of each hypothesis
    score: tf.Tensor  # float32 [B, W] the length-normalised search score


def length_norm(length, alpha):
    """GNMT: ((5 + length) / 6) ** alpha."""
    return tf.pow((5.0 + tf.cast(length, tf.float32)) / 6.0, alpha)


class BeamState(NamedTuple):
    """The loop's state for B rows x W beams (the decoder's tensors flat: row b, beam w at
    b * W + w), the way keras-hub's BeamSampler names its reshapes."""

    alive_score: tf.Tensor  # float32 [B, W] search score of each alive beam (NEG_INF: none)
    alive_raw: tf.Tensor  # float32 [B, W] its model log-probability
    alive_seq: tf.Tensor  # int32 [B, W, T] its tokens
    fin_score: tf.Tensor  # float32 [B, W] length-normalised score of each finished one
    fin_raw: tf.Tensor  # float32 [B, W]
    fin_seq: tf.Tensor  # int32 [B, W, T]
    fin_len: tf.Tensor  # int32 [B, W]
    history: tf.Tensor  # int32 [B*W, prefix + T] prefix and chosen tokens (for the processors)
    cur_len: tf.Tensor  # int32 [B*W] tokens in `history`
    seen: tf.Tensor  # float32 [B*W, V] 1 where a token has been seen (repetition penalty)
    logits: tf.Tensor  # float32 [B*W, V] the next token's logits
    states: list  # the model's recurrent states, each [B*W, ...]


class _Search(NamedTuple):
    """What every step of one search reads: sizes, per-row limits and knobs."""

    batch: tf.Tensor
    width: tf.Tensor  # the batch's widest beam W
    widths: tf.Tensor  # int32 [B] each row's own width
    in_width: tf.Tensor  # bool [B, W] beams a row uses
    max_new: tf.Tensor
    row_max: tf.Tensor  # int32 [B] each row's max_new_tokens (at least 1)
    alpha: tf.Tensor  # float32 [B] length penalty
    vocab: tf.Tensor
    flat_knobs: Knobs  # each knob [B*W]
    banned: object


def beam_search(model, prompt_ids, prompt_lengths, knobs: Knobs, banned=NEVER_TEXT) -> BeamOutput:
    """The `beam_width` best continuations of each prompt [B, P] (right-padded, lengths
    [B] >= 1), best first; `banned`: the token ids never chosen.

    Example:
        >>> out = beam_search(model, tf.constant([[1, 7]]), tf.constant([2]), Knobs.defaults(1, beam_width=2))
        >>> out.token_ids.shape, out.lengths.shape   # [B, W, T], [B, W]
        (TensorShape([1, 2, 32]), TensorShape([1, 2]))
    """
    search, state = _start(model, tf.cast(prompt_ids, tf.int32), tf.cast(prompt_lengths, tf.int32), knobs, banned)

    def cond(t, state):
        return tf.logical_and(t < search.max_new, tf.logical_not(tf.reduce_all(_rows_done(search, state))))

    def body(t, state):
        return t + 1, _step(model, search, t, state)

    _, state = tf.while_loop(cond, body, (tf.constant(0), state), maximum_iterations=search.max_new)
    dead = state.fin_score <= _DEAD
    return BeamOutput(
        token_ids=tf.where(dead[:, :, None], 0, state.fin_seq),
        lengths=tf.where(dead, 0, state.fin_len),
        log_prob=tf.where(dead, NEG_INF, state.fin_raw),
        score=state.fin_score,
    )


def _start(model, prompt_ids, prompt_lengths, knobs: Knobs, banned) -> tuple[_Search, BeamState]:
    """Primes the model on the prompts and tiles everything to B x W beams; only beam 0
    of each row starts alive."""
    batch = tf.shape(prompt_ids)[0]
    width = tf.maximum(tf.reduce_max(knobs.beam_width), 1)
    widths = tf.clip_by_value(knobs.beam_width, 1, width)
    max_new = tf.maximum(tf.reduce_max(knobs.max_new_tokens), 1)
    logits, states = prime(model, prompt_ids, prompt_lengths)
    vocab = tf.shape(logits)[1]

    def tile(x):
        return tf.repeat(x, width, axis=0)  # row b, beam w -> b * W + w

    beam_index = tf.range(width)[None, :]
    in_width = beam_index < widths[:, None]  # [B, W]
    search = _Search(batch, width, widths, in_width, max_new, tf.maximum(knobs.max_new_tokens, 1),
                     knobs.length_penalty, vocab, Knobs(*[tile(k) for k in knobs]), banned)
    prefix_ids, prefix_lengths = output_prefix(model, prompt_ids, prompt_lengths)
    state = BeamState(
        alive_score=tf.where(tf.logical_and(tf.equal(beam_index, 0), in_width), 0.0, NEG_INF),
        alive_raw=tf.zeros([batch, width]),
        alive_seq=tf.zeros([batch, width, max_new], tf.int32),
        fin_score=tf.fill([batch, width], NEG_INF),
        fin_raw=tf.zeros([batch, width]),
        fin_seq=tf.zeros([batch, width, max_new], tf.int32),
        fin_len=tf.zeros([batch, width], tf.int32),
        history=tile(tf.pad(prefix_ids, [[0, 0], [0, max_new]])),
        cur_len=tile(prefix_lengths),
        seen=tile(seen_tokens(prefix_ids, prefix_lengths, vocab)),
        logits=tile(logits),
        states=[tile(s) for s in states],
    )
    return search, state


def _rows_done(search: _Search, state: BeamState):
    """bool [B]: no alive beam, or the worst kept finished score beats the best score an
    alive beam could still reach (the tensor2tensor rule)."""
    best_alive = state.alive_score[:, 0] / length_norm(search.row_max, search.alpha)
    worst_kept = tf.gather(state.fin_score, search.widths - 1, batch_dims=1)
    no_alive = state.alive_score[:, 0] <= _DEAD
    return tf.logical_or(no_alive, tf.logical_and(worst_kept > _DEAD, worst_kept >= best_alive))


def _step(model, search: _Search, t, state: BeamState) -> BeamState:
    """One token for every beam: the 2W best extensions of each row, split into finished
    and alive, then the decoder reordered to the surviving beams and stepped."""
    cand_score, cand_raw, cand_seq, parent, token = _candidates(search, t, state)
    finishing = tf.logical_or(tf.equal(token, EOS_ID), (t + 1 >= search.row_max)[:, None])
    fin = _keep_finished(search, t, state, cand_score, cand_raw, cand_seq, finishing)
    alive_cand = tf.where(finishing, NEG_INF, cand_score)  # alive: the best W that did not finish
    alive_score, pick = tf.math.top_k(alive_cand, k=search.width)
    alive = (tf.where(search.in_width, alive_score, NEG_INF), tf.gather(cand_raw, pick, batch_dims=1),
             tf.gather(cand_seq, pick, batch_dims=1))
    history, cur_len, seen, logits, states = _advance_decoder(model, search, state, parent, token, pick)
    return BeamState(*alive, *fin, history, cur_len, seen, logits, states)


def _candidates(search: _Search, t, state: BeamState):
    """The 2W best one-token extensions of each row's alive beams: search score, model
    log-probability, tokens [B, 2W, T], parent beam and token [B, 2W]."""
    batch, width, vocab = search.batch, search.width, search.vocab
    generated = tf.fill([batch * width], t)
    processed = apply_processors(state.logits, search.flat_knobs, state.seen, state.history, state.cur_len,
                                 generated, search.banned)
    step_lp = tf.reshape(tf.nn.log_softmax(processed), [batch, width, vocab])
    raw_lp = tf.reshape(tf.nn.log_softmax(state.logits), [batch, width, vocab])
    total = tf.reshape(state.alive_score[:, :, None] + step_lp, [batch, width * vocab])
    raw_total = tf.reshape(state.alive_raw[:, :, None] + raw_lp, [batch, width * vocab])
    cand_score, cand_index = tf.math.top_k(total, k=2 * width)
    cand_raw = tf.gather(raw_total, cand_index, batch_dims=1)
    parent, token = cand_index // vocab, cand_index % vocab
    position = tf.one_hot(t, search.max_new, dtype=tf.int32)[None, None, :]
    cand_seq = tf.gather(state.alive_seq, parent, batch_dims=1) * (1 - position) + token[:, :, None] * position
    return cand_score, cand_raw, cand_seq, parent, token


def _keep_finished(search: _Search, t, state: BeamState, cand_score, cand_raw, cand_seq, finishing):
    """The finished pool: the best W of the old ones and the finishing candidates,
    length-normalised -> (score, raw, seq, len). Only an <eos> among the W best
    extensions finishes a hypothesis (so a beam of width 1 is exactly greedy);
    lower-ranked ones are dropped, not kept alive."""
    top_ranked = tf.range(2 * search.width)[None, :] < search.widths[:, None]
    valid = tf.logical_and(cand_score > _DEAD, top_ranked)
    new_fin = tf.where(tf.logical_and(finishing, valid),
                       cand_score / length_norm(t + 1, search.alpha)[..., None], NEG_INF)
    pool_score = tf.concat([state.fin_score, new_fin], axis=1)
    pool_score = tf.where(tf.concat([search.in_width, tf.ones_like(new_fin, tf.bool)], 1), pool_score, NEG_INF)
    fin_score, keep = tf.math.top_k(pool_score, k=search.width)
    return (tf.where(search.in_width, fin_score, NEG_INF),
            tf.gather(tf.concat([state.fin_raw, cand_raw], 1), keep, batch_dims=1),
            tf.gather(tf.concat([state.fin_seq, cand_seq], 1), keep, batch_dims=1),
            tf.gather(tf.concat([state.fin_len, tf.fill(tf.shape(new_fin), t + 1)], 1), keep, batch_dims=1))


def _advance_decoder(model, search: _Search, state: BeamState, parent, token, pick):
    """The decoder's flat tensors reordered to the picked beams' parents, the new tokens
    appended, and the model stepped -> (history, cur_len, seen, logits, states)."""
    batch, width = search.batch, search.width
    source = tf.reshape(tf.gather(parent, pick, batch_dims=1) + tf.range(batch)[:, None] * width, [-1])
    new_token = tf.reshape(tf.gather(token, pick, batch_dims=1), [-1])
    history, cur_len, seen = (tf.gather(state.history, source), tf.gather(state.cur_len, source),
                              tf.gather(state.seen, source))
    states = [tf.gather(s, source) for s in state.states]
    last_slot = tf.shape(history)[1] - 1
    slot = tf.stack([tf.range(batch * width), tf.minimum(cur_len, last_slot)], axis=1)
    history = tf.tensor_scatter_nd_update(history, slot, new_token)
    seen = tf.maximum(seen, tf.one_hot(new_token, search.vocab))
    logits, states = model.step(new_token, states)
    return history, cur_len + 1, seen, logits, states
