"""tf.data input for sequence-to-sequence training: a pair dataset's split, bucketed by
length and padded per batch.

A split is loaded once into memory (`load_pairs`, pairs in input order). `pair_batches`
yields `(source [B, S], target_in [B, T], target_out [B, T])` int32 batches:
`target_out` is a record's `target_ids` (ending with <eos>), `target_in` the same ids
shifted right behind <bos>; rows are padded with <pad> (id 0) to the longest row of
their batch, and batches are made of pairs of similar length (buckets by the longer
side, `tf.data.Dataset.bucket_by_sequence_length`).

Example:
    >>> pairs = load_pairs("work/data/3f9c...", "train")
    >>> for source, target_in, target_out in pair_batches(pairs, 64, shuffle=True, seed=1):
    ...     loss = train_step(source, target_in, target_out)
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import tensorflow as tf

from pipeline.core.constants import PAD_ID
from pipeline.core.pair_records import (
    FEATURE_PAIR, FEATURE_SOURCE_IDS, FEATURE_TARGET_IDS, PAIR_FEATURE_SPEC, decoder_input,
)
from pipeline.core.records import split_file_pattern
from trainer.data import without_autotune

AUTO = "auto"
PARALLEL_CALLS = 2  # slicing a pair out of the in-memory tables is cheap


@dataclasses.dataclass(frozen=True)
class PairSplit:
    """The pairs of one split in input order: side `k` of pair `i` is
    `k_values[k_splits[i]:k_splits[i + 1]]`."""

    pair: np.ndarray  # int64 [N], ascending
    source_values: np.ndarray  # int32
    source_splits: np.ndarray  # int64 [N + 1]
    target_values: np.ndarray  # int32
    target_splits: np.ndarray  # int64 [N + 1]

    def __len__(self) -> int:
        return len(self.pair)

    def source(self, i: int) -> np.ndarray:
        """Pair i's source ids, int32 [S_i] (<eos> as the tokenizer adds it)."""
        return self.source_values[self.source_splits[i]:self.source_splits[i + 1]]

    def target(self, i: int) -> np.ndarray:
        """Pair i's target ids, int32 [T_i] (ending with <eos>)."""
        return self.target_values[self.target_splits[i]:self.target_splits[i + 1]]

    def lengths(self) -> np.ndarray:
        """int64 [N]: per pair, the longer of source and target (the bucketing length)."""
        return np.maximum(np.diff(self.source_splits), np.diff(self.target_splits))


def load_pairs(dataset_dir: str, split: str) -> PairSplit:
    """Every pair record of `split` in `dataset_dir`, sorted by its `pair` index."""
    files = sorted(tf.io.gfile.glob(split_file_pattern(dataset_dir, split)))
    if not files:
        raise FileNotFoundError(f"no {split} records in {dataset_dir}; run lmpipe preprocess first")
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").map(
        lambda r: tf.io.parse_single_example(r, PAIR_FEATURE_SPEC), num_parallel_calls=tf.data.AUTOTUNE)
    records = [(int(r[FEATURE_PAIR]), r[FEATURE_SOURCE_IDS], r[FEATURE_TARGET_IDS])
               for r in ds.as_numpy_iterator()]
    records.sort(key=lambda r: r[0])
    return PairSplit(
        np.array([r[0] for r in records], np.int64), *_flat([r[1] for r in records]),
        *_flat([r[2] for r in records]))


def _flat(rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(r) for r in rows], np.int64)
    values = np.concatenate(rows).astype(np.int32) if rows else np.zeros([0], np.int32)
    return values, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def auto_bucket_boundaries(lengths: np.ndarray, num_buckets: int = 8) -> list[int]:
    """Boundaries that cut `lengths` into about `num_buckets` equally full buckets
    (bucket i holds lengths in [b[i-1], b[i]); ties stay in one bucket).

    >>> auto_bucket_boundaries(np.array([3, 3, 4, 5, 6, 9, 10, 12]), num_buckets=4)
    [4, 6, 10]
    """
    if len(lengths) == 0:
        return []
    cuts = np.quantile(lengths, np.arange(1, num_buckets) / num_buckets, method="lower")
    return [int(b) for b in np.unique(cuts + 1) if lengths.min() < b <= lengths.max()]


def pair_batches(
    pairs: PairSplit,
    batch_size: int,
    bucket_boundaries: Sequence[int] | str | None = AUTO,
    shuffle: bool = False,
    seed: int = 0,
    drop_remainder: bool = False,
    with_pair: bool = False,
) -> tf.data.Dataset:
    """Batches of (source, target_in, target_out), each int32 [B, max length in batch].

    Args:
        pairs: a split from `load_pairs`.
        batch_size: pairs per batch (the last batch of a bucket may be smaller unless
            `drop_remainder`).
        bucket_boundaries: ascending lengths that separate buckets (by the longer side,
            <eos> counted); "auto": `auto_bucket_boundaries`; None or []: one bucket.
        shuffle: shuffle the pairs (by `seed` alone) before bucketing.
        seed: the shuffle seed (give each epoch its own).
        with_pair: also yield each row's `pair` index (int64 [B]) as a fourth element,
            to put generations back in input order.
    """
    if bucket_boundaries == AUTO:
        bucket_boundaries = auto_bucket_boundaries(pairs.lengths())
    boundaries = [int(b) for b in (bucket_boundaries or [])]
    if boundaries != sorted(set(boundaries)) or (boundaries and boundaries[0] < 1):
        raise ValueError(f"bucket_boundaries must be ascending positive lengths, got {boundaries}")
    tables = [tf.constant(a) for a in (pairs.source_values, pairs.source_splits,
                                       pairs.target_values, pairs.target_splits, pairs.pair)]

    def element(i):
        src_values, src_splits, tgt_values, tgt_splits, pair = tables
        source = src_values[src_splits[i]:src_splits[i + 1]]
        target_out = tgt_values[tgt_splits[i]:tgt_splits[i + 1]]
        return (source, decoder_input(target_out), target_out) + ((pair[i],) if with_pair else ())

    pad = tf.constant(PAD_ID, tf.int32)
    # The order is a function of `seed` alone (not of TensorFlow's global seed), so a
    # resumed run rebuilds exactly the epoch it stopped in.
    order = np.random.default_rng(seed).permutation(len(pairs)) if shuffle else np.arange(len(pairs))
    ds = tf.data.Dataset.from_tensor_slices(order.astype(np.int64))
    ds = ds.map(element, num_parallel_calls=PARALLEL_CALLS, deterministic=True)
    ds = ds.bucket_by_sequence_length(
        lambda source, target_in, *_: tf.maximum(tf.shape(source)[0], tf.shape(target_in)[0]),
        bucket_boundaries=boundaries,
        bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
        padding_values=(pad, pad, pad) + ((tf.constant(0, tf.int64),) if with_pair else ()),
        drop_remainder=drop_remainder,
    )
    return without_autotune(ds.prefetch(2))  # see trainer.data.without_autotune
