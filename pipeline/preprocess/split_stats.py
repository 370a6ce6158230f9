"""Per-split statistics, summed by a Beam combiner and finished into `stats.json`.

A partial is a dict of counters plus `id_counts`, a vocabulary-sized array of token
occurrences, so memory is bounded by the vocabulary, never by the corpus.

Example:
    >>> fn = SumStatsFn()
    >>> acc = fn.add_input(fn.create_accumulator(), {"tokens": 3})
    >>> fn.extract_output(fn.add_input(acc, {"tokens": 2}))
    {'tokens': 5}
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from pipeline.core.constants import RESERVED_TOKENS

STATS_TAG = "stats"  # the encoders' output of (split, partial stats)
COUNTS_TAG = "counts"  # the readers' output of (split, {counter: n}) for the data issues met
ID_COUNTS = "id_counts"
COUNTERS = (
    "documents", "lines", "tokens", "oov_tokens", "unk_tokens",
    "invalid_utf8_lines", "empty_lines_dropped", "long_lines_split", "bad_records",
)


def split_partials(tag: str, partials: dict) -> list:
    """A DoFn's `finish_bundle` outputs on `tag`: one (split, partial) per split, in the
    global window (finish_bundle has no element to take a window from).

    Example:
        >>> list(split_partials(STATS_TAG, {"train": {"tokens": 5}}))[0].tag
        'stats'
    """
    return [beam.pvalue.TaggedOutput(tag, WindowedValue((split, dict(values)), GlobalWindow().max_timestamp(),
                                                        [GlobalWindow()]))
            for split, values in partials.items()]


class SumStatsFn(beam.CombineFn):
    """Sums partial stats dicts; arrays (id_counts) are added element-wise."""

    def create_accumulator(self) -> dict[str, Any]:
        """An empty sum."""
        return {}

    def add_input(self, acc: dict[str, Any], partial: dict[str, Any]) -> dict[str, Any]:
        """Adds `partial`'s counters and arrays into `acc` (keys missing in one side count as 0)."""
        for key, value in partial.items():
            acc[key] = acc[key] + value if key in acc else value
        return acc

    def merge_accumulators(self, accumulators):
        """The sum of the workers' accumulators."""
        merged: dict[str, Any] = {}
        for acc in accumulators:
            self.add_input(merged, acc)
        return merged

    def extract_output(self, acc: dict[str, Any]) -> dict[str, Any]:
        """The sum itself."""
        return acc


def to_json_record(split: str, acc: dict[str, Any]) -> dict[str, Any]:
    """A JSON-ready summary: every counter, plus how many vocabulary types occur."""
    record: dict[str, Any] = {"split": split}
    record.update({name: int(acc.get(name, 0)) for name in COUNTERS})
    counts = acc.get(ID_COUNTS)
    record["vocab_types_seen"] = (
        int(np.count_nonzero(counts[len(RESERVED_TOKENS):])) if counts is not None else 0
    )
    return record


def finish_split_stats(record: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """Adds the rates: oov_rate (share of tokens unknown to the vocabulary, <unk> written
    in the corpus itself not counted) and vocab_coverage (share of learned vocabulary
    entries that occur in the split)."""
    out = {k: v for k, v in record.items() if k != "split"}
    tokens = max(out["tokens"], 1)
    out["oov_rate"] = out["oov_tokens"] / tokens
    learned = max(vocab_size - len(RESERVED_TOKENS), 1)
    out["vocab_coverage"] = out["vocab_types_seen"] / learned
    return out
