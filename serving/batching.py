"""Server-side batching with TF Serving's parameters and meanings (`--enable_batching`).

Concurrent requests for one signature of one version are merged along dimension 0 (every
input of our signatures is [B]) and run as one graph call; each request gets its own
rows back, in order. As in TF Serving's BasicBatchScheduler:

    max_batch_size          rows of one batch; a request with more is refused
    batch_timeout_micros    how long the first request of a batch waits for others
    max_enqueued_batches    batches waiting (open or closed); beyond it a request is
                            refused at once with UNAVAILABLE (HTTP 503)
    num_batch_threads       batches run at the same time
    allowed_batch_sizes     a batch is padded (with copies of its first row) up to the
                            next of these sizes, and the padding rows' outputs dropped
    pad_variable_length_inputs   accepted for TF Serving's file; our inputs are all [B]

Batches never mix signatures or versions (one queue per (version, signature)). Outputs are
split along dimension 0 only, so a row keeps the batch's trailing shape (e.g. token_ids
[T] with T the batch's largest max_new_tokens, zero-padded), exactly as TF Serving returns
them. Decoding is per row (counter-based seeds, per-row lengths), so a row's text, tokens,
lengths and log-probability are those it gets alone. A batch whose graph call fails with
a request's error (InvalidArgument: a prompt over max_prompt_tokens, say) is rerun one
request at a time, so only the bad request fails.

Example:
    >>> batcher = Batcher(BatchingParameters(max_batch_size=16), run=lambda key, arrays: model.run(key[1], arrays))
    >>> batcher.submit((3, "greedy"), arrays).result()["text"]
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Hashable

import numpy as np
import tensorflow as tf

from serving.rest_api import BadRequest, Unavailable


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's BatchingParameters (session_bundle_config.proto), same names and defaults
    but `max_enqueued_batches` and `num_batch_threads` (TF Serving: 1000 and the cores)."""

    max_batch_size: int = 64
    batch_timeout_micros: int = 1000
    max_enqueued_batches: int = 100
    num_batch_threads: int = 2
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def __post_init__(self) -> None:
        sizes = list(self.allowed_batch_sizes)
        if sizes and (sizes != sorted(set(sizes)) or sizes[-1] != self.max_batch_size):
            raise ValueError("allowed_batch_sizes must increase and end at max_batch_size "
                             f"({self.max_batch_size}), as TF Serving requires; got {sizes}")

    @classmethod
    def from_config(cls, section) -> "BatchingParameters":
        """From the config's `serve.batching` section (`pipeline.core.config.BatchingConfig`)."""
        values = section.model_dump(exclude={"enabled"})
        return cls(**{**values, "allowed_batch_sizes": tuple(values["allowed_batch_sizes"])})

    def text(self) -> str:
        """TF Serving's `--batching_parameters_file` (BatchingParameters in text format)."""
        lines = [f"max_batch_size {{ value: {self.max_batch_size} }}",
                 f"batch_timeout_micros {{ value: {self.batch_timeout_micros} }}",
                 f"max_enqueued_batches {{ value: {self.max_enqueued_batches} }}",
                 f"num_batch_threads {{ value: {self.num_batch_threads} }}"]
        lines += [f"allowed_batch_sizes: {size}" for size in self.allowed_batch_sizes]
        lines.append(f"pad_variable_length_inputs: {str(self.pad_variable_length_inputs).lower()}")
        return "\n".join(lines) + "\n"


@dataclasses.dataclass
class _Task:
    arrays: dict[str, np.ndarray]
    rows: int
    future: Future


@dataclasses.dataclass
class _Batch:
    tasks: list[_Task] = dataclasses.field(default_factory=list)
    rows: int = 0
    opened: float = 0.0


class Batcher:
    """Queues, one per key (version, signature), feeding `num_batch_threads` workers that
    call `run(key, arrays)` -> outputs (name -> array with the batch along dim 0).
    `on_batch(key, rows)` is told the size of every graph run (for metrics)."""

    def __init__(self, params: BatchingParameters, run: Callable[[Hashable, dict], dict],
                 on_batch: Callable[[Hashable, int], None] | None = None) -> None:
        self.params = params
        self._run = run
        self._on_batch = on_batch or (lambda key, rows: None)
        self._workers = ThreadPoolExecutor(params.num_batch_threads, thread_name_prefix="batch")
        self._open: dict[Hashable, _Batch] = {}
        self._closed: collections.deque[tuple[Hashable, _Batch]] = collections.deque()
        self._waiting = 0  # closed batches not yet started
        self._lock = threading.Condition()
        self._stopped = False
        threading.Thread(target=self._schedule, name="batch-scheduler", daemon=True).start()

    def submit(self, key: Hashable, arrays: dict[str, np.ndarray]) -> Future:
        """Queues one request; its future gets the request's own rows of the outputs."""
        rows = len(next(iter(arrays.values())))
        if rows > self.params.max_batch_size:
            raise BadRequest(f"Task size {rows} is larger than maximum batch size {self.params.max_batch_size} "
                             "(serve.batching.max_batch_size)")
        task = _Task(arrays, rows, Future())
        with self._lock:
            batch = self._open.get(key)
            if batch is not None and batch.rows + rows > self.params.max_batch_size:
                self._close(key)
                batch = None
            if batch is None:
                if self._waiting + len(self._open) >= self.params.max_enqueued_batches:
                    raise Unavailable(f"the batching queue is full ({self.params.max_enqueued_batches} batches "
                                      "waiting, serve.batching.max_enqueued_batches): retry later")
                batch = self._open[key] = _Batch(opened=time.monotonic())
            batch.tasks.append(task)
            batch.rows += rows
            if batch.rows == self.params.max_batch_size:
                self._close(key)
            self._lock.notify_all()
        return task.future

    def stop(self) -> None:
        """Stops taking requests and lets the batch threads end (queued requests are not run)."""
        with self._lock:
            self._stopped = True
            self._lock.notify_all()
        self._workers.shutdown(wait=False)

    def _close(self, key) -> None:
        """Moves the open batch of `key` to the run queue (the lock is held)."""
        self._closed.append((key, self._open.pop(key)))
        self._waiting += 1
        self._workers.submit(self._run_next)

    def _schedule(self) -> None:
        """Closes open batches whose first request has waited `batch_timeout_micros`."""
        timeout = self.params.batch_timeout_micros / 1e6
        with self._lock:
            while not self._stopped:
                now = time.monotonic()
                for key in [k for k, b in self._open.items() if now - b.opened >= timeout]:
                    self._close(key)
                deadlines = [b.opened + timeout for b in self._open.values()]
                self._lock.wait(max(min(deadlines) - now, 0.0) if deadlines else None)

    def _run_next(self) -> None:
        with self._lock:
            key, batch = self._closed.popleft()
            self._waiting -= 1
        try:
            self._run_batch(key, batch)
        except BaseException as err:  # noqa: BLE001 - every waiting request must hear of it
            for task in batch.tasks:
                if not task.future.done():
                    task.future.set_exception(err)

    def _run_batch(self, key, batch: _Batch) -> None:
        if len(batch.tasks) == 1 and not self.params.allowed_batch_sizes:
            self._on_batch(key, batch.rows)
            batch.tasks[0].future.set_result(self._run(key, batch.tasks[0].arrays))
            return
        merged = {name: np.concatenate([t.arrays[name] for t in batch.tasks]) for name in batch.tasks[0].arrays}
        merged = _pad_rows(merged, batch.rows, self.params.allowed_batch_sizes)
        self._on_batch(key, len(next(iter(merged.values()))))
        try:
            outputs = self._run(key, merged)
        except tf.errors.InvalidArgumentError:
            if len(batch.tasks) == 1:
                raise
            for task in batch.tasks:  # one request's check failed: each request alone
                self._run_alone(key, task)
            return
        start = 0
        for task in batch.tasks:
            task.future.set_result({name: value[start:start + task.rows] for name, value in outputs.items()})
            start += task.rows

    def _run_alone(self, key, task: _Task) -> None:
        try:
            self._on_batch(key, task.rows)
            task.future.set_result(self._run(key, task.arrays))
        except Exception as err:  # noqa: BLE001 - this request's own error
            task.future.set_exception(err)


def _pad_rows(arrays: dict[str, np.ndarray], rows: int, allowed: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Pads every [B] input to the next allowed batch size with copies of row 0."""
    if not allowed:
        return arrays
    size = allowed[bisect.bisect_left(allowed, rows)]
    if size == rows:
        return arrays
    return {name: np.concatenate([value, np.repeat(value[:1], size - rows, axis=0)]) for name, value in arrays.items()}
