"""The per-request generation knobs, each a [B] tensor (one value per prompt).

Every export signature takes these as inputs with a batch dimension, so one batch may
mix temperatures, k, p, seeds and lengths.

Example:
    >>> knobs = Knobs.defaults(batch=2, max_new_tokens=20)._replace(k=tf.constant([5, 40]))
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

# name -> (dtype, default)
KNOB_SPECS: dict[str, tuple[tf.DType, float | int]] = {
    "max_new_tokens": (tf.int32, 32),
    "min_new_tokens": (tf.int32, 0),
    "temperature": (tf.float32, 1.0),
    "k": (tf.int32, 40),
    "p": (tf.float32, 0.9),
    "seed": (tf.int64, 0),
    "repetition_penalty": (tf.float32, 1.0),
    "no_repeat_ngram_size": (tf.int32, 0),
    "beam_width": (tf.int32, 4),
    "length_penalty": (tf.float32, 0.6),
}

MAX_NGRAM = 8  # no_repeat_ngram_size above this is clipped (graph-friendly fixed bound)


class Knobs(NamedTuple):
    max_new_tokens: tf.Tensor
    min_new_tokens: tf.Tensor
    temperature: tf.Tensor
    k: tf.Tensor
    p: tf.Tensor
    seed: tf.Tensor
    repetition_penalty: tf.Tensor
    no_repeat_ngram_size: tf.Tensor
    beam_width: tf.Tensor
    length_penalty: tf.Tensor

    @classmethod
    def defaults(cls, batch: int, **values) -> "Knobs":
        """Knobs for `batch` rows: the defaults, overridden by scalars or [B] values."""
        out = {}
        for name, (dtype, default) in KNOB_SPECS.items():
            value = values.pop(name, default)
            out[name] = tf.broadcast_to(tf.cast(value, dtype), [batch])
        if values:
            raise ValueError(f"unknown knobs {sorted(values)}; known: {sorted(KNOB_SPECS)}")
        return cls(**out)

    @classmethod
    def from_inputs(cls, inputs: dict, batch) -> "Knobs":
        """Knobs from signature inputs; a knob a signature does not take gets its default."""
        out = {}
        for name, (dtype, default) in KNOB_SPECS.items():
            value = inputs.get(name)
            out[name] = tf.cast(value, dtype) if value is not None else tf.fill([batch], tf.cast(default, dtype))
        return cls(**out)
