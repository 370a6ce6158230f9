"""Learns the vocabulary from the training split with Beam combiners (memory bounded by
the number of distinct pieces, not the corpus size).

- word / char: the `max_vocab` most frequent pieces with count >= `min_count`, ties
  broken by the piece (ascending), after the reserved tokens.
- subword: WordPiece learned by TensorFlow Text's own learner
  (`tensorflow_text.tools.wordpiece_vocab`) from the word counts.

Example (inside a pipeline):
    vocab = train_chunks | 'LearnVocab' >> LearnVocabulary(tokenizer_config, batch_lines)
    # a one-element PCollection: [ '<pad>', '<unk>', '<bos>', '<eos>', 'the', ... ]
"""

from __future__ import annotations

import collections
from typing import Iterable

import apache_beam as beam

from pipeline.core.config import TokenizerConfig
from pipeline.core.constants import RESERVED_TOKENS
from pipeline.core.tokenizer import Tokenizer, TokenizerSpec

_RESERVED_BYTES = frozenset(t.encode() for t in RESERVED_TOKENS)


def spec_of(config: TokenizerConfig) -> TokenizerSpec:
    """The tokenizer spec that a `tokenizer` config section describes."""
    return TokenizerSpec(
        kind=config.kind,
        lowercase=config.lowercase,
        add_eos=config.add_eos,
        max_chars_per_word=config.max_chars_per_word,
    )


def rank_key(item: tuple[bytes, int]) -> tuple:
    """Sort key: higher count first, then the piece in ascending (code point) order.

    >>> sorted([(b"b", 2), (b"a", 2), (b"ab", 2), (b"z", 5)], key=rank_key, reverse=True)
    [(b'z', 5), (b'a', 2), (b'ab', 2), (b'b', 2)]
    """
    piece, count = item
    return count, tuple(-b for b in piece) + (1,)


class CountPiecesFn(beam.DoFn):
    """A batch of chunks -> (piece, count) pairs, pieces as the tokenizer splits them."""

    def __init__(self, spec: TokenizerSpec) -> None:
        self._spec = spec
        self._tokenizer = None

    def setup(self) -> None:
        """A tokenizer that only splits (the vocabulary is not known yet)."""
        self._tokenizer = Tokenizer(self._spec, vocab=RESERVED_TOKENS)

    def process(self, chunks: list) -> Iterable[tuple[bytes, int]]:
        """A batch of chunks -> (piece bytes, count) per distinct piece of its lines."""
        lines = [line for chunk in chunks for line in chunk.lines]
        if not lines:
            return
        pieces = self._tokenizer.split(lines).flat_values.numpy()
        counts = collections.Counter(pieces.tolist())
        for piece, count in counts.items():
            if piece not in _RESERVED_BYTES:
                yield piece, count


def top_pieces(items: list[tuple[bytes, int]]) -> list[str]:
    """The reserved tokens, then the ranked pieces."""
    ranked = sorted(items, key=rank_key, reverse=True)
    return [*RESERVED_TOKENS, *(piece.decode("utf-8") for piece, _ in ranked)]


def learn_wordpiece(items: list[tuple[bytes, int]], max_vocab: int, min_count: int) -> list[str]:
    """WordPiece vocabulary of about `max_vocab` entries (plus reserved) from word counts."""
    from tensorflow_text.tools.wordpiece_vocab import wordpiece_tokenizer_learner_lib as learner

    counts = [(word.decode("utf-8"), count) for word, count in items]
    vocab = learner.learn(
        counts,
        vocab_size=max_vocab + len(RESERVED_TOKENS),
        reserved_tokens=list(RESERVED_TOKENS),
        lower_thresh=min_count,
    )
    rest = [t for t in vocab if t not in RESERVED_TOKENS]
    return [*RESERVED_TOKENS, *rest]


@beam.ptransform_fn
def LearnVocabulary(batches, config: TokenizerConfig):  # noqa: N802 (Beam style)
    """PCollection[list[Chunk]] of the training split -> one-element PCollection[list[str]]."""
    counts = (
        batches
        | "CountPieces" >> beam.ParDo(CountPiecesFn(spec_of(config)))
        | "SumCounts" >> beam.CombinePerKey(sum)
        | "DropRare" >> beam.Filter(lambda kv, n: kv[1] >= n, config.min_count)
    )
    if config.kind == "subword":
        return (
            counts
            | "AllWords" >> beam.combiners.ToList()
            | "LearnWordPiece" >> beam.Map(learn_wordpiece, config.max_vocab, config.min_count)
        )
    return (
        counts
        | "TopPieces" >> beam.combiners.Top.Of(config.max_vocab, key=rank_key)
        | "WithReserved" >> beam.Map(top_pieces)
    )
