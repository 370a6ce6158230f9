"""The per-request generation knobs, each a [B] tensor (one value per prompt).

Every export signature takes these as inputs with a batch dimension, so one batch may
mix temperatures, k, p, seeds and lengths.

Example:
    >>> knobs = Knobs.defaults(batch=2, max_new_tokens=20)._replace(k=tf.constant([5, 40]))
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
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

MAX_NGRAM = 8  # the largest no_repeat_ngram_size (a fixed bound keeps the graph's loop static)
MAX_BEAM_WIDTH = 64
INT32_MAX = 2**31 - 1


class KnobRange(NamedTuple):
    """The values a knob may take: low <= v <= high (low < v when `low_open`). A bound of
    None is set per export (max_new_tokens) or per row (min_new_tokens <= max_new_tokens)."""

    low: float | int | None
    high: float | int | None
    low_open: bool = False

    def text(self, high=None) -> str:
        """The interval as the error messages write it, e.g. "(0, 1]"."""
        return f"{'(' if self.low_open else '['}{self.low}, {self.high if high is None else high}]"


# Every knob but `seed` (any int64). Floats must also be finite (NaN fails every bound).
KNOB_RANGES: dict[str, KnobRange] = {
    "max_new_tokens": KnobRange(0, None),  # high: the export's max_new_tokens
    "min_new_tokens": KnobRange(0, None),  # high: the same row's max_new_tokens
    "temperature": KnobRange(1e-6, 1e6),
    "k": KnobRange(1, INT32_MAX),  # above the vocabulary size means the whole vocabulary
    "p": KnobRange(0, 1, low_open=True),
    "repetition_penalty": KnobRange(1e-3, 1e3),
    "no_repeat_ngram_size": KnobRange(0, MAX_NGRAM),
    "beam_width": KnobRange(1, MAX_BEAM_WIDTH),
    "length_penalty": KnobRange(-10, 10),
}


def knob_range_message(name: str, interval: str, value, row) -> str:
    """The one wording of an out-of-range knob, in the REST layer and in the graph."""
    return f"{name} must be in {interval}, got {value} for prompt {row}"


def knob_problem(values: dict, max_new_tokens: int) -> str | None:
    """The first out-of-range knob among `values` (name -> [B] numbers), as a message, or
    None. The graph asserts the same ranges (`knob_asserts`), for clients of TF Serving.

    Example:
        >>> knob_problem({"beam_width": [4, 65]}, max_new_tokens=256)
        'beam_width must be in [1, 64], got 65 for prompt 1'
    """
    for name, rule in KNOB_RANGES.items():
        if name not in values:
            continue
        rows = np.asarray(values[name])
        highs = _highs(name, rule, values, max_new_tokens, len(rows))
        for row, (value, high) in enumerate(zip(rows, highs)):
            if not _inside(value.item(), rule.low, high, rule.low_open):
                return knob_range_message(name, rule.text(high if name != "min_new_tokens" else
                                                          "max_new_tokens"), _number(value), row)
    return None


def _number(value) -> str:
    """A knob's value as TensorFlow's string formatting prints it (-1e+30, nan, 0.5, 65)."""
    return f"{value.item():g}" if np.issubdtype(value.dtype, np.floating) else str(value.item())


def _highs(name, rule, values, max_new_tokens, batch):
    if name == "max_new_tokens":
        return [max_new_tokens] * batch
    if name == "min_new_tokens":
        return np.asarray(values.get("max_new_tokens", [max_new_tokens] * batch)).tolist()
    return [rule.high] * batch


def _inside(value, low, high, low_open) -> bool:
    if not math.isfinite(value):
        return False
    return (value > low if low_open else value >= low) and value <= high


def knob_asserts(knobs: "Knobs", names, max_new_tokens: int) -> list[tf.Operation]:
    """Graph asserts of the ranges of the knobs `names` ([B] tensors), with the messages
    `knob_problem` gives (floats print as TensorFlow prints them)."""
    checks = []
    for name in names:
        if name not in KNOB_RANGES:
            continue
        rule = KNOB_RANGES[name]
        values = getattr(knobs, name)
        if name == "min_new_tokens":
            high, interval = tf.cast(knobs.max_new_tokens, values.dtype), rule.text("max_new_tokens")
        else:
            bound = max_new_tokens if name == "max_new_tokens" else rule.high
            high, interval = tf.cast(bound, values.dtype), rule.text(bound)
        low = tf.cast(rule.low, values.dtype)
        ok = tf.logical_and(values > low if rule.low_open else values >= low, values <= high)
        checks.append(assert_rows(ok, values, name, interval))
    return checks


def assert_rows(ok, values, name: str, interval: str, expected=None) -> tf.Operation:
    """Asserts every row of `ok` [B]; the message (`knob_range_message`'s wording, or
    "must be <interval>, <expected>") names the first failing row and its value."""
    row = tf.argmin(tf.cast(ok, tf.int32), output_type=tf.int32)
    if expected is None:
        message = tf.strings.format(knob_range_message(name, interval, "{}", "{}"), (tf.gather(values, row), row))
    else:
        message = tf.strings.format(f"{name} must be {interval}, {{}} for prompt {{}}, got {{}}",
                                    (tf.gather(expected, row), row, tf.gather(values, row)))
    return tf.debugging.Assert(tf.reduce_all(ok), [message])



class Knobs(NamedTuple):
    """A request's decoding knobs inside the graph, each a [B] tensor (one value per row), so rows
    of one batch decode with their own settings.
    """

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
