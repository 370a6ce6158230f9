"""A client of TF Serving's REST API (http://host:8501) and gRPC API (grpc://host:8500): the
same calls work against `lmpipe serve` and a real TF Serving. It fills every knob the
signature takes (TF Serving requires all inputs).

Example:
    >>> client = connect("http://127.0.0.1:8501", "lm")      # or "grpc://127.0.0.1:8500"
    >>> client.generate(["The meaning of"], method="top_p", p=0.9, seed=7)[0]["text"]
    'life is ...'
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse

import numpy as np

from serving.generation_module import SIGNATURE_KNOBS
from serving.knobs import KNOB_SPECS

# gRPC's default receive limit is 4 MiB and a value takes at least a byte: an answer's
# shape may not ask for more values than that (a TensorProto fills a shape from its last).
_MAX_RESPONSE_VALUES = 4 * 2**20


class ServingError(RuntimeError):
    """The server answered with an error (its message included)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class ServerUnreachable(OSError):
    """No answer from the server: refused connection, unknown host, timeout."""


def request_instances(prompts: list[str], method: str, input_name: str = "prompt", **knobs) -> list[dict]:
    """Row-format instances for `method`'s signature: every knob it takes, defaults filled.
    `input_name`: "prompt" (language models) or "source" (sequence-to-sequence models)."""
    if method not in SIGNATURE_KNOBS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(SIGNATURE_KNOBS)}")
    names = SIGNATURE_KNOBS[method]
    unknown = set(knobs) - set(names)
    if unknown:
        raise ValueError(f"{method} does not take {sorted(unknown)}; it takes {list(names)}")
    row = {name: knobs.get(name, KNOB_SPECS[name][1]) for name in names}
    return [{input_name: prompt, **row} for prompt in prompts]


class ServingClient:
    """TF Serving's REST API for one model (and version): status, metadata, Predict, and
    generate/score/stream helpers. Example:
    `ServingClient("http://127.0.0.1:8501", "lm").generate(["the"], method="greedy")[0]["text"]`."""

    def __init__(self, url: str, model: str, version: int | None = None, timeout: float = 120) -> None:
        """`url`: http://host:port (TF Serving's REST port is 8501); ValueError without a scheme."""
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"the server URL must start with http://, https:// or grpc://, got {url!r} "
                             "(e.g. http://127.0.0.1:8501 or grpc://127.0.0.1:8500)")
        self.url = url
        self._local = threading.local()  # one kept-alive connection per thread
        self.base = f"{url.rstrip('/')}/v1/models/{model}" + (f"/versions/{version}" if version else "")
        self.timeout = timeout
        self._prompt_inputs: dict[str, str] = {}  # signature -> its strings input, from metadata

    def status(self) -> dict:
        """GET the model (or version) status, TF Serving's JSON."""
        return self._call("GET", self.base)

    def metadata(self) -> dict:
        """GET the signature metadata, TF Serving's JSON."""
        return self._call("GET", self.base + "/metadata")

    def predict(self, signature: str, instances: list | None = None, inputs: dict | None = None) -> dict:
        """POST :predict with rows (`instances`) or columns (`inputs`); TF Serving's answer."""
        body = {"signature_name": signature}
        body.update({"instances": instances} if instances is not None else {"inputs": inputs})
        return self._call("POST", self.base + ":predict", body)

    def generate(self, prompts: list[str], method: str = "top_p", **knobs) -> list[dict]:
        """One prediction per prompt (or source): text, token_ids, lengths, log_prob."""
        return self.predict(method, request_instances(prompts, method, self.prompt_input(method), **knobs))["predictions"]

    def prompt_input(self, method: str) -> str:
        """"source" when the model's `method` signature takes sources (seq2seq), else "prompt"
        (asked of the server's metadata once per client)."""
        if not self._prompt_inputs:
            defs = self.metadata()["metadata"]["signature_def"]["signature_def"]
            self._prompt_inputs = {name: "source" if "source" in d.get("inputs", {}) else "prompt"
                                   for name, d in defs.items()}
        return self._prompt_inputs.get(method, "prompt")

    def stream(self, prompts: list[str], method: str = "top_p", **knobs):
        """Streams tokens through the export's `stream_start` / `stream_next` signatures with
        ordinary Predict calls (any TF Serving): the events of `serving.stream`."""
        from serving.stream import stream_events, stream_start_inputs

        name = self.prompt_input(method)
        return stream_events(self._stream_call, stream_start_inputs(prompts, method, name, **knobs), name)

    def _stream_call(self, signature: str, inputs: dict) -> dict:
        """One stream call: columns (lists or arrays) -> outputs (name -> values)."""
        columns = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in inputs.items()}
        return self.predict(signature, inputs=columns)["outputs"]

    def stream_sse(self, prompts: list[str], method: str = "top_p", **knobs):
        """The same events from `lmpipe serve`'s `:generate_stream` (Server-Sent Events, one
        HTTP response on this thread's kept-alive connection, which the stream holds until it
        ends); ServingError where the server has no such endpoint (TF Serving)."""
        body = {"signature_name": method,
                "instances": request_instances(prompts, method, self.prompt_input(method), **knobs)}
        connection, response = self._send("POST", self.base + ":generate_stream", json.dumps(body).encode())
        self._local.connection = None  # held by this stream: other calls meanwhile open their own
        if response.status >= 400:
            error = ServingError(response.status, _error_message(response.read().decode("utf-8", errors="replace")))
            self._local.connection = connection
            raise error
        try:
            event = "message"
            for raw in response:
                line = raw.decode("utf-8").rstrip("\n")
                if line.startswith("event: "):
                    event = line[len("event: "):]
                elif line.startswith("data: "):
                    data = json.loads(line[len("data: "):])
                    if event == "error":
                        raise ServingError(400, data["error"])
                    yield data
                    event = "message"
        finally:
            if response.isclosed():  # read to its end: the connection serves the next call
                self._local.connection = connection
            else:  # left mid-stream (an error, or the caller stopped)
                connection.close()

    def score(self, texts: list[str]) -> list[dict]:
        """log_prob, tokens and perplexity of each text (the `score` signature)."""
        return self.predict("score", [{"text": t} for t in texts])["predictions"]

    def _call(self, method: str, url: str, body: dict | None = None) -> dict:
        """One request on this thread's kept-alive connection (a fresh one if the server
        closed it meanwhile)."""
        data = json.dumps(body).encode() if body is not None else None
        connection, response = self._send(method, url, data)
        try:
            payload = response.read()
        except (OSError, http.client.HTTPException) as err:
            connection.close()
            self._local.connection = None
            raise ServerUnreachable(f"cannot reach the model server at {self.url}: {err}") from None
        if response.status >= 400:
            raise ServingError(response.status, _error_message(payload.decode("utf-8", errors="replace")))
        return json.loads(payload)

    def _send(self, method: str, url: str, data: bytes | None):
        """Sends one request on this thread's kept-alive connection (a fresh one if the
        server closed it meanwhile): (connection, response with its headers read)."""
        path = urllib.parse.urlsplit(url).path
        for attempt in (1, 2):
            connection, reused = self._connection()
            try:
                connection.request(method, path, body=data, headers={"Content-Type": "application/json"})
                return connection, connection.getresponse()
            except (OSError, http.client.HTTPException) as err:
                connection.close()
                self._local.connection = None
                if not (reused and attempt == 1):
                    raise ServerUnreachable(f"cannot reach the model server at {self.url}: {err}") from None

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """(this thread's connection, whether it served a request before)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            return connection, True
        parts = urllib.parse.urlsplit(self.url)
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self._local.connection = kind(parts.hostname, parts.port, timeout=self.timeout)
        return self._local.connection, False


def _error_message(text: str) -> str:
    """The server's {"error": ...} message, or the body itself."""
    try:
        return json.loads(text).get("error", text)
    except (json.JSONDecodeError, AttributeError):
        return text


class GrpcServingClient(ServingClient):
    """The same calls over TF Serving's gRPC API (PredictionService, ModelService); answers
    come back in the REST layout, so callers do not care which API they use."""

    def __init__(self, url: str, model: str, version: int | None = None, timeout: float = 120) -> None:
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.url, self.model, self.version, self.timeout = url, model, version, timeout
        self._prompt_inputs, self._dtypes = {}, {}
        channel = grpc.insecure_channel(url[len("grpc://"):])
        self._prediction = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(channel)

    def status(self) -> dict:
        """ModelService.GetModelStatus, in the REST layout."""
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest(model_spec=self._spec(""))
        response = self._rpc(self._models.GetModelStatus, request)
        return json_format.MessageToDict(response, preserving_proto_field_name=True)

    def metadata(self) -> dict:
        """PredictionService.GetModelMetadata (signature_def), in the REST layout."""
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=self._spec(""),
                                                                 metadata_field=["signature_def"])
        response = self._rpc(self._prediction.GetModelMetadata, request)
        defs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(defs)
        self._dtypes = {name: {k: v.dtype for k, v in sig.inputs.items()} for name, sig in defs.signature_def.items()}
        as_json = {name: json_format.MessageToDict(sig, preserving_proto_field_name=True)
                   for name, sig in defs.signature_def.items()}
        return {"model_spec": json_format.MessageToDict(response.model_spec, preserving_proto_field_name=True),
                "metadata": {"signature_def": {"signature_def": as_json}}}

    def predict(self, signature: str, instances: list | None = None, inputs: dict | None = None) -> dict:
        """PredictionService.Predict; the answer in the REST layout (predictions or outputs)."""
        from serving.rest_api import format_response

        columns = inputs if inputs is not None else {k: [row[k] for row in instances] for k in instances[0]}
        return format_response(self._predict_arrays(signature, columns), "row" if inputs is None else "columnar")

    def _stream_call(self, signature: str, inputs: dict) -> dict:
        """One stream call, arrays both ways (a stream state is ~2,000 floats a call)."""
        return self._predict_arrays(signature, inputs)

    def _predict_arrays(self, signature: str, columns: dict) -> dict:
        """Predict on columns (name -> list or array): outputs as numpy arrays. Numbers go in
        as arrays of the signature's dtype (`_cast_column`: a float for an int input is
        refused, not truncated): `tf.make_tensor_proto` checks a list value by value (2.5 ms
        for the list of a 1,900-float stream state, 0.05 ms for the array; 0.08 ms even for
        a one-value knob, and a stream call sends ten), so numbers go through `to_proto`
        (the same protos, field for field, in a fifth of the time)."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        from serving.tensor_proto import to_array, to_proto

        if not self._dtypes:
            self.metadata()
        dtypes = self._dtypes.get(signature, {})
        request = predict_pb2.PredictRequest(model_spec=self._spec(signature))
        for name, values in columns.items():
            dtype = tf.as_dtype(dtypes[name]) if name in dtypes else None
            if dtype is not None and dtype != tf.string:
                proto = to_proto(_cast_column(signature, name, np.asarray(values), dtype.as_numpy_dtype))
            else:
                proto = tf.make_tensor_proto(values, dtype=dtype)  # checks that text is text
            request.inputs[name].CopyFrom(proto)
        response = self._rpc(self._prediction.Predict, request)
        return {name: to_array(name, proto, _MAX_RESPONSE_VALUES) for name, proto in response.outputs.items()}

    def _spec(self, signature: str):
        from tensorflow_serving.apis import model_pb2

        spec = model_pb2.ModelSpec(name=self.model, signature_name=signature)
        if self.version:
            spec.version.value = self.version
        return spec

    def _rpc(self, method, request):
        import grpc

        from serving.rest_api import STATUS

        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as err:
            if err.code() in (grpc.StatusCode.UNAVAILABLE,) and "failed to connect" in (err.details() or "").lower():
                raise ServerUnreachable(f"cannot reach the model server at {self.url}: {err.details()}") from None
            raise ServingError(STATUS.get(err.code().name, 500), err.details() or err.code().name) from None


def _cast_column(signature: str, name: str, values: np.ndarray, dtype) -> np.ndarray:
    """values as `dtype`; ValueError (naming the input) where that would change a value's
    kind (a float array for an int input) or wrap an integer out of the dtype's range."""
    if not np.can_cast(values.dtype, dtype, casting="same_kind") or (values.dtype == bool) != (np.dtype(dtype) == bool):
        raise ValueError(f"input {name!r} of {signature} must be {np.dtype(dtype).name}, got an array of {values.dtype}")
    if np.issubdtype(dtype, np.integer) and values.size:
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise ValueError(f"input {name!r} of {signature} is out of range for {np.dtype(dtype).name} "
                             f"([{info.min}, {info.max}])")
    return values.astype(dtype, copy=False)


def connect(url: str, model: str, version: int | None = None, timeout: float = 120) -> ServingClient:
    """A client for `url`: grpc://host:port (gRPC) or http(s)://host:port (REST)."""
    if url.startswith("grpc://"):
        return GrpcServingClient(url, model, version, timeout)
    return ServingClient(url, model, version, timeout)
