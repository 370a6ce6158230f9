"""Text -> token ids with the same `Tokenizer` the exported model runs in its graph, shared
by the documents step (`tokenize_fn`) and the pairs step (`pairs_encode`): batch encoding,
the tokenizer kept per vocabulary, and the token counts both add to their stats.

Example:
    >>> tokenizers = TokenizerCache(spec)
    >>> values, splits, literal_unk = encode_batch(tokenizers.get(vocab), chunks)
    >>> add_token_counts(stats, values, int(literal_unk.sum()), vocab_size=len(vocab))
"""

from __future__ import annotations

import collections
from typing import Sequence

import numpy as np
import tensorflow as tf

from pipeline.core.constants import EOS_ID, UNK, UNK_ID
from pipeline.core.tokenizer import Tokenizer, TokenizerSpec
from pipeline.preprocess.reading import Chunk
from pipeline.preprocess.split_stats import ID_COUNTS


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


class TokenizerCache:
    """One `Tokenizer` of `spec`, built on a DoFn's first element and again only when the
    vocabulary side input changes size (a DoFn instance outlives bundles and windows)."""

    def __init__(self, spec: TokenizerSpec) -> None:
        self.spec = spec
        self._tokenizer: Tokenizer | None = None
        self.vocab_size = 0

    def get(self, vocab: list[str]) -> Tokenizer:
        """The tokenizer over `vocab` (the same object while the vocabulary's size stays)."""
        if self._tokenizer is None or self.vocab_size != len(vocab):
            self._tokenizer = Tokenizer(self.spec, vocab=vocab)
            self.vocab_size = len(vocab)
        return self._tokenizer


def add_token_counts(stats: collections.Counter, ids: np.ndarray, literal_unk: int,
                     vocab_size: int, prefix: str = "") -> None:
    """Adds ids [N] int64 to `stats`' `<prefix>tokens`, `unk_tokens`, `oov_tokens` (ids of
    <unk> less the `literal_unk` pieces that were the text "<unk>" itself) and `id_counts`
    (an int64 [vocab_size] array, created on first use).

    Example:
        >>> s = collections.Counter(); add_token_counts(s, np.array([5, 1, 1]), 1, 8, "source_")
        >>> s["source_tokens"], s["source_unk_tokens"], s["source_oov_tokens"]
        (3, 2, 1)
    """
    unk = int(np.count_nonzero(ids == UNK_ID))
    stats[f"{prefix}tokens"] += len(ids)
    stats[f"{prefix}unk_tokens"] += unk
    stats[f"{prefix}oov_tokens"] += unk - literal_unk
    counts = stats.get(f"{prefix}{ID_COUNTS}")
    if counts is None:
        counts = stats[f"{prefix}{ID_COUNTS}"] = np.zeros(vocab_size, np.int64)
    counts += np.bincount(ids, minlength=vocab_size)
