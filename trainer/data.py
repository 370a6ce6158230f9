"""tf.data input for truncated BPTT: one split's token stream laid out as contiguous rows.

The stream of a split is every record's ids in (doc, offset) order, concatenated. For
batch size B it is cut into B contiguous rows of L = (N - 1) // B predictions each, and
batch k holds columns [k * bptt, (k + 1) * bptt) of every row, so row r of batch k + 1
continues row r of batch k and the recurrent state can carry over.

Example:
    >>> stream = np.arange(11)
    >>> [(x.tolist(), y.tolist()) for x, y in bptt_windows(stream, batch_size=2, bptt=3)]
    [([[0, 1, 2], [5, 6, 7]], [[1, 2, 3], [6, 7, 8]]), ([[3, 4], [8, 9]], [[4, 5], [9, 10]])]
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import tensorflow as tf

from pipeline.core.constants import FEATURE_DOC, FEATURE_IDS, FEATURE_OFFSET
from pipeline.core.records import FEATURE_SPEC, split_file_pattern


def load_token_stream(dataset_dir: str, split: str) -> np.ndarray:
    """int32 [N]: the ids of every record of `split`, documents in (doc, offset) order."""
    files = sorted(tf.io.gfile.glob(split_file_pattern(dataset_dir, split)))
    if not files:
        raise FileNotFoundError(f"no {split} records in {dataset_dir}; run lmpipe preprocess first")
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").map(
        lambda r: tf.io.parse_single_example(r, FEATURE_SPEC), num_parallel_calls=tf.data.AUTOTUNE)
    records = [(r[FEATURE_DOC], int(r[FEATURE_OFFSET]), r[FEATURE_IDS]) for r in ds.as_numpy_iterator()]
    records.sort(key=lambda r: (r[0], r[1]))
    if not records:
        return np.zeros([0], np.int32)
    return np.concatenate([r[2] for r in records]).astype(np.int32)


def stream_rows(stream: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs [B, L], targets [B, L]) with L = (N - 1) // B: contiguous rows."""
    length = (len(stream) - 1) // batch_size
    if length < 1:
        raise ValueError(f"{len(stream)} tokens are too few for batch size {batch_size}")
    x = stream[: batch_size * length].reshape(batch_size, length)
    y = stream[1: batch_size * length + 1].reshape(batch_size, length)
    return x, y


def bptt_windows(stream: np.ndarray, batch_size: int, bptt: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(x [B, <=bptt], y [B, <=bptt]) windows in order; the last one may be shorter."""
    x, y = stream_rows(stream, batch_size)
    for start in range(0, x.shape[1], bptt):
        yield x[:, start:start + bptt], y[:, start:start + bptt]


def num_windows(stream_len: int, batch_size: int, bptt: int) -> int:
    """Training windows per epoch: the stream cut into `batch_size` rows of (stream_len - 1) //
    batch_size targets, in windows of `bptt`. Example: `num_windows(1001, 10, 35)` -> 3.
    """
    length = (stream_len - 1) // batch_size
    return -(-length // bptt)


def without_autotune(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds` with tf.data's autotuning off, for the per-epoch training iterators.

    With autotuning on, each iterator starts a model thread (`Model::OptimizeLoop`) whose
    wait grows to 60 s, and deleting the iterator waits for it: at every epoch end the
    training loop sat idle for up to a minute (measured on PTB: 142 s epochs whose batches
    took 92 s). Our pipelines are in-memory slices with fixed parallelism and buffers, so
    there is nothing to tune.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def bptt_dataset(stream: np.ndarray, batch_size: int, bptt: int, skip: int = 0) -> tf.data.Dataset:
    """tf.data of the windows of `bptt_windows`, starting after `skip` windows (resume)."""
    x, y = stream_rows(stream, batch_size)
    full = x.shape[1] // bptt
    parts = []
    if full:
        xs = x[:, : full * bptt].reshape(batch_size, full, bptt).transpose(1, 0, 2)
        ys = y[:, : full * bptt].reshape(batch_size, full, bptt).transpose(1, 0, 2)
        parts.append(tf.data.Dataset.from_tensor_slices((xs, ys)))
    if x.shape[1] % bptt:
        tail = (x[:, full * bptt:], y[:, full * bptt:])
        parts.append(tf.data.Dataset.from_tensors(tail))
    ds = parts[0]
    for part in parts[1:]:
        ds = ds.concatenate(part)
    return without_autotune(ds.skip(skip).prefetch(2))
