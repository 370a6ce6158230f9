"""`lmpipe serve`: TF Serving's REST API over the exported versions (FastAPI + uvicorn).

    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]            version status
    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata   signature defs, as TF Serving gives them
    POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict    {"signature_name", "instances" | "inputs"}

Versions are loaded and run as TF Serving runs them (`SessionModel`: a Session over the
MetaGraph, requests by SignatureDef tensor names), so what this server answers is what
TF Serving would answer.

No request can take the server down or stall it:
- a body over `max_request_bytes` is refused with 413, never held in memory;
- every knob's range, the batch size and the compute budget (prompts x beam width x
  max new tokens) are checked before the graph runs (the graph checks the knobs again);
- predictions run in worker threads, at most `max_concurrent_predictions` at a time,
  never on the event loop, so status, metadata and other refusals answer at once;
- after each prediction the C allocator hands freed memory back to the system.

Every error is `{"error": "<message>"}` with TF Serving's status for it: 400 for a bad
request (and for a path TF Serving does not know: "Malformed request"), 404 for an
unknown model or version, 413 for a body over the cap, 429 when the graph runs out of
memory, 500 for a bug.

Example:
    >>> app = create_app(ModelVersions("work/export/lm").start(), ServerLimits())
    >>> uvicorn.run(app, host="127.0.0.1", port=8501)
"""

from __future__ import annotations

import dataclasses
import functools
import json

import anyio
import tensorflow as tf
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.memory import release_free_memory
from serving.model_versions import LoadedVersion, ModelVersions
from serving.rest_api import (
    STATUS, BadRequest, NotFound, ServingError, check_request, columns, format_response, graph_error,
    parse_body, parse_request, to_arrays,
)


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    """What one request may ask of the server (the `serve` section of the config)."""

    max_batch_size: int = 64
    max_request_bytes: int = 8 * 2**20
    compute_budget: int = 65_536  # prompts x beam width x max new tokens
    max_concurrent_predictions: int = 2


class PayloadTooLarge(ServingError):
    """A body over the cap: HTTP 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is over this server's limit of {limit} bytes "
                         "(serve.max_request_bytes): send fewer or shorter prompts")
        self.status = 413


DRAIN_FACTOR = 8


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(versions: ModelVersions, limits: ServerLimits = ServerLimits()) -> FastAPI:
    app = FastAPI(title="lmpipe serving", docs_url=None, redoc_url=None, openapi_url=None)
    predictions = anyio.CapacityLimiter(limits.max_concurrent_predictions)
    _error_handlers(app)

    def resolve(request: Request, name: str, version: str | None = None, label: str | None = None) -> LoadedVersion:
        if ":" in name:  # TF Serving's model names have no ':'; e.g. GET on a :predict path
            raise BadRequest(f"Malformed request: {request.method} {request.url.path}")
        if name != versions.name:
            raise NotFound(f"Servable not found: unknown model {name!r}; this server serves {versions.name!r}")
        if label is not None:
            loaded = versions.label(label)
            if loaded is None:
                raise BadRequest(f"Unrecognized servable version label {label!r} of model {name!r}; "
                                 f"labels: {sorted(versions.labels)}")
            return loaded
        if version is not None and not version.isdigit():
            raise BadRequest(f"Failed to convert version: {version!r} to numeric")
        loaded = versions.get(int(version) if version is not None else None)
        if loaded is None:
            raise NotFound(f"Servable not found: model {name!r} has no version {version}")
        return loaded

    def status_of(loaded: LoadedVersion, everything: bool) -> dict:
        states = versions.status()
        return {"model_version_status": states if everything else
                [s for s in states if s["version"] == str(loaded.version)]}

    def metadata_of(loaded: LoadedVersion) -> dict:
        return {
            "model_spec": {"name": versions.name, "signature_name": "", "version": str(loaded.version)},
            "metadata": {"signature_def": {"signature_def": loaded.signature_defs}},
        }

    # Status and metadata are plain functions: FastAPI runs them in its thread pool, so a
    # version loaded on demand never blocks the event loop.
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

    @app.post("/v1/models/{name}:predict")
    async def predict(request: Request, name: str):
        return await _predict(request, name, None, None)

    @app.post("/v1/models/{name}/versions/{version}:predict")
    async def version_predict(request: Request, name: str, version: str):
        return await _predict(request, name, version, None)

    @app.post("/v1/models/{name}/labels/{label}:predict")
    async def label_predict(request: Request, name: str, label: str):
        return await _predict(request, name, None, label)

    async def _predict(request: Request, name: str, version: str | None, label: str | None):
        raw = await _read_body(request, limits.max_request_bytes)
        prepare = functools.partial(_prepare, request, name, version, label, raw)
        loaded, signature, arrays, layout = await anyio.to_thread.run_sync(prepare)  # refusals answer at once
        run = functools.partial(_run, loaded, signature, arrays, layout)
        return await anyio.to_thread.run_sync(run, limiter=predictions)

    def _prepare(request, name, version, label, raw: bytes):
        loaded = resolve(request, name, version, label)
        signature, data, layout = parse_request(parse_body(raw))
        if signature not in loaded.model.signature_defs:
            raise BadRequest(f"unknown signature {signature!r} (not found in the signature defs); "
                             f"available: {sorted(loaded.model.signature_defs)}")
        dtypes = loaded.model.input_dtypes(signature)
        arrays = to_arrays(columns(data, layout, sorted(dtypes)), dtypes)
        check_request(arrays, loaded.meta.get("max_new_tokens", 256), limits.max_batch_size,
                      limits.compute_budget)
        return loaded, signature, arrays, layout

    return app


def _run(loaded: LoadedVersion, signature: str, arrays: dict, layout: str) -> Response:
    """Runs the graph and encodes the JSON answer, both here in a worker thread (a large
    answer encoded on the event loop would hold status requests up)."""
    try:
        body = json.dumps(format_response(loaded.model.run(signature, arrays), layout), allow_nan=False)
        return Response(body, media_type="application/json")
    except tf.errors.OpError as err:
        raise graph_error(err) from None
    finally:
        release_free_memory()


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
          poll_seconds: float = 2.0, config_dir: str | None = None) -> None:
    """Loads the newest version, watches for new ones, and serves until interrupted."""
    import uvicorn

    versions = ModelVersions(model_base_path, poll_seconds=poll_seconds, config_dir=config_dir).start()
    print(f"serving {versions.name} version {versions.latest().version} from {model_base_path} "
          f"at http://{host}:{port}/v1/models/{versions.name}", flush=True)
    uvicorn.run(create_app(versions, limits), host=host, port=port, log_level="warning")
