"""Server-side batching (serving/batching.py) with TF Serving's parameters, on a fake graph
whose calls are recorded: merging, order, timeouts, padding, full queues, lone failures."""

import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from serving.batching import Batcher, BatchingParameters
from serving.rest_api import BadRequest, Unavailable


class FakeGraph:
    """Outputs row i = inputs row i x 10 (and its text); records every call's batch size.
    A row of -1 fails the whole call, as a graph assert would."""

    def __init__(self, hold: threading.Event | None = None):
        self.calls, self.hold = [], hold

    def __call__(self, key, arrays):
        if self.hold is not None:
            self.hold.wait(10)
        x = arrays["x"]
        self.calls.append((key, len(x)))
        if (x == -1).any():
            raise tf.errors.InvalidArgumentError(None, None, "assertion failed: [x must be >= 0]")
        return {"y": x * 10, "text": np.array([f"row {v}".encode() for v in x], dtype=object)}


def _submit_together(batcher, key, requests):
    return [batcher.submit(key, {"x": np.array(r)}) for r in requests]


def test_concurrent_requests_merge_and_get_their_own_rows_in_order():
    graph = FakeGraph()
    batcher = Batcher(BatchingParameters(max_batch_size=8, batch_timeout_micros=200_000), graph)
    futures = _submit_together(batcher, (1, "greedy"), [[1, 2], [3], [4, 5, 6]])
    results = [f.result(5) for f in futures]
    assert [r["y"].tolist() for r in results] == [[10, 20], [30], [40, 50, 60]]
    assert [r["text"].tolist() for r in results][1] == [b"row 3"]
    assert graph.calls == [((1, "greedy"), 6)]  # one graph call for the three requests
    batcher.stop()


def test_batches_never_mix_signatures_or_versions_and_close_when_full():
    graph = FakeGraph()
    batcher = Batcher(BatchingParameters(max_batch_size=4, batch_timeout_micros=200_000), graph)
    futures = [batcher.submit(key, {"x": np.array([1, 2])})
               for key in [(1, "greedy"), (1, "top_p"), (2, "greedy"), (1, "greedy"), (1, "greedy")]]
    for f in futures:
        f.result(5)
    sizes = sorted(graph.calls)
    assert sizes == [((1, "greedy"), 2), ((1, "greedy"), 4), ((1, "top_p"), 2), ((2, "greedy"), 2)]
    batcher.stop()


def test_a_lone_request_waits_at_most_the_timeout():
    batcher = Batcher(BatchingParameters(max_batch_size=64, batch_timeout_micros=50_000), FakeGraph())
    started = time.perf_counter()
    batcher.submit((1, "greedy"), {"x": np.array([7])}).result(5)
    assert 0.04 <= time.perf_counter() - started < 1.0
    batcher.stop()


def test_allowed_batch_sizes_pad_with_the_first_row_and_drop_the_padding():
    graph = FakeGraph()
    batcher = Batcher(BatchingParameters(max_batch_size=8, batch_timeout_micros=1000, allowed_batch_sizes=(4, 8)),
                      graph)
    assert batcher.submit((1, "greedy"), {"x": np.array([5, 6, 7])}).result(5)["y"].tolist() == [50, 60, 70]
    assert graph.calls == [((1, "greedy"), 4)]
    with pytest.raises(ValueError, match="must increase and end at max_batch_size"):
        BatchingParameters(max_batch_size=8, allowed_batch_sizes=(4, 6))
    batcher.stop()


def test_a_failing_request_fails_alone():
    graph = FakeGraph()
    batcher = Batcher(BatchingParameters(max_batch_size=8, batch_timeout_micros=200_000), graph)
    good, bad, other = _submit_together(batcher, (1, "greedy"), [[1], [-1], [2, 3]])
    assert good.result(5)["y"].tolist() == [10] and other.result(5)["y"].tolist() == [20, 30]
    with pytest.raises(tf.errors.InvalidArgumentError, match="x must be >= 0"):
        bad.result(5)
    assert graph.calls[0] == ((1, "greedy"), 4)  # the batch, then each request alone
    batcher.stop()


def test_a_full_queue_refuses_at_once_and_an_oversized_request_is_refused():
    hold = threading.Event()
    batcher = Batcher(BatchingParameters(max_batch_size=2, batch_timeout_micros=0, max_enqueued_batches=2,
                                         num_batch_threads=1), FakeGraph(hold))
    first = batcher.submit((1, "greedy"), {"x": np.array([1, 2])})  # full: runs, held
    time.sleep(0.2)
    queued = [batcher.submit((1, "greedy"), {"x": np.array([3, 4])}) for _ in range(2)]
    started = time.perf_counter()
    with pytest.raises(Unavailable, match="the batching queue is full"):
        batcher.submit((1, "greedy"), {"x": np.array([5, 6])})
    assert time.perf_counter() - started < 0.1
    with pytest.raises(BadRequest, match="Task size 3 is larger than maximum batch size 2"):
        batcher.submit((1, "greedy"), {"x": np.array([1, 2, 3])})
    hold.set()
    assert [f.result(5)["y"].tolist() for f in [first, *queued]] == [[10, 20], [30, 40], [30, 40]]
    batcher.stop()


def test_batching_parameters_file_is_tf_servings_text_format():
    params = BatchingParameters(max_batch_size=16, batch_timeout_micros=500, allowed_batch_sizes=(8, 16))
    assert params.text() == (
        "max_batch_size { value: 16 }\nbatch_timeout_micros { value: 500 }\nmax_enqueued_batches { value: 100 }\n"
        "num_batch_threads { value: 2 }\nallowed_batch_sizes: 8\nallowed_batch_sizes: 16\n"
        "pad_variable_length_inputs: false\n")
