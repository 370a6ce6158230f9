"""Hand-built step models for decoder tests: their next-token distributions are known."""

import numpy as np
import tensorflow as tf


class BigramModel:
    """logits of the next token = log_probs[last token]; the state is a dummy [N, 1]."""

    def __init__(self, probs):
        probs = np.asarray(probs, np.float64)
        self.log_probs = tf.constant(np.log(np.maximum(probs, 1e-30)), tf.float32)

    def initial_state(self, batch):
        return [tf.zeros([batch, 1])]

    def step(self, ids, states):
        return tf.gather(self.log_probs, ids), states


def scripted(next_token, vocab, scale=100.0):
    """A BigramModel whose next token after t is next_token[t] (one-hot x a large number)."""
    probs = np.full((vocab, vocab), 1e-30)
    for t, n in enumerate(next_token):
        probs[t, n] = 1.0
    model = BigramModel(np.ones((vocab, vocab)))
    model.log_probs = tf.constant(np.where(probs > 0.5, scale, 0.0), tf.float32)
    return model
