"""The record format of preprocessed splits: one tf.train.Example per record.

Features: `ids` (int64 list, token ids with <eos> after each line when configured),
`doc` (bytes, stable document key) and `offset` (int64, byte offset of the record's
first line in its file). A document larger than `preprocess.max_lines_per_record` lines
is stored as several records; sorting by (doc, offset) restores its order.

Example:
    >>> parse_example(encode_example([5, 9, 3], b"ab12", 0))
    {'ids': [5, 9, 3], 'doc': b'ab12', 'offset': 0}
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from pipeline.core.constants import FEATURE_DOC, FEATURE_IDS, FEATURE_OFFSET

FEATURE_SPEC = {
    FEATURE_IDS: tf.io.RaggedFeature(tf.int64),
    FEATURE_DOC: tf.io.FixedLenFeature([], tf.string),
    FEATURE_OFFSET: tf.io.FixedLenFeature([], tf.int64),
}


def encode_example(ids: Sequence[int], doc: bytes, offset: int) -> bytes:
    """Serialized tf.train.Example of one record."""
    feature = {
        FEATURE_IDS: tf.train.Feature(int64_list=tf.train.Int64List(value=ids)),
        FEATURE_DOC: tf.train.Feature(bytes_list=tf.train.BytesList(value=[doc])),
        FEATURE_OFFSET: tf.train.Feature(int64_list=tf.train.Int64List(value=[offset])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse_example(serialized: bytes) -> dict:
    """Python view of one serialized record (for tests and tools; tf.data uses FEATURE_SPEC)."""
    example = tf.train.Example.FromString(serialized)
    f = example.features.feature
    return {
        FEATURE_IDS: list(f[FEATURE_IDS].int64_list.value),
        FEATURE_DOC: f[FEATURE_DOC].bytes_list.value[0],
        FEATURE_OFFSET: f[FEATURE_OFFSET].int64_list.value[0],
    }


def split_file_pattern(dataset_dir: str, split: str) -> str:
    """Glob of one split's shards inside a dataset folder."""
    return f"{dataset_dir.rstrip('/')}/{split}-*.tfrecord.gz"
