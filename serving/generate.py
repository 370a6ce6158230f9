"""Token-by-token generation in one graph loop (greedy, sampling, top-k, top-p).

The model is reached only through `step(ids [N], states) -> (logits [N, V], states)`
and `initial_state(N)` (and, when it has one, `prime(ids, lengths)` to read a whole
prompt at once). The loop is a `tf.while_loop` over a fixed-size buffer with
`maximum_iterations`; a row stops at <eos> or its own `max_new_tokens`, and the loop
stops when every row has stopped. Prompt positions are never overwritten.

Example:
    >>> out = generate(model, prompt_ids, prompt_lengths, Knobs.defaults(2), get_strategy("greedy"))
    >>> out.token_ids.shape, out.lengths.numpy()
    (TensorShape([2, 32]), array([7, 32], dtype=int32))
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from pipeline.constants import EOS_ID, PAD_ID
from serving.counter_rng import row_uniform
from serving.knobs import Knobs
from serving.logits_processors import NEVER_TEXT, apply_processors


class DecodeOutput(NamedTuple):
    token_ids: tf.Tensor  # int32 [B, T] new tokens (an <eos> included), 0-padded
    lengths: tf.Tensor  # int32 [B]
    log_prob: tf.Tensor  # float32 [B] model log-probability of the new tokens


def prime(model, prompt_ids, prompt_lengths):
    """Reads each prompt: (logits after its last token [B, V], states)."""
    if hasattr(model, "prime"):
        return model.prime(prompt_ids, prompt_lengths)
    batch, steps = tf.shape(prompt_ids)[0], tf.shape(prompt_ids)[1]
    states = model.initial_state(batch)
    logits, _ = model.step(prompt_ids[:, 0], states)
    last = tf.zeros_like(logits)

    def body(t, states, last):
        logits, new_states = model.step(prompt_ids[:, t], states)
        active = t < prompt_lengths
        states = [tf.where(active[:, None], n, s) for n, s in zip(new_states, states)]
        last = tf.where(tf.equal(t, prompt_lengths - 1)[:, None], logits, last)
        return t + 1, states, last

    _, states, last = tf.while_loop(lambda t, *_: t < steps, body, (0, states, last), maximum_iterations=steps)
    return last, states


def output_prefix(model, prompt_ids, prompt_lengths):
    """What the output continues, for history-based rules and positions: the prompt for a
    language model; nothing for a model whose prompt is another sequence (a seq2seq
    source, `model.prompt_is_prefix = False`, whose ids are not even target ids)."""
    if getattr(model, "prompt_is_prefix", True):
        return prompt_ids, prompt_lengths
    batch = tf.shape(prompt_ids)[0]
    return tf.zeros([batch, 0], tf.int32), tf.zeros([batch], tf.int32)


def seen_tokens(prompt_ids, prompt_lengths, vocab):
    """[B, V] float32: 1 where a token occurs in the prompt."""
    mask = tf.sequence_mask(prompt_lengths, tf.shape(prompt_ids)[1])
    where = tf.cast(tf.where(mask), tf.int32)
    indices = tf.stack([where[:, 0], tf.gather_nd(prompt_ids, where)], axis=1)
    counts = tf.scatter_nd(indices, tf.ones([tf.shape(indices)[0]]), [tf.shape(prompt_ids)[0], vocab])
    return tf.minimum(counts, 1.0)


def generate(model, prompt_ids, prompt_lengths, knobs: Knobs, strategy, banned=NEVER_TEXT) -> DecodeOutput:
    """New tokens for each prompt [B, P] (right-padded, lengths [B] >= 1); `banned`: the
    token ids never chosen (`logits_processors.NEVER_TEXT` by default)."""
    prompt_ids = tf.cast(prompt_ids, tf.int32)
    prompt_lengths = tf.cast(prompt_lengths, tf.int32)
    batch = tf.shape(prompt_ids)[0]
    max_new = tf.maximum(tf.reduce_max(knobs.max_new_tokens), 0)
    logits, states = prime(model, prompt_ids, prompt_lengths)
    prefix_ids, prefix_lengths = output_prefix(model, prompt_ids, prompt_lengths)
    history = tf.pad(prefix_ids, [[0, 0], [0, max_new]])
    last_slot = tf.shape(history)[1] - 1
    vocab = tf.shape(logits)[1]
    rows = tf.range(batch)
    uses_seen = tf.reduce_any(tf.not_equal(knobs.repetition_penalty, 1.0))  # only the penalty reads it

    def cond(t, finished, *_):
        return tf.logical_and(t < max_new, tf.logical_not(tf.reduce_all(finished)))

    def body(t, finished, history, cur_len, generated, log_prob, seen, logits, states):
        active = tf.logical_not(finished)
        processed = apply_processors(logits, knobs, seen, history, cur_len, generated, banned)
        token = strategy.select(processed, knobs, row_uniform(knobs.seed, t))
        token = tf.where(active, token, PAD_ID)
        step_lp = tf.gather(logits, token, batch_dims=1) - tf.reduce_logsumexp(logits, axis=1)
        log_prob += tf.where(active, step_lp, 0.0)
        slot = tf.stack([rows, tf.minimum(cur_len, last_slot)], axis=1)
        history = tf.tensor_scatter_nd_update(
            history, slot, tf.where(active, token, tf.gather_nd(history, slot)))
        seen = tf.cond(uses_seen, lambda: tf.maximum(
            seen, tf.one_hot(token, vocab) * tf.cast(active, tf.float32)[:, None]), lambda: seen)
        cur_len += tf.cast(active, tf.int32)
        generated += tf.cast(active, tf.int32)
        done = tf.logical_or(tf.equal(token, EOS_ID), generated >= knobs.max_new_tokens)
        finished = tf.logical_or(finished, tf.logical_and(active, done))
        logits, states = model.step(token, states)
        return t + 1, finished, history, cur_len, generated, log_prob, seen, logits, states

    init = (tf.constant(0), knobs.max_new_tokens <= 0, history, prefix_lengths, tf.zeros([batch], tf.int32),
            tf.zeros([batch], tf.float32), seen_tokens(prefix_ids, prefix_lengths, vocab), logits, states)
    _, _, history, _, generated, log_prob, _, _, _ = tf.while_loop(
        cond, body, init, maximum_iterations=max_new)
    positions = prefix_lengths[:, None] + tf.range(max_new)[None, :]
    tokens = tf.gather(history, tf.minimum(positions, last_slot), batch_dims=1)
    tokens = tf.where(tf.range(max_new)[None, :] < generated[:, None], tokens, PAD_ID)
    return DecodeOutput(tokens, generated, log_prob)
