"""What the language model and the seq2seq model share: precision, initializer, the output
layer's parts and logits, inverted dropout, and the named salts of their dropout seeds.

Every dropout mask is drawn from a stateless RNG keyed by the step's seed [2] plus a salt
(`dropout_mask`), so a training step is a pure function of its inputs (resume and
multi-replica training stay exact). A salt names where the mask is applied; the values
are part of the trained models' reproducibility and never change.

Example:
    >>> check_precision("mixed_bfloat16")
    >>> uniform_init(0.1)(shape=(2, 3)).shape
    TensorShape([2, 3])
"""

from __future__ import annotations

import keras
import tensorflow as tf

from trainer.layers.output_layer import OutputParts, output_logits
from trainer.layers.recurrent_base import dropout_mask

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


class Salt:
    """Salts of the dropout masks (added to the seed's second word)."""

    EMBEDDING = 100  # on the (source) embedding
    LAYER_OUTPUT = 101  # + i: on recurrent layer i's outputs (the LM's layers, the encoder's)
    TARGET_EMBEDDING = 200  # seq2seq: on the target embedding
    DECODER_OUTPUT = 201  # + i: seq2seq: on decoder layer i's outputs
    ATTENTIONAL = 300  # seq2seq: on the attentional vector
    EMBEDDING_WORDS = 400  # the LM's embedding dropout: which words of the vocabulary drop
    # Seeds of the recurrent layers' own (recurrent) dropout, 1000 apart per layer:
    LM_LAYER = 1000  # + 1000 * i
    ENCODER_FORWARD = 10_000  # + 1000 * i
    ENCODER_BACKWARD = 20_000  # + 1000 * i
    DECODER = 30_000  # + 1000 * i


def check_precision(precision: str) -> None:
    """Raises ValueError unless `precision` is one of PRECISIONS."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def uniform_init(scale: float) -> keras.initializers.Initializer:
    """U(-scale, scale), the initializer of every weight (Zaremba et al.)."""
    return keras.initializers.RandomUniform(-scale, scale, seed=None)


class OutputAndDropout:
    """Mixin of both models: `output_embedding` (the embedding the output layer may tie to),
    `projection`, `output_layer`, `output_bias`, `tie_embeddings` and `dropout` are theirs."""

    def _output_parts(self) -> OutputParts:
        return OutputParts(self.output_embedding, self.projection, self.output_layer,
                           self.output_bias if self.tie_embeddings else None)

    def _logits(self, x):
        """Features [..., H] -> logits [..., V] float32."""
        return output_logits(x, self._output_parts())

    def _dropout(self, x, training, seed, salt: int):
        """Inverted dropout on [B, T, D] with one mask per sequence (the same at every step)."""
        if not training or self.dropout <= 0:
            return x
        return x * dropout_mask([tf.shape(x)[0], 1, tf.shape(x)[-1]], self.dropout, seed, salt, x.dtype)
