"""`lmpipe serve`: TF Serving's REST API over the exported versions (FastAPI + uvicorn).

    GET  /v1/models/<name>[/versions/<v>]             version status
    GET  /v1/models/<name>[/versions/<v>]/metadata    signature defs, as TF Serving gives them
    POST /v1/models/<name>[/versions/<v>]:predict     {"signature_name", "instances" | "inputs"}
    POST /v1/models/<name>/labels/<label>:predict     stable / canary of models.config

A bad request gets HTTP 400 and {"error": "..."}; the server never dies on input.

Example:
    >>> app = create_app(ModelVersions("work/export/lm").start(), max_batch_size=64)
    >>> uvicorn.run(app, host="127.0.0.1", port=8501)
"""

from __future__ import annotations

import json

import tensorflow as tf
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from serving.model_versions import ModelVersions
from serving.rest_api import BadRequest, check_knobs, columns, format_response, parse_request, to_tensors


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(versions: ModelVersions, max_batch_size: int = 64) -> FastAPI:
    app = FastAPI(title="lmpipe serving", docs_url=None, redoc_url=None)

    def resolve(name: str, version: str | None, label: str | None = None):
        if name != versions.name:
            raise BadRequest(f"unknown model {name!r}; this server serves {versions.name!r}")
        if label is not None:
            loaded = versions.label(label)
            if loaded is None:
                raise BadRequest(f"model {name!r} has no version labelled {label!r}; labels: {sorted(versions.labels)}")
            return loaded
        if version is not None and not version.isdigit():
            raise BadRequest(f"version must be an integer, got {version!r}")
        loaded = versions.get(int(version) if version is not None else None)
        if loaded is None:
            raise BadRequest(f"model {name!r} has no version {version}")
        return loaded

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, err: BadRequest):
        return _error(str(err))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):
        return _error(f"internal error: {type(err).__name__}: {err}", status=500)

    @app.get("/v1/models/{name}")
    def status(name: str):
        resolve(name, None)
        return {"model_version_status": versions.status()}

    @app.get("/v1/models/{name}/versions/{version}")
    def version_status(name: str, version: str):
        loaded = resolve(name, version)
        return {"model_version_status": [s for s in versions.status() if s["version"] == str(loaded.version)]}

    @app.get("/v1/models/{name}/metadata")
    def metadata(name: str):
        return _metadata(resolve(name, None))

    @app.get("/v1/models/{name}/versions/{version}/metadata")
    def version_metadata(name: str, version: str):
        return _metadata(resolve(name, version))

    def _metadata(loaded):
        return {
            "model_spec": {"name": versions.name, "signature_name": "", "version": str(loaded.version)},
            "metadata": {"signature_def": {"signature_def": loaded.signature_defs}},
        }

    @app.post("/v1/models/{name}:predict")
    async def predict(name: str, request: Request):
        return _predict(resolve(name, None), await request.body())

    @app.post("/v1/models/{name}/versions/{version}:predict")
    async def version_predict(name: str, version: str, request: Request):
        return _predict(resolve(name, version), await request.body())

    @app.get("/v1/models/{name}/labels/{label}/metadata")
    def label_metadata(name: str, label: str):
        return _metadata(resolve(name, None, label))

    @app.post("/v1/models/{name}/labels/{label}:predict")
    async def label_predict(name: str, label: str, request: Request):
        return _predict(resolve(name, None, label), await request.body())

    def _predict(loaded, raw: bytes):
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BadRequest(f"malformed JSON: {err}") from None
        signature, data, layout = parse_request(body)
        if signature not in loaded.model.signatures:
            raise BadRequest(f"unknown signature {signature!r}; available: {sorted(loaded.model.signatures)}")
        fn = loaded.signature(signature)
        specs = fn.structured_input_signature[1]
        tensors = to_tensors(columns(data, layout, sorted(specs)), specs)
        check_knobs(tensors, loaded.meta.get("max_new_tokens", 256), max_batch_size)
        try:
            outputs = fn(**tensors)
        except tf.errors.InvalidArgumentError as err:
            raise BadRequest(err.message.split("\n")[0]) from None
        return format_response(outputs, layout)

    return app


def serve(model_base_path: str, host: str = "127.0.0.1", port: int = 8501, max_batch_size: int = 64,
          poll_seconds: float = 2.0, config_dir: str | None = None) -> None:
    """Loads the newest version, watches for new ones, and serves until interrupted."""
    import uvicorn

    versions = ModelVersions(model_base_path, poll_seconds=poll_seconds, config_dir=config_dir).start()
    print(f"serving {versions.name} version {versions.latest().version} from {model_base_path} "
          f"at http://{host}:{port}/v1/models/{versions.name}", flush=True)
    uvicorn.run(create_app(versions, max_batch_size), host=host, port=port, log_level="warning")
