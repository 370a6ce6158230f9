"""The Beam step that turns batches of chunks into serialized records and partial stats,
with the same `Tokenizer` the exported model runs in its graph.

Example (inside a pipeline):
    outputs = batches | beam.ParDo(TokenizeFn(spec), vocab=AsSingleton(vocab)).with_outputs(
        "train", "valid", "test", STATS_TAG)
"""

from __future__ import annotations

import collections
from typing import Sequence

import apache_beam as beam
import numpy as np
import tensorflow as tf

from pipeline.core.constants import EOS_ID, UNK, UNK_ID
from pipeline.preprocess.reading import Chunk
from pipeline.core.records import encode_example
from pipeline.preprocess.split_stats import ID_COUNTS, STATS_TAG, split_partials
from pipeline.core.tokenizer import Tokenizer, TokenizerSpec



def encode_batch(
    tokenizer: Tokenizer, chunks: Sequence[Chunk]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids of every line of `chunks`, <eos> placed where configured.

    Returns:
        values: int64 [N] ids of all lines, concatenated.
        line_splits: int64 [L + 1]; line i is values[line_splits[i]:line_splits[i + 1]].
        literal_unk: int64 [L], per line, how many pieces were the text "<unk>" itself
            (ids of <unk> that are not out-of-vocabulary).
    """
    lines = [line for chunk in chunks for line in chunk.lines]
    eos = np.array([e for chunk in chunks for e in chunk.eos_after], dtype=bool)
    values, splits, literal_unk = _encode(tokenizer, tf.constant(lines, tf.string))
    values, splits = values.numpy(), splits.numpy()
    if tokenizer.spec.add_eos:
        values = np.insert(values, splits[1:][eos], EOS_ID)
        lengths = np.diff(splits) + eos
        splits = np.concatenate([[0], np.cumsum(lengths)])
    return values, splits, literal_unk.numpy()


@tf.function(reduce_retracing=True)
def _encode(tokenizer, lines):
    pieces = tokenizer.split(lines)
    ids = tokenizer.tokenize(lines) if tokenizer.spec.kind == "subword" else (
        tf.ragged.map_flat_values(tokenizer.token_to_id.lookup, pieces))
    literal_unk = tf.reduce_sum(tf.cast(tf.equal(pieces, UNK), tf.int64), axis=1)
    return ids.flat_values, ids.row_splits, literal_unk


class TokenizeFn(beam.DoFn):
    """list[Chunk] -> serialized records tagged by split; (split, stats) on STATS_TAG.

    Stats are summed over the whole bundle and emitted once per bundle and split, so the
    combiner downstream sees a handful of vocabulary-sized partials, not one per batch.
    """

    def __init__(self, spec: TokenizerSpec) -> None:
        self._spec = spec
        self._tokenizer: Tokenizer | None = None
        self._vocab_size = 0
        self._stats: dict[str, dict] = {}

    def start_bundle(self) -> None:
        self._stats = {}

    def process(self, chunks: list[Chunk], vocab: list[str]):
        if self._tokenizer is None or self._vocab_size != len(vocab):
            self._tokenizer = Tokenizer(self._spec, vocab=vocab)
            self._vocab_size = len(vocab)
        values, splits, literal_unk = encode_batch(self._tokenizer, chunks)
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
        s = self._stats.get(split)
        if s is None:
            s = self._stats[split] = collections.Counter()
            s[ID_COUNTS] = np.zeros(self._vocab_size, np.int64)
        ids = np.concatenate([p[1] for p in parts])
        unk = int(np.count_nonzero(ids == UNK_ID))
        s["documents"] += sum(int(chunk.first) for chunk, _, _ in parts)
        s["lines"] += sum(sum(chunk.eos_after) for chunk, _, _ in parts)
        s["tokens"] += len(ids)
        s["unk_tokens"] += unk
        s["oov_tokens"] += unk - sum(p[2] for p in parts)
        s[ID_COUNTS] += np.bincount(ids, minlength=self._vocab_size)

    def finish_bundle(self):
        yield from split_partials(STATS_TAG, self._stats)
        self._stats = {}
