"""The Beam step that turns batches of chunks into serialized records and partial stats
(encoding and token counts: `pipeline.preprocess.encoding`, shared with pairs).

Example (inside a pipeline):
    outputs = batches | beam.ParDo(TokenizeFn(spec), vocab=AsSingleton(vocab)).with_outputs(
        "train", "valid", "test", STATS_TAG)
"""

from __future__ import annotations

import collections

import apache_beam as beam
import numpy as np

from pipeline.core.records import encode_example
from pipeline.core.tokenizer import TokenizerSpec
from pipeline.preprocess.encoding import TokenizerCache, add_token_counts, encode_batch
from pipeline.preprocess.reading import Chunk
from pipeline.preprocess.split_stats import STATS_TAG, split_partials


class TokenizeFn(beam.DoFn):
    """list[Chunk] -> serialized records tagged by split; (split, stats) on STATS_TAG.

    Stats are summed over the whole bundle and emitted once per bundle and split, so the
    combiner downstream sees a handful of vocabulary-sized partials, not one per batch.
    """

    def __init__(self, spec: TokenizerSpec) -> None:
        self._tokenizers = TokenizerCache(spec)
        self._stats: dict[str, dict] = {}

    def start_bundle(self) -> None:
        """Starts the bundle's stats empty."""
        self._stats = {}

    def process(self, chunks: list[Chunk], vocab: list[str]):
        """Each chunk's ids as one record on its split's output; stats kept for the bundle."""
        values, splits, literal_unk = encode_batch(self._tokenizers.get(vocab), chunks)
        by_split = collections.defaultdict(list)
        line = 0
        for chunk in chunks:
            start, line = line, line + len(chunk.lines)
            ids = values[splits[start]:splits[line]]
            if len(ids):
                yield beam.pvalue.TaggedOutput(
                    chunk.split, encode_example(ids.tolist(), chunk.doc, chunk.offset))
            by_split[chunk.split].append((chunk, ids, int(literal_unk[start:line].sum())))
        for split, parts in by_split.items():
            self._add_stats(split, parts)

    def _add_stats(self, split: str, parts: list[tuple[Chunk, np.ndarray, int]]) -> None:
        s = self._stats.setdefault(split, collections.Counter())
        s["documents"] += sum(int(chunk.first) for chunk, _, _ in parts)
        s["lines"] += sum(sum(chunk.eos_after) for chunk, _, _ in parts)
        add_token_counts(s, np.concatenate([p[1] for p in parts]), sum(p[2] for p in parts),
                         self._tokenizers.vocab_size)

    def finish_bundle(self):
        """The bundle's stats, one (split, partial) per split, on STATS_TAG."""
        yield from split_partials(STATS_TAG, self._stats)
        self._stats = {}
