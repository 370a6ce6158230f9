"""`lmpipe serve`: TF Serving's REST API over the exported versions (FastAPI + uvicorn).

    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]            version status
    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata   signature defs, as TF Serving gives them
    POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict    {"signature_name", "instances" | "inputs"}
    POST /v1/models/<name>[/versions/<v>]:generate_stream        the same body (greedy, sample, top_k,
                                                                 top_p) -> Server-Sent Events, a token each

Versions are loaded and run as TF Serving runs them (`SessionModel`: a Session over the
MetaGraph, requests by SignatureDef tensor names), so what this server answers is what
TF Serving would answer.

No request can take the server down or stall it:
- a body over `max_request_bytes` is refused with 413, never held in memory;
- every knob's range, the batch size and the compute budget (prompts x beam width x
  max new tokens) are checked before the graph runs (the graph checks the knobs again);
- predictions run in worker threads (at most `max_concurrent_predictions` at a time, or
  the batcher's `num_batch_threads`), never on the event loop, so status, metadata and
  other refusals answer at once;
- after each prediction the C allocator hands freed memory back to the system.

Every error is `{"error": "<message>"}` with TF Serving's status for it: 400 for a bad
request (and for a path TF Serving does not know: "Malformed request"), 404 for an
unknown model or version, 413 for a body over the cap, 429 when the graph runs out of
memory, 500 for a bug.

Also: `GET /monitoring/prometheus/metrics` (TF Serving's path; `serving/metrics.py`), and
TF Serving's gRPC API beside REST (`serving/grpc_server.py`), both over one `Predictor`.

Example:
    >>> app = create_app(Predictor(ModelVersions("work/export/lm").start(), ServerLimits()))
    >>> uvicorn.run(app, host="127.0.0.1", port=8501)
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import time

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.batching import BatchingParameters
from serving.generation_module import STREAM_KNOBS
from serving.metrics import CONTENT_TYPE, METRICS_PATH, ServingMetrics
from serving.model_versions import LoadedVersion, ModelVersions
from serving.predictor import Predictor, ServerLimits
from serving.rest_api import (
    STATUS, BadRequest, ServingError, columns, format_response, parse_body, parse_request, to_arrays,
)
from serving.stream import METHOD_IDS, stream_events, stream_start_inputs


class PayloadTooLarge(ServingError):
    """A body over the cap: HTTP 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is over this server's limit of {limit} bytes "
                         "(serve.max_request_bytes): send fewer or shorter prompts")
        self.status = 413


DRAIN_FACTOR = 8
# Requests and answers this small are parsed and encoded on the event loop: a worker-thread
# hop each way costs more than the work, and under concurrent load the hops of a batch's
# requests queue behind one another (larger ones still go to a worker thread).
INLINE_BODY_BYTES = 16 * 1024
INLINE_ANSWER_VALUES = 4096


STREAM_INPUTS = {"method", *STREAM_KNOBS}


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(predictor: Predictor) -> FastAPI:
    """TF Serving's REST API over `predictor` (its versions, limits, batching, metrics):
    status and metadata by version or label, `:predict`, the Prometheus metrics and
    lmpipe's `:generate_stream`.

    Example:
        >>> uvicorn.run(create_app(Predictor(versions, limits)), port=8501)
    """
    app = FastAPI(title="lmpipe serving", docs_url=None, redoc_url=None, openapi_url=None)
    _error_handlers(app)
    handlers = _RestHandlers(predictor)
    _add_status_routes(app, handlers)
    _add_predict_routes(app, handlers)
    return app


def _add_status_routes(app: FastAPI, handlers: "_RestHandlers") -> None:
    """GET status and metadata (by latest, version or label) and the metrics. Plain
    functions: FastAPI runs them in its thread pool, so a version loaded on demand never
    blocks the event loop."""
    resolve, status_of, metadata_of = handlers.resolve, handlers.status_of, handlers.metadata_of

    @app.get("/v1/models/{name}")
    def status(request: Request, name: str):
        return status_of(resolve(request, name), everything=True)

    @app.get("/v1/models/{name}/versions/{version}")
    def version_status(request: Request, name: str, version: str):
        return status_of(resolve(request, name, version), everything=False)

    @app.get("/v1/models/{name}/labels/{label}")
    def label_status(request: Request, name: str, label: str):
        return status_of(resolve(request, name, None, label), everything=False)

    @app.get("/v1/models/{name}/metadata")
    def metadata(request: Request, name: str):
        return metadata_of(resolve(request, name))

    @app.get("/v1/models/{name}/versions/{version}/metadata")
    def version_metadata(request: Request, name: str, version: str):
        return metadata_of(resolve(request, name, version))

    @app.get("/v1/models/{name}/labels/{label}/metadata")
    def label_metadata(request: Request, name: str, label: str):
        return metadata_of(resolve(request, name, None, label))

    @app.get(METRICS_PATH)
    def metrics():
        return Response(handlers.predictor.metrics.exposition(), media_type=CONTENT_TYPE)


def _add_predict_routes(app: FastAPI, handlers: "_RestHandlers") -> None:
    """POST `:predict` (latest, version, label) and `:generate_stream` (latest, version)."""

    @app.post("/v1/models/{name}:predict")
    async def predict(request: Request, name: str):
        return await handlers.predict(request, name, None, None)

    @app.post("/v1/models/{name}/versions/{version}:predict")
    async def version_predict(request: Request, name: str, version: str):
        return await handlers.predict(request, name, version, None)

    @app.post("/v1/models/{name}/labels/{label}:predict")
    async def label_predict(request: Request, name: str, label: str):
        return await handlers.predict(request, name, None, label)

    @app.post("/v1/models/{name}:generate_stream")
    async def generate_stream(request: Request, name: str):
        return await handlers.stream(request, name, None)

    @app.post("/v1/models/{name}/versions/{version}:generate_stream")
    async def version_generate_stream(request: Request, name: str, version: str):
        return await handlers.stream(request, name, version)


class _RestHandlers:
    """What the REST routes do, over one `Predictor`."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def resolve(self, request: Request, name: str, version: str | None = None,
                label: str | None = None) -> LoadedVersion:
        """The version a path names; a ':' in the name is a malformed path (TF Serving's
        names have none; e.g. GET on a :predict path)."""
        if ":" in name:
            raise BadRequest(f"Malformed request: {request.method} {request.url.path}")
        return self.predictor.resolve(name, version, label)

    def status_of(self, loaded: LoadedVersion, everything: bool) -> dict:
        """GetModelStatus's JSON: every version's state, or `loaded`'s alone."""
        states = self.predictor.versions.status()
        return {"model_version_status": states if everything else
                [s for s in states if s["version"] == str(loaded.version)]}

    def metadata_of(self, loaded: LoadedVersion) -> dict:
        """GetModelMetadata's JSON: the version's SignatureDefs."""
        return {
            "model_spec": {"name": self.predictor.versions.name, "signature_name": "",
                           "version": str(loaded.version)},
            "metadata": {"signature_def": {"signature_def": loaded.signature_defs}},
        }

    async def predict(self, request: Request, name: str, version: str | None, label: str | None):
        """A `:predict` body -> TF Serving's JSON answer (row or columnar, as asked)."""
        predictor, started, context = self.predictor, time.perf_counter(), {"signature": ""}
        try:
            raw = await _read_body(request, predictor.limits.max_request_bytes)
            prepare = functools.partial(self.prepare, request, name, version, label, raw, context)
            # A small body to the latest version is parsed and checked on the event loop (tens
            # of us); a large one, or one that may load a version, in a worker thread.
            if version is None and label is None and len(raw) <= INLINE_BODY_BYTES:
                loaded, signature, arrays, layout = prepare()
            else:
                loaded, signature, arrays, layout = await anyio.to_thread.run_sync(prepare)  # refusals answer at once
        except ServingError as err:
            predictor.record_refusal(name, context["signature"], "rest", err, started)
            raise
        outputs = await asyncio.wrap_future(predictor.submit(loaded, signature, arrays, api="rest"))
        if sum(np.size(value) for value in outputs.values()) <= INLINE_ANSWER_VALUES:
            return _encode(outputs, layout)
        return await anyio.to_thread.run_sync(_encode, outputs, layout)

    async def stream(self, request: Request, name: str, version: str | None):
        """Server-Sent Events over the export's stream signatures: the body is a :predict
        body for greedy, sample, top_k or top_p; one event per token, then one per row with
        the whole text, its log-probability and why it stopped (`serving/stream.py`)."""
        predictor, started, context = self.predictor, time.perf_counter(), {"signature": ""}
        try:
            raw = await _read_body(request, predictor.limits.max_request_bytes)
            prepare = functools.partial(self.prepare, request, name, version, None, raw, context)
            # One worker-thread hop checks the request and runs stream_start, so the first
            # event is ready when the response starts (`_sse`).
            events = await anyio.to_thread.run_sync(_first_events, prepare, predictor)
        except ServingError as err:
            predictor.record_refusal(name, context["signature"], "rest", err, started)
            raise
        return StreamingResponse(events, media_type="text/event-stream")

    def prepare(self, request, name, version, label, raw: bytes, context: dict):
        """Body bytes -> (version, signature, input arrays, layout), every check done (a
        refused request fails here, before it joins a batch); `context` gets the signature."""
        loaded = self.resolve(request, name, version, label)
        signature, data, layout = parse_request(parse_body(raw))
        context["signature"] = signature
        arrays = {}
        if signature in loaded.model.signature_defs:
            dtypes = loaded.model.input_dtypes(signature)
            arrays = to_arrays(columns(data, layout, sorted(dtypes)), dtypes, loaded.model.input_ranks(signature))
        self.predictor.check(loaded, signature, arrays)
        return loaded, signature, arrays, layout


def _stream_start(loaded: LoadedVersion, method: str, arrays: dict) -> dict:
    """stream_start's inputs for a checked :predict request of `method`."""
    if method not in METHOD_IDS:
        raise BadRequest(f"streaming decodes with one of {sorted(METHOD_IDS)}, not {method!r}")
    if "stream_start" not in loaded.model.signature_defs:
        raise BadRequest(f"version {loaded.version} has no stream signatures (exported before streaming): "
                         "export it again with this lmpipe")
    strings = next(name for name, value in arrays.items() if value.dtype == object)
    knobs = {k: v.tolist() for k, v in arrays.items() if k != strings}
    return stream_start_inputs([str(p) for p in arrays[strings].tolist()], method, strings, **knobs)


def _first_events(prepare, predictor: Predictor):
    """In a worker thread: the checked request (`prepare`; its refusals raise), then the
    SSE stream with its first event already computed (stream_start has run)."""
    loaded, method, arrays, _ = prepare()
    events = _sse(predictor, loaded, _stream_start(loaded, method, arrays))
    first = next(events)

    def stream():
        yield first
        yield from events

    return stream()


def _sse(predictor: Predictor, loaded: LoadedVersion, start: dict):
    """The event stream (a generator Starlette runs in a worker thread)."""
    strings = next(k for k in start if k not in STREAM_INPUTS)

    def call(signature: str, inputs: dict) -> dict:
        dtypes = loaded.model.input_dtypes(signature)
        arrays = {k: np.asarray(v, dtype=dtypes[k].as_numpy_dtype) for k, v in inputs.items()}
        return predictor.predict(loaded, signature, arrays, api="rest")

    try:
        for event in stream_events(call, start, strings):
            yield f"data: {json.dumps(event)}\n\n"
    except ServingError as err:
        yield f"event: error\ndata: {json.dumps({'error': str(err)})}\n\n"


def _encode(outputs: dict, layout: str) -> Response:
    """The JSON answer, encoded in a worker thread (a large one encoded on the event loop
    would hold status requests up)."""
    return Response(json.dumps(format_response(outputs, layout), allow_nan=False), media_type="application/json")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body; over `limit` bytes it is refused (413) without being kept: what the client
    still sends is read and dropped, up to `DRAIN_FACTOR` x `limit`, so it reads the 413
    instead of a reset connection (beyond that the connection is closed)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > DRAIN_FACTOR * limit:
            break
    if size > limit:
        raise PayloadTooLarge(limit)
    return b"".join(chunks)


def _error_handlers(app: FastAPI) -> None:
    """One error shape for every status: {"error": message}."""

    @app.exception_handler(ServingError)
    async def serving_error(request: Request, err: ServingError):
        return _error(str(err), err.status)

    @app.exception_handler(StarletteHTTPException)
    async def framework_error(request: Request, err: StarletteHTTPException):
        if request.url.path.lower().startswith("/v1/"):  # TF Serving: any other /v1/ request
            return _error(f"Malformed request: {request.method} {request.url.path}", STATUS["INVALID_ARGUMENT"])
        return _error(f"{err.detail}: {request.method} {request.url.path}", err.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError):
        return _error(f"Malformed request: {request.method} {request.url.path}", STATUS["INVALID_ARGUMENT"])

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):
        return _error(f"internal error: {type(err).__name__}: {err}", STATUS["INTERNAL"])


def serve(model_base_path: str, host: str = "127.0.0.1", port: int = 8501, limits: ServerLimits = ServerLimits(),
          batching: BatchingParameters | None = None, grpc_port: int | None = 8500, poll_seconds: float = 2.0,
          config_dir: str | None = None) -> None:
    """Loads the newest version, watches for new ones, and serves REST on `port` and gRPC on
    `grpc_port` (None or 0: no gRPC) until interrupted."""
    import uvicorn

    from serving.grpc_server import start_grpc_server

    metrics = ServingMetrics()
    name = os.path.basename(os.path.normpath(model_base_path))
    versions = ModelVersions(model_base_path, poll_seconds=poll_seconds, config_dir=config_dir,
                             on_load=lambda version, status, seconds: metrics.load(name, version, status, seconds))
    predictor = Predictor(versions.start(), limits, batching, metrics)
    grpc_server = start_grpc_server(predictor, host, grpc_port) if grpc_port else None
    print(f"serving {versions.name} version {versions.latest().version} from {model_base_path} "
          f"at http://{host}:{port}/v1/models/{versions.name}"
          + (f" and grpc://{host}:{grpc_port}" if grpc_server else "")
          + (f", batching up to {batching.max_batch_size} rows" if batching else ""), flush=True)
    try:
        uvicorn.run(create_app(predictor), host=host, port=port, log_level="warning")
    finally:
        if grpc_server is not None:
            grpc_server.stop(grace=None)
        predictor.close()
