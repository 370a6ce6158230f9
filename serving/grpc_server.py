"""TF Serving's gRPC API, beside REST, over the same `Predictor` (versions, labels, limits,
batching, metrics), with the protos and stubs of `tensorflow-serving-api` on `grpcio`.

    tensorflow.serving.PredictionService/Predict            PredictRequest -> PredictResponse
    tensorflow.serving.PredictionService/GetModelMetadata   metadata_field "signature_def"
    tensorflow.serving.ModelService/GetModelStatus          the served versions

A refused request gets the gRPC status of its error's code (INVALID_ARGUMENT, NOT_FOUND,
RESOURCE_EXHAUSTED, UNAVAILABLE) with the message REST gives it.

Example:
    >>> server = start_grpc_server(predictor, "127.0.0.1", 8500)
    >>> stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel("127.0.0.1:8500"))
"""

from __future__ import annotations

import time
from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2, get_model_status_pb2, model_pb2, model_service_pb2_grpc, predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.predictor import Predictor
from serving.rest_api import BadRequest, ServingError, to_arrays
from serving.tensor_proto import to_array, to_proto

_AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE


def request_arrays(inputs, dtypes: dict[str, tf.DType], ranks: dict[str, int],
                   max_elements: int) -> dict[str, np.ndarray]:
    """PredictRequest.inputs (name -> TensorProto) -> typed arrays, with REST's checks and
    messages; strings must be UTF-8. A numeric proto of the input's dtype stays the array
    it decodes to (no round trip through a list: a stream state is ~2,000 floats). An input
    may hold at most `max_elements` values (`to_array`: a proto's shape is not its size)."""
    cols = {}
    for name, proto in inputs.items():
        if name in dtypes and proto.dtype != dtypes[name].as_datatype_enum:
            raise BadRequest(f"input {name!r} must be {dtypes[name].name}, got {_dtype_name(proto.dtype)}")
        value = to_array(name, proto, max_elements)
        if value.ndim != ranks.get(name, 1):
            raise BadRequest(f"input {name!r} must have rank {ranks.get(name, 1)}, got shape {list(value.shape)}")
        cols[name] = [_text(name, v) if isinstance(v, bytes) else v for v in value.tolist()] \
            if value.dtype == object else value
    return to_arrays(cols, dtypes)


def _dtype_name(enum: int) -> str:
    try:
        return tf.as_dtype(enum).name
    except TypeError:
        return f"DataType {enum}"


def _text(name: str, value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRequest(f"input {name!r} is not valid UTF-8 text ({err.reason} at byte {err.start})") from None


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow.serving.PredictionService over the Predictor (same versions, labels,
    batching, checks and messages as REST)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        # A value takes at least a byte on the wire, unless a short list is filled out to
        # its shape: this bounds what that fill may allocate.
        self.max_elements = predictor.limits.max_request_bytes

    def Predict(self, request, context):  # noqa: N802 - the proto's name
        """PredictRequest -> PredictResponse; a refusal aborts with TF Serving's status code."""
        spec, started = request.model_spec, time.perf_counter()
        signature = spec.signature_name or "serving_default"
        try:
            loaded = _resolve(self.predictor, spec)
            arrays = {}
            if signature in loaded.model.signature_defs:
                arrays = request_arrays(request.inputs, loaded.model.input_dtypes(signature),
                                        loaded.model.input_ranks(signature), self.max_elements)
            self.predictor.check(loaded, signature, arrays)
        except ServingError as err:
            self.predictor.record_refusal(spec.name, signature, "grpc", err, started)
            _abort(context, err)
        try:
            outputs = self.predictor.predict(loaded, signature, arrays, api="grpc")
        except ServingError as err:
            _abort(context, err)
        response = predict_pb2.PredictResponse(model_spec=_spec(spec.name, loaded.version, signature))
        for name, value in outputs.items():
            response.outputs[name].CopyFrom(to_proto(value))
        return response

    def GetModelMetadata(self, request, context):  # noqa: N802
        """The signature_def metadata of a version, as TF Serving answers it."""
        spec = request.model_spec
        if list(request.metadata_field) != ["signature_def"]:
            _abort(context, BadRequest(f"metadata_field must be ['signature_def'], got {list(request.metadata_field)}"))
        try:
            loaded = _resolve(self.predictor, spec)
        except ServingError as err:
            _abort(context, err)
        defs = get_model_metadata_pb2.SignatureDefMap()
        for name, sig in loaded.model.signature_defs.items():
            defs.signature_def[name].CopyFrom(sig)
        response = get_model_metadata_pb2.GetModelMetadataResponse(model_spec=_spec(spec.name, loaded.version, ""))
        response.metadata["signature_def"].Pack(defs)
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """tensorflow.serving.ModelService's GetModelStatus over the Predictor's versions."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def GetModelStatus(self, request, context):  # noqa: N802
        """The state of every served version (or of the one asked for)."""
        spec = request.model_spec
        try:
            loaded = _resolve(self.predictor, spec)
        except ServingError as err:
            _abort(context, err)
        named = spec.HasField("version") or bool(spec.version_label)
        versions = [loaded.version] if named else [int(s["version"]) for s in self.predictor.versions.status()]
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in versions:
            status = response.model_version_status.add(version=version, state=_AVAILABLE)
            status.status.error_code = 0
        return response


def _resolve(predictor: Predictor, spec):
    version = spec.version.value if spec.HasField("version") else None
    return predictor.resolve(spec.name, version, spec.version_label or None)


def _spec(name: str, version: int, signature: str):
    spec = model_pb2.ModelSpec(name=name, signature_name=signature)
    spec.version.value = version
    return spec


def _abort(context, err: ServingError) -> None:
    context.abort(getattr(grpc.StatusCode, err.code, grpc.StatusCode.INTERNAL), str(err))


def start_grpc_server(predictor: Predictor, host: str, port: int, threads: int = 256) -> grpc.Server:
    """Starts the gRPC services on host:port (port 0: a free one, see `server.port`). A
    request holds a thread while it waits for its batch, so `threads` bounds how many
    requests can be in flight (and so how large batches can grow)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"),
                         options=[("grpc.max_receive_message_length", predictor.limits.max_request_bytes)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(predictor), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(predictor), server)
    server.port = server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server
