"""The one tokenizer: TensorFlow Text and core TF string ops, used by preprocessing,
training and the exported serving graph, so a token id means the same everywhere.

Kinds:
- word: whitespace-separated tokens (the convention of PTB and WikiText).
- char: Unicode characters, the space included.
- subword: words split on whitespace and punctuation, then WordPiece (`##` suffixes).

Normalisation for every kind: Unicode NFC, ASCII whitespace mapped to a space, then
optional lowercasing (Unicode-aware).

Example:
    >>> tok = Tokenizer(TokenizerSpec(kind="word"), vocab=[*RESERVED_TOKENS, "the", "cat"])
    >>> tok.encode_lines(tf.constant(["the cat", "the dog"])).to_list()
    [[4, 5, 3], [4, 1, 3]]
    >>> tok.detokenize(tf.ragged.constant([[4, 5, 3]], dtype=tf.int64)).numpy()
    array([b'the cat'], dtype=object)
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Literal, Sequence

import tensorflow as tf
import tensorflow_text as tf_text

from pipeline.core.constants import (
    EOS_ID,
    RESERVED_TOKENS,
    TOKENIZER_FILE,
    UNK,
    UNK_ID,
    VOCAB_FILE,
    WORDPIECE_SUFFIX,
)

# Words for WordPiece: split at whitespace, and keep each punctuation or symbol mark
# as a word of its own.
_PUNCT = r"[\p{P}\p{S}]"
_SUBWORD_SPLIT = r"\s+|" + _PUNCT


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
    """What `tokenizer.json` records: enough to rebuild the tokenizer with `vocab.txt`."""

    kind: Literal["word", "char", "subword"] = "word"
    lowercase: bool = False
    add_eos: bool = True
    max_chars_per_word: int = 100
    normalization: str = "NFC"

    def to_json(self, vocab_size: int) -> str:
        """tokenizer.json's text: this spec, the reserved tokens' ids, `vocab_size` and the
        vocabulary file's name.
        """
        body = dataclasses.asdict(self) | {
            "specials": {tok: i for i, tok in enumerate(RESERVED_TOKENS)},
            "vocab_size": vocab_size,
            "vocab_file": VOCAB_FILE,
            "wordpiece_suffix": WORDPIECE_SUFFIX if self.kind == "subword" else None,
        }
        return json.dumps(body, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "TokenizerSpec":
        """The spec in tokenizer.json's `text` (keys that are not spec fields are ignored)."""
        body = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in body.items() if k in names})


def read_vocab(path: str) -> list[str]:
    """The tokens of a `vocab.txt`, one per line (a token may be a single space)."""
    with tf.io.gfile.GFile(path, "r") as f:
        text = f.read()
    return text[:-1].split("\n") if text.endswith("\n") else text.split("\n")


def vocab_file_text(vocab: Sequence[str]) -> str:
    """The text of `vocab.txt` for `vocab` (inverse of `read_vocab`)."""
    return "".join(f"{token}\n" for token in vocab)


class Tokenizer(tf.Module):
    """Text <-> token ids as TF ops; works eagerly, in tf.data and in a SavedModel.

    Args:
        spec: the tokenizer kind and normalisation.
        vocab: the tokens, reserved ones first (in-memory table), or
        vocab_file: a `vocab.txt` path (table initialised from the file, saved as an
            asset when the tokenizer is part of a SavedModel).
    """

    def __init__(
        self,
        spec: TokenizerSpec,
        vocab: Sequence[str] | None = None,
        vocab_file: str | None = None,
    ) -> None:
        super().__init__(name="tokenizer")
        if (vocab is None) == (vocab_file is None):
            raise ValueError("give exactly one of vocab or vocab_file")
        tokens = list(vocab) if vocab is not None else read_vocab(vocab_file)
        if tuple(tokens[: len(RESERVED_TOKENS)]) != RESERVED_TOKENS:
            raise ValueError(f"vocabulary must start with {RESERVED_TOKENS}, got {tokens[:4]}")
        self.spec = spec
        self.vocab_size = len(tokens)
        if vocab_file is not None:
            self.vocab_asset = tf.saved_model.Asset(vocab_file)
            to_id = tf.lookup.TextFileInitializer(
                self.vocab_asset, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER)
            to_token = tf.lookup.TextFileInitializer(
                self.vocab_asset, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
                tf.string, tf.lookup.TextFileIndex.WHOLE_LINE)
        else:
            keys = tf.constant(tokens, tf.string)
            ids = tf.range(len(tokens), dtype=tf.int64)
            to_id = tf.lookup.KeyValueTensorInitializer(keys, ids)
            to_token = tf.lookup.KeyValueTensorInitializer(ids, keys)
        self.token_to_id = tf.lookup.StaticHashTable(to_id, default_value=UNK_ID)
        self.id_to_token = tf.lookup.StaticHashTable(to_token, default_value=UNK)
        if spec.kind == "subword":
            self._wordpiece = tf_text.WordpieceTokenizer(
                self.token_to_id,
                suffix_indicator=WORDPIECE_SUFFIX,
                max_bytes_per_word=spec.max_chars_per_word,
                token_out_type=tf.int64,
                unknown_token=UNK,
            )

    @classmethod
    def from_dir(cls, directory: str) -> "Tokenizer":
        """The tokenizer of a preprocessed dataset (or export assets) folder."""
        with tf.io.gfile.GFile(os.path.join(directory, TOKENIZER_FILE)) as f:
            spec = TokenizerSpec.from_json(f.read())
        return cls(spec, vocab_file=os.path.join(directory, VOCAB_FILE))

    def normalize(self, texts: tf.Tensor) -> tf.Tensor:
        """[B] strings -> [B] strings: NFC, whitespace to spaces, optional lowercase."""
        texts = tf_text.normalize_utf8(texts, self.spec.normalization)
        texts = tf.strings.regex_replace(texts, r"\s", " ")
        if self.spec.lowercase:
            texts = tf.strings.lower(texts, encoding="utf-8")
        return texts

    def split(self, texts: tf.Tensor) -> tf.RaggedTensor:
        """[B] strings -> [B, (n)] string pieces before the vocabulary: the units that
        are counted to learn it (words for `word` and `subword`, characters for `char`).
        """
        texts = self.normalize(texts)
        if self.spec.kind == "char":
            return tf.strings.unicode_split(texts, "UTF-8")
        if self.spec.kind == "subword":
            return tf_text.regex_split(texts, _SUBWORD_SPLIT, keep_delim_regex_pattern=_PUNCT)
        return tf.strings.split(texts)

    def tokenize(self, texts: tf.Tensor) -> tf.RaggedTensor:
        """[B] strings -> [B, (n)] int64 ids; unknown pieces become <unk>."""
        pieces = self.split(texts)
        if self.spec.kind == "subword":
            return self._wordpiece.tokenize(pieces).merge_dims(1, 2)
        return tf.ragged.map_flat_values(self.token_to_id.lookup, pieces)

    def encode_lines(self, lines: tf.Tensor) -> tf.RaggedTensor:
        """[B] lines -> [B, (n)] ids with <eos> appended to each line when `add_eos`."""
        ids = self.tokenize(lines)
        if not self.spec.add_eos:
            return ids
        eos = tf.fill([tf.shape(lines)[0], 1], tf.constant(EOS_ID, tf.int64))
        return tf.concat([ids, eos], axis=1)

    def detokenize(self, ids: tf.Tensor | tf.RaggedTensor, lengths: tf.Tensor | None = None) -> tf.Tensor:
        """[B, T] ids (ragged, or dense with optional `lengths` [B]: each row's real ids)
        -> [B] strings; reserved ids but <unk> are dropped.

        Dense all the way: one table lookup of [B, T] ids and one join, no ragged ops (a
        serving graph runs this on every request, and each op is a node to execute). A
        token joins its row's text with a space before it (char: nothing) where kept and
        as "" where dropped; the join's first space is cut off (subword: then " ##" goes).

        Example:
            >>> tok.detokenize(tf.constant([[4, 5, 3, 0]]), lengths=tf.constant([2])).numpy()
            array([b'the cat'], dtype=object)
        """
        if isinstance(ids, tf.RaggedTensor):
            ids = ids.to_tensor()  # padded with <pad>, which is dropped
        ids = tf.cast(ids, tf.int64)
        keep = tf.logical_or(ids >= len(RESERVED_TOKENS), tf.equal(ids, UNK_ID))
        if lengths is not None:
            keep = tf.logical_and(keep, tf.sequence_mask(lengths, tf.shape(ids)[1]))
        tokens = self.id_to_token.lookup(ids)
        if self.spec.kind == "char":
            return tf.strings.reduce_join(tf.where(keep, tokens, ""), axis=1)
        text = tf.strings.reduce_join(tf.where(keep, tf.strings.join([" ", tokens]), ""), axis=1)
        text = tf.strings.substr(text, tf.minimum(1, tf.strings.length(text)), tf.strings.length(text))
        if self.spec.kind == "subword":
            text = tf.strings.regex_replace(text, " " + WORDPIECE_SUFFIX, "")
        return text
