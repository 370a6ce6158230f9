"""The truncated-BPTT layout and the token stream of a split."""

import numpy as np

from pipeline.core.records import encode_example
from trainer.data import bptt_dataset, bptt_windows, load_token_stream, num_windows


def test_rows_continue_across_batches():
    stream = np.arange(23)
    windows = list(bptt_windows(stream, batch_size=2, bptt=4))
    # L = 22 // 2 = 11 predictions per row: windows of 4, 4, 3
    assert [w[0].shape for w in windows] == [(2, 4), (2, 4), (2, 3)]
    assert windows[0][0].tolist() == [[0, 1, 2, 3], [11, 12, 13, 14]]
    assert windows[1][0].tolist() == [[4, 5, 6, 7], [15, 16, 17, 18]]
    assert windows[2][1].tolist() == [[9, 10, 11], [20, 21, 22]]
    assert num_windows(len(stream), 2, 4) == 3


def test_dataset_matches_windows_and_skips_for_resume():
    stream = np.arange(23)
    expected = [(x.tolist(), y.tolist()) for x, y in bptt_windows(stream, 2, 4)]
    got = [(x.numpy().tolist(), y.numpy().tolist()) for x, y in bptt_dataset(stream, 2, 4)]
    assert got == expected
    assert [(x.numpy().tolist(), y.numpy().tolist()) for x, y in bptt_dataset(stream, 2, 4, skip=2)] == expected[2:]


def test_stream_restores_document_order(tmp_path):
    import tensorflow as tf

    records = [([7, 8], b"bbbb", 10), ([5, 6], b"aaaa", 20), ([3, 4], b"aaaa", 0), ([9], b"bbbb", 0)]
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    for shard, part in enumerate([records[:2], records[2:]]):
        with tf.io.TFRecordWriter(str(tmp_path / f"train-0000{shard}-of-00002.tfrecord.gz"), options) as w:
            for ids, doc, offset in part:
                w.write(encode_example(ids, doc, offset))
    assert load_token_stream(str(tmp_path), "train").tolist() == [3, 4, 5, 6, 9, 7, 8]


def test_training_iterators_start_no_autotune_thread():
    """An autotuning iterator's model thread made every epoch end wait up to 60 s."""
    from trainer.pairs_data import PairSplit, pair_batches

    assert bptt_dataset(np.arange(50), batch_size=2, bptt=3).options().autotune.enabled is False
    pairs = PairSplit(pair=np.array([0, 1]), source_values=np.array([4, 5, 6], np.int32),
                      source_splits=np.array([0, 2, 3]), target_values=np.array([7, 8, 9, 3], np.int32),
                      target_splits=np.array([0, 2, 4]))
    assert pair_batches(pairs, batch_size=2).options().autotune.enabled is False
