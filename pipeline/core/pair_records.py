"""The record format of preprocessed text pairs (sequence-to-sequence datasets).

One tf.train.Example per pair:
- `source_ids` (int64 list): the source text's ids, `<eos>` appended when
  `tokenizer.add_eos` (the rule of document lines, so `Tokenizer.encode_lines` with the
  dataset's source tokenizer gives the same ids in a serving graph).
- `target_ids` (int64 list): the target text's ids, always ending with `<eos>` (the
  decoder's stop); the trainer prepends `<bos>` to build the decoder input.
- `pair` (int64): the pair's position in its input (line number, files of one side
  taken in sorted order one after another, 0-based); sorting by it restores the order.

A dataset folder holds `vocab.txt` + `tokenizer.json` when `tokenizer.shared_vocab`, or
`source_vocab.txt` + `source_tokenizer.json` and `target_vocab.txt` +
`target_tokenizer.json`; `pair_tokenizers` loads whichever is there.

Example:
    >>> parse_pair_example(encode_pair_example([5, 9, 3], [7, 3], 12))
    {'source_ids': [5, 9, 3], 'target_ids': [7, 3], 'pair': 12}
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import tensorflow as tf

from pipeline.core.constants import BOS_ID, TOKENIZER_FILE, VOCAB_FILE
from pipeline.core.tokenizer import Tokenizer, TokenizerSpec

FEATURE_SOURCE_IDS = "source_ids"
FEATURE_TARGET_IDS = "target_ids"
FEATURE_PAIR = "pair"
SIDES: tuple[str, ...] = ("source", "target")

PAIR_FEATURE_SPEC = {
    FEATURE_SOURCE_IDS: tf.io.RaggedFeature(tf.int64),
    FEATURE_TARGET_IDS: tf.io.RaggedFeature(tf.int64),
    FEATURE_PAIR: tf.io.FixedLenFeature([], tf.int64),
}


def _ints(values: Sequence[int]) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def encode_pair_example(source_ids: Sequence[int], target_ids: Sequence[int], pair: int) -> bytes:
    """Serialized tf.train.Example of one pair."""
    feature = {
        FEATURE_SOURCE_IDS: _ints(source_ids),
        FEATURE_TARGET_IDS: _ints(target_ids),
        FEATURE_PAIR: _ints([pair]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse_pair_example(serialized: bytes) -> dict:
    """Python view of one serialized pair (for tests and tools; tf.data uses PAIR_FEATURE_SPEC)."""
    f = tf.train.Example.FromString(serialized).features.feature
    return {
        FEATURE_SOURCE_IDS: list(f[FEATURE_SOURCE_IDS].int64_list.value),
        FEATURE_TARGET_IDS: list(f[FEATURE_TARGET_IDS].int64_list.value),
        FEATURE_PAIR: f[FEATURE_PAIR].int64_list.value[0],
    }


def decoder_input(target_out: tf.Tensor) -> tf.Tensor:
    """The decoder's teacher-forced input: <bos>, then `target_out` without its last token,
    along the last axis (int32 [T] -> [T], [B, T] -> [B, T]); the one place the shift lives.

    Example:
        >>> decoder_input(tf.constant([[7, 8, 3]])).numpy()   # 3 = <eos>
        array([[2, 7, 8]], dtype=int32)
    """
    start = tf.fill(tf.concat([tf.shape(target_out)[:-1], [1]], axis=0), tf.constant(BOS_ID, target_out.dtype))
    return tf.concat([start, target_out[..., :-1]], axis=-1)


def vocab_file_name(side: str, shared: bool) -> str:
    """`vocab.txt` for a shared vocabulary, else `source_vocab.txt` / `target_vocab.txt`."""
    return VOCAB_FILE if shared else f"{side}_{VOCAB_FILE}"


def tokenizer_file_name(side: str, shared: bool) -> str:
    """`tokenizer.json` for a shared vocabulary, else `<side>_tokenizer.json`."""
    return TOKENIZER_FILE if shared else f"{side}_{TOKENIZER_FILE}"


def pair_tokenizers(dataset_dir: str) -> dict[str, Tokenizer]:
    """{"source": Tokenizer, "target": Tokenizer} of a pair dataset (or export assets)
    folder; with a shared vocabulary both are built from `vocab.txt`. Each one's
    `encode_lines` gives the ids its side's records hold."""
    shared = not tf.io.gfile.exists(os.path.join(dataset_dir, tokenizer_file_name("source", False)))
    tokenizers = {}
    for side in SIDES:
        with tf.io.gfile.GFile(os.path.join(dataset_dir, tokenizer_file_name(side, shared))) as f:
            body = json.loads(f.read())
        spec = TokenizerSpec.from_json(json.dumps(body))
        if side == "target":  # target records always end with <eos>
            spec = dataclasses.replace(spec, add_eos=True)
        vocab = os.path.join(dataset_dir, body.get("vocab_file") or vocab_file_name(side, shared))
        tokenizers[side] = Tokenizer(spec, vocab_file=vocab)
    return tokenizers
