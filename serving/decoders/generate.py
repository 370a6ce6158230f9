"""Token-by-token generation in one graph loop (greedy, sampling, top-k, top-p).

The model is reached only through `step(ids [N], states) -> (logits [N, V], states)`
and `initial_state(N)` (and, when it has one, `prime(ids, lengths)` to read a whole
prompt at once). The loop is a `tf.while_loop` over a fixed-size buffer with
`maximum_iterations`; a row stops at <eos> or its own `max_new_tokens`, and the loop
stops when every row has stopped. Prompt positions are never overwritten.

The loop body is `decode_step`: `choose_token` (logits processors, the strategy, the
bookkeeping of a `DecodeState`) then one `model.step`. The stream signatures
(`generation_module`) call the same two functions one token per request, so a stream
reproduces `generate` token for token.

Example:
    >>> out = generate(model, prompt_ids, prompt_lengths, Knobs.defaults(2), get_strategy("greedy"))
    >>> out.token_ids.shape, out.lengths.numpy()
    (TensorShape([2, 32]), array([7, 32], dtype=int32))
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import tensorflow as tf

from pipeline.core.constants import EOS_ID, PAD_ID
from serving.decoders.counter_rng import row_uniform
from serving.decoders.logits_processors import NEVER_TEXT, apply_processors
from serving.decoders.sampling import never_inlined, update_rows
from serving.decoders.strategies import get_strategy
from serving.knobs import Knobs

STREAM_METHODS = ("greedy", "sample", "top_k", "top_p")  # the `method` input's values, in order


class DecodeOutput(NamedTuple):
    """One continuation per row from `generate`: e.g. token_ids [2, 32], lengths [2], log_prob [2]."""

    token_ids: tf.Tensor  # int32 [B, T] new tokens (an <eos> included), 0-padded
    lengths: tf.Tensor  # int32 [B]
    log_prob: tf.Tensor  # float32 [B] model log-probability of the new tokens


class DecodeState(NamedTuple):
    """What one step of the loop reads and writes, per row."""

    finished: tf.Tensor  # bool [B]: <eos> chosen or max_new_tokens reached
    history: tf.Tensor  # int32 [B, L]: the output prefix (the prompt for an LM) then the output
    cur_len: tf.Tensor  # int32 [B]: valid length of history
    generated: tf.Tensor  # int32 [B]: tokens generated so far
    log_prob: tf.Tensor  # float32 [B]: model log-probability of those tokens
    seen: tf.Tensor  # float32 [B, V]: 1 at tokens of history (read only for repetition_penalty != 1)
    logits: tf.Tensor  # float32 [B, V]: the model's logits of the next token
    states: list  # the model's states after the last token it read


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


def start_state(model, prompt_ids, prompt_lengths, knobs: Knobs, slots) -> DecodeState:
    """The state before the first new token: the prompts [B, P] read (`prime`), `slots`
    free history positions after the output prefix, nothing generated yet."""
    logits, states = prime(model, prompt_ids, prompt_lengths)
    prefix_ids, prefix_lengths = output_prefix(model, prompt_ids, prompt_lengths)
    batch = tf.shape(prompt_ids)[0]
    return DecodeState(
        finished=knobs.max_new_tokens <= 0, history=tf.pad(prefix_ids, [[0, 0], [0, slots]]),
        cur_len=prefix_lengths, generated=tf.zeros([batch], tf.int32), log_prob=tf.zeros([batch], tf.float32),
        seen=seen_tokens(prefix_ids, prefix_lengths, tf.shape(logits)[1]), logits=logits, states=states)


def choose_token(state: DecodeState, t, knobs: Knobs, strategy, banned=NEVER_TEXT):
    """One token per row from `state.logits`: (token [B] int32, <pad> for finished rows;
    the state with it recorded). `t` (scalar or [B]) is the token's index, which keys
    the counter-based RNG; the model is not called (`state.logits`, `states` stay).

    Example:
        >>> token, state = choose_token(start_state(model, ids, lengths, knobs, 8), 0, knobs, Greedy())
    """
    active = tf.logical_not(state.finished)
    logits, history, cur_len = state.logits, state.history, state.cur_len
    processed = apply_processors(logits, knobs, state.seen, history, cur_len, state.generated, banned)
    token = strategy.select(processed, knobs, row_uniform(knobs.seed, t))
    token = tf.where(active, token, PAD_ID)
    step_lp = tf.gather(logits, token, batch_dims=1) - tf.reduce_logsumexp(logits, axis=1)
    slot = tf.stack([tf.range(tf.shape(token)[0]), tf.minimum(cur_len, tf.shape(history)[1] - 1)], axis=1)
    history = tf.tensor_scatter_nd_update(history, slot, tf.where(active, token, tf.gather_nd(history, slot)))
    uses_seen = tf.reduce_any(tf.not_equal(knobs.repetition_penalty, 1.0))  # only the penalty reads it
    seen = tf.cond(uses_seen, lambda: tf.maximum(
        state.seen, tf.one_hot(token, tf.shape(logits)[1]) * tf.cast(active, tf.float32)[:, None]),
        lambda: state.seen)
    generated = state.generated + tf.cast(active, tf.int32)
    done = tf.logical_or(tf.equal(token, EOS_ID), generated >= knobs.max_new_tokens)
    return token, state._replace(
        finished=tf.logical_or(state.finished, tf.logical_and(active, done)), history=history,
        cur_len=cur_len + tf.cast(active, tf.int32), generated=generated,
        log_prob=state.log_prob + tf.where(active, step_lp, 0.0), seen=seen)


def decode_step(model, state: DecodeState, t, knobs: Knobs, strategy, banned=NEVER_TEXT) -> DecodeState:
    """The loop body: `choose_token`, then the model reads the token (new logits, states)."""
    token, state = choose_token(state, t, knobs, strategy, banned)
    logits, states = model.step(token, state.states)
    return state._replace(logits=logits, states=states)


def generate(model, prompt_ids, prompt_lengths, knobs: Knobs, strategy, banned=NEVER_TEXT) -> DecodeOutput:
    """New tokens for each prompt [B, P] (right-padded, lengths [B] >= 1); `banned`: the
    token ids never chosen (`logits_processors.NEVER_TEXT` by default)."""
    prompt_ids = tf.cast(prompt_ids, tf.int32)
    prompt_lengths = tf.cast(prompt_lengths, tf.int32)
    max_new = tf.maximum(tf.reduce_max(knobs.max_new_tokens), 0)
    init = start_state(model, prompt_ids, prompt_lengths, knobs, max_new)
    prefix_lengths = init.cur_len

    def cond(t, state):
        return tf.logical_and(t < max_new, tf.logical_not(tf.reduce_all(state.finished)))

    def body(t, state):
        return t + 1, decode_step(model, state, t, knobs, strategy, banned)

    _, state = tf.while_loop(cond, body, (tf.constant(0), init), maximum_iterations=max_new)
    return DecodeOutput(*new_tokens(state.history, prefix_lengths, state.generated, max_new), state.log_prob)


def new_tokens(history, prefix_lengths, generated, width):
    """The generated tokens of `history` [B, L]: (ids [B, width] 0-padded, lengths [B])."""
    positions = prefix_lengths[:, None] + tf.range(width)[None, :]
    tokens = tf.gather(history, tf.minimum(positions, tf.shape(history)[1] - 1), batch_dims=1)
    return tf.where(tf.range(width)[None, :] < generated[:, None], tokens, PAD_ID), generated


def method_knobs(knobs: Knobs, method) -> Knobs:
    """The knobs a row's `method` [B] (an index of STREAM_METHODS) decodes with: those of
    its own signature, so greedy rows use temperature 1 whatever the request says."""
    greedy = tf.equal(method, STREAM_METHODS.index("greedy"))
    return knobs._replace(temperature=tf.where(greedy, tf.ones_like(knobs.temperature), knobs.temperature))


class PerRowStrategy:
    """Each row's token by the strategy its `method` [B] names (an index of
    STREAM_METHODS). Every strategy sees only its own rows, as in a request of those
    rows to its own signature, and is skipped when no row asks for it.

    Example:
        >>> PerRowStrategy(tf.constant([0, 3])).select(logits, knobs, u)   # int32 [2]
    """

    def __init__(self, method) -> None:
        self.method = tf.convert_to_tensor(method, tf.int32)
        self.strategies = [get_strategy(name) for name in STREAM_METHODS]
        # Each strategy's rows as one never-inlined call: a branch not taken is then one dead
        # node, not the strategy's whole graph (a stream call runs one method, most often).
        self._calls = [never_inlined(functools.partial(update_rows, strategy.select))
                       for strategy in self.strategies]

    def select(self, logits, knobs: Knobs, u) -> tf.Tensor:
        """logits [B, V], u [B] -> token [B]: each row by the strategy its `method` names (each
        strategy runs only on its own rows, and only when it has some).
        """
        token = tf.zeros([tf.shape(logits)[0]], tf.int32)
        for index, call in enumerate(self._calls):
            rows = tf.where(tf.equal(self.method, index))[:, 0]
            token = tf.cond(tf.size(rows) > 0,
                            lambda c=call, r=rows, tok=token: c(tok, r, logits, knobs, u),
                            lambda tok=token: tok)
        return token
