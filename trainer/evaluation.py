"""Perplexity of a language model over a whole split, counted as the papers count it.

Every token of the stream but the first is predicted once (so <eos> counts), with the
state carried from the first token to the last: batch 1, long windows. The result does
not depend on the window length, only the speed does.

Example:
    >>> result = evaluate(model, load_token_stream(dataset_dir, "test"))
    >>> result.perplexity, result.tokens
    (114.2, 82429)
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Summed negative log-likelihood over `tokens` predictions. Example:
    `EvalResult(nll=4.6 * 100, tokens=100).perplexity` -> 99.48 (exp of the mean loss)."""

    nll: float  # total negative log-likelihood, nats
    tokens: int  # predicted tokens

    @property
    def loss(self) -> float:
        """Mean negative log-likelihood per token, nats."""
        return self.nll / max(self.tokens, 1)

    @property
    def perplexity(self) -> float:
        """exp(mean loss)."""
        return math.exp(self.loss)

    @property
    def bits_per_token(self) -> float:
        """Mean loss in bits (nats / ln 2)."""
        return self.loss / math.log(2)


def make_eval_step(model):
    """Compiled (x [B, T], y [B, T], states) -> (nll_sum, new_states)."""

    ids = tf.TensorSpec([None, None], tf.int32)
    state = [tf.TensorSpec([None, model.hidden_dim], tf.float32) for _ in model.initial_state(1)]

    @tf.function(input_signature=[ids, ids, state])
    def eval_step(x, y, states):
        nll, new_states = model.nll(x, y, states, training=False)
        return tf.reduce_sum(tf.cast(nll, tf.float64)), new_states

    return eval_step


def evaluate(model, stream: np.ndarray, window: int = 1000, eval_step=None) -> EvalResult:
    """NLL and perplexity of `stream` (int32 [N]) under `model`: N - 1 predictions."""
    if len(stream) < 2:
        return EvalResult(0.0, 0)
    step = eval_step or make_eval_step(model)
    x, y = stream[:-1][None, :], stream[1:][None, :]
    states = model.initial_state(1)
    total = 0.0
    for start in range(0, x.shape[1], window):
        nll, states = step(x[:, start:start + window], y[:, start:start + window], states)
        total += float(nll)
    return EvalResult(total, int(x.shape[1]))
