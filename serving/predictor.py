"""What the REST and gRPC front ends of `lmpipe serve` share: finding the version a request
names, the checks made before the graph, batching, the worker threads and the metrics.

A request becomes typed [B] numpy arrays in its front end (JSON or TensorProtos); from
there it is one path: `resolve` -> `check` -> `submit` (a Future of the outputs). So
versions, labels, limits, batching and error messages are the same on both APIs.

Example:
    >>> predictor = Predictor(ModelVersions("work/export/lm").start(), ServerLimits())
    >>> loaded = predictor.resolve("lm", None, None)
    >>> predictor.check(loaded, "greedy", arrays)
    >>> predictor.submit(loaded, "greedy", arrays, api="rest").result()["text"]
"""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import tensorflow as tf

from serving.batching import Batcher, BatchingParameters
from serving.memory import release_free_memory_if_grown
from serving.metrics import ServingMetrics
from serving.model_versions import LoadedVersion, ModelVersions
from serving.rest_api import BadRequest, NotFound, ServingError, check_request, graph_error


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    """What one request may ask of the server (the `serve` section of the config)."""

    max_batch_size: int = 64
    max_request_bytes: int = 8 * 2**20
    compute_budget: int = 65_536  # prompts x beam width x max new tokens
    max_concurrent_predictions: int = 2  # graph runs at once without batching


class Predictor:
    """Versions, checks, batching (when `batching` is given) and metrics of one server."""

    def __init__(self, versions: ModelVersions, limits: ServerLimits = ServerLimits(),
                 batching: BatchingParameters | None = None, metrics: ServingMetrics | None = None) -> None:
        self.versions = versions
        self.limits = limits
        self.metrics = metrics or ServingMetrics()
        self._batcher = Batcher(batching, self._run_key, self._batch_ran) if batching else None
        self._threads = ThreadPoolExecutor(limits.max_concurrent_predictions, thread_name_prefix="predict")
        # Graph runs at once without batching: the pool's threads and the callers that run
        # in their own thread (`predict`) all take one of these.
        self._slots = threading.BoundedSemaphore(limits.max_concurrent_predictions)

    def resolve(self, name: str, version: int | str | None, label: str | None) -> LoadedVersion:
        """The loaded version a request names; NotFound (404) or BadRequest (400) otherwise."""
        if name != self.versions.name:
            raise NotFound(f"Servable not found: unknown model {name!r}; this server serves {self.versions.name!r}")
        if label:
            loaded = self.versions.label(label)
            if loaded is None:
                raise BadRequest(f"Unrecognized servable version label {label!r} of model {name!r}; "
                                 f"labels: {sorted(self.versions.labels)}")
            return loaded
        if isinstance(version, str):
            if not version.isdigit():
                raise BadRequest(f"Failed to convert version: {version!r} to numeric")
            version = int(version)
        loaded = self.versions.get(version or None)
        if loaded is None:
            raise NotFound(f"Servable not found: model {name!r} has no version {version}")
        return loaded

    def check(self, loaded: LoadedVersion, signature: str, arrays: dict[str, np.ndarray]) -> None:
        """Everything refused before the graph: the signature, the knobs' ranges, the batch
        size and the compute budget (the graph asserts the knobs again)."""
        if signature not in loaded.model.signature_defs:
            raise BadRequest(f"unknown signature {signature!r} (not found in the signature defs); "
                             f"available: {sorted(loaded.model.signature_defs)}")
        check_request(arrays, loaded.meta.get("max_new_tokens", 256), self.limits.max_batch_size,
                      self.limits.compute_budget)

    def submit(self, loaded: LoadedVersion, signature: str, arrays: dict[str, np.ndarray], api: str) -> Future:
        """Runs a checked request (batched with others when batching is on): a Future of its
        outputs (name -> numpy array); its exception is a ServingError."""
        started = time.perf_counter()
        if self._batcher is not None:
            inner = self._batcher.submit((loaded.version, signature), arrays)
        else:
            inner = self._threads.submit(self._run, loaded, signature, arrays)
            self._batch_ran((loaded.version, signature), len(next(iter(arrays.values()))))
        outer: Future = Future()
        inner.add_done_callback(lambda done: self._finish(done, outer, loaded, signature, api, started))
        return outer

    def predict(self, loaded: LoadedVersion, signature: str, arrays: dict[str, np.ndarray], api: str) -> dict:
        """`submit(...).result()` for a caller that may block (a gRPC handler, a stream's
        worker thread): without batching the graph runs in the caller's own thread (one
        thread hop less per call), within the same bound on graph runs at once."""
        if self._batcher is not None:
            return self.submit(loaded, signature, arrays, api).result()
        started, done, outer = time.perf_counter(), Future(), Future()
        self._batch_ran((loaded.version, signature), len(next(iter(arrays.values()))))
        try:
            done.set_result(self._run(loaded, signature, arrays))
        except Exception as err:  # noqa: BLE001 - mapped to a ServingError by _finish
            done.set_exception(err)
        self._finish(done, outer, loaded, signature, api, started)
        return outer.result()

    def record_refusal(self, name: str, signature: str, api: str, err: ServingError, started: float) -> None:
        """Counts a request refused before it ran (its status is the error's code)."""
        self.metrics.request(name, "", signature, api, err.code, time.perf_counter() - started)

    def _finish(self, done: Future, outer: Future, loaded, signature, api, started) -> None:
        err = done.exception()
        if err is not None and isinstance(err, tf.errors.OpError):
            err = graph_error(err)
        elif err is not None and not isinstance(err, ServingError):
            err = ServingError(f"internal error: {type(err).__name__}: {err}")
            err.code, err.status = "INTERNAL", 500
        status = "OK" if err is None else err.code
        self.metrics.request(self.versions.name, loaded.version, signature, api, status, time.perf_counter() - started)
        if err is not None:
            outer.set_exception(err)
        else:
            outputs = done.result()
            self.metrics.generated(self.versions.name, loaded.version, signature, outputs)
            outer.set_result(outputs)
        release_free_memory_if_grown()  # after the answer is out, and only after growth (serving.memory)

    def _run(self, loaded: LoadedVersion, signature: str, arrays: dict) -> dict:
        """One graph run without batching, within max_concurrent_predictions."""
        with self._slots:
            return loaded.model.run(signature, arrays)

    def _run_key(self, key, arrays: dict) -> dict:
        version, signature = key
        loaded = self.versions.get(version)
        if loaded is None:
            raise NotFound(f"Servable not found: model {self.versions.name!r} has no version {version}")
        return loaded.model.run(signature, arrays)  # the batcher's threads bound its runs

    def _batch_ran(self, key, rows: int) -> None:
        self.metrics.batch(self.versions.name, key[1], rows)

    def close(self) -> None:
        """Stops the batcher and the prediction threads (for tests and shutdown)."""
        if self._batcher is not None:
            self._batcher.stop()
        self._threads.shutdown(wait=False)
