"""The Beam step that turns batches of `Pair`s into serialized pair records and partial
stats, with the same `Tokenizer` (and `encode_batch`) as document records.

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

from pipeline.core.constants import UNK_ID
from pipeline.core.pair_records import SIDES, encode_pair_example
from pipeline.preprocess.pairs_reading import Pair
from pipeline.preprocess.split_stats import STATS_TAG, split_partials
from pipeline.preprocess.tokenize_fn import encode_batch
from pipeline.core.tokenizer import Tokenizer, TokenizerSpec



@dataclasses.dataclass
class TextLines:
    """Whole lines for `encode_batch` and `CountPiecesFn` (which read `.lines`)."""

    lines: list[str]
    eos_after: list[bool]

    @classmethod
    def of(cls, texts: Sequence[str]) -> "TextLines":
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
        self._specs = side_specs(spec)
        self._max = max_pair_tokens
        self._tokenizers: dict[str, Tokenizer] = {}
        self._vocab_sizes: dict[str, int] = {}
        self._stats: dict[str, collections.Counter] = {}

    def start_bundle(self) -> None:
        self._stats = {}

    def process(self, pairs: list[Pair], source_vocab: list[str], target_vocab: list[str]):
        vocabs = {"source": source_vocab, "target": target_vocab}
        encoded = {}
        for side in SIDES:
            if self._vocab_sizes.get(side) != len(vocabs[side]):
                self._tokenizers[side] = Tokenizer(self._specs[side], vocab=vocabs[side])
                self._vocab_sizes[side] = len(vocabs[side])
            texts = [getattr(p, side) for p in pairs]
            encoded[side] = encode_batch(self._tokenizers[side], [TextLines.of(texts)])
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
        return len(ids) - int(self._specs[side].add_eos)

    def _split_stats(self, split: str) -> collections.Counter:
        stats = self._stats.get(split)
        if stats is None:
            stats = self._stats[split] = collections.Counter()
            for side in SIDES:
                stats[f"{side}_id_counts"] = np.zeros(self._vocab_sizes[side], np.int64)
                stats[f"{side}_lengths"] = collections.Counter()
        return stats

    @staticmethod
    def _add(stats, side: str, ids: np.ndarray, literal_unk: int) -> None:
        unk = int(np.count_nonzero(ids == UNK_ID))
        stats[f"{side}_tokens"] += len(ids)
        stats[f"{side}_unk_tokens"] += unk
        stats[f"{side}_oov_tokens"] += unk - literal_unk
        stats[f"{side}_id_counts"] += np.bincount(ids, minlength=len(stats[f"{side}_id_counts"]))
        stats[f"{side}_lengths"][len(ids)] += 1

    def finish_bundle(self):
        yield from split_partials(STATS_TAG, self._stats)
        self._stats = {}
