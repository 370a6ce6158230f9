"""The Beam step that turns batches of `Pair`s into serialized pair records and partial
stats, with the documents' encoding and token counts (`pipeline.preprocess.encoding`).

A pair whose source or target has more than `preprocess.max_pair_tokens` tokens
(<eos> not counted) is skipped and counted, never truncated.

Example (inside a pipeline):
    out = batches | beam.ParDo(EncodePairsFn(spec, 50), source_vocab=..., target_vocab=...
                               ).with_outputs("train", "valid", "test", STATS_TAG)
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import apache_beam as beam
import numpy as np

from pipeline.core.pair_records import SIDES, encode_pair_example
from pipeline.core.tokenizer import TokenizerSpec
from pipeline.preprocess.encoding import TokenizerCache, add_token_counts, encode_batch
from pipeline.preprocess.pairs_reading import Pair
from pipeline.preprocess.split_stats import STATS_TAG, split_partials


@dataclasses.dataclass
class TextLines:
    """Whole lines for `encode_batch` and `CountPiecesFn` (which read `.lines`)."""

    lines: list[str]
    eos_after: list[bool]

    @classmethod
    def of(cls, texts: Sequence[str]) -> "TextLines":
        """Each text a whole line with <eos> after it."""
        return cls(list(texts), [True] * len(texts))


def side_specs(spec: TokenizerSpec) -> dict[str, TokenizerSpec]:
    """Source: <eos> as `tokenizer.add_eos` says; target: always <eos> (the decoder's stop)."""
    return {"source": spec, "target": dataclasses.replace(spec, add_eos=True)}


class EncodePairsFn(beam.DoFn):
    """list[Pair] -> serialized records tagged by split; (split, stats) on STATS_TAG.

    Stats keys are `<side>_<name>`: tokens, unk_tokens, oov_tokens (<unk> not written in
    the text itself), id_counts (vocabulary-sized array) and lengths (Counter of record
    lengths, <eos> included); plus `pairs` and `skipped_too_long`.
    """

    def __init__(self, spec: TokenizerSpec, max_pair_tokens: int) -> None:
        self._tokenizers = {side: TokenizerCache(s) for side, s in side_specs(spec).items()}
        self._max = max_pair_tokens
        self._stats: dict[str, collections.Counter] = {}

    def start_bundle(self) -> None:
        """Starts the bundle's stats empty."""
        self._stats = {}

    def process(self, pairs: list[Pair], source_vocab: list[str], target_vocab: list[str]):
        """Each pair that fits as one record on its split's output; stats kept for the bundle."""
        vocabs = {"source": source_vocab, "target": target_vocab}
        encoded = {side: encode_batch(self._tokenizers[side].get(vocabs[side]),
                                      [TextLines.of([getattr(p, side) for p in pairs])]) for side in SIDES}
        for i, pair in enumerate(pairs):
            ids = {}
            for side in SIDES:
                values, splits, _ = encoded[side]
                ids[side] = values[splits[i]:splits[i + 1]]
            stats = self._split_stats(pair.split)
            if self._max and any(self._text_length(side, ids[side]) > self._max for side in SIDES):
                stats["skipped_too_long"] += 1
                continue
            stats["pairs"] += 1
            for side in SIDES:
                self._add(stats, side, ids[side], int(encoded[side][2][i]))
            yield beam.pvalue.TaggedOutput(pair.split, encode_pair_example(
                ids["source"].tolist(), ids["target"].tolist(), pair.pair))

    def _text_length(self, side: str, ids: np.ndarray) -> int:
        return len(ids) - int(self._tokenizers[side].spec.add_eos)

    def _split_stats(self, split: str) -> collections.Counter:
        stats = self._stats.get(split)
        if stats is None:
            stats = self._stats[split] = collections.Counter()
            for side in SIDES:
                stats[f"{side}_lengths"] = collections.Counter()
        return stats

    def _add(self, stats, side: str, ids: np.ndarray, literal_unk: int) -> None:
        add_token_counts(stats, ids, literal_unk, self._tokenizers[side].vocab_size, f"{side}_")
        stats[f"{side}_lengths"][len(ids)] += 1

    def finish_bundle(self):
        """The bundle's stats, one (split, partial) per split, on STATS_TAG."""
        yield from split_partials(STATS_TAG, self._stats)
        self._stats = {}
