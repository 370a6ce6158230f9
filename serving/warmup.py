"""`assets.extra/tf_serving_warmup_requests`: a TFRecord of PredictionLog protos, one per
signature, that TF Serving replays when it loads a version (so the first real request
does not pay for graph warm-up). Built with tensorflow-serving-api's own protos.

`stream_next` needs a state only this export can make: its record continues the streams
of the `stream_start` record (that function is run once to get the state and tokens).

Example:
    >>> write_warmup_requests(path, "lm", module.signatures())
"""

from __future__ import annotations

import os

import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from serving.knobs import KNOB_SPECS

WARMUP_FILE = "tf_serving_warmup_requests"
WARMUP_PROMPTS = ["the", "a"]
WARMUP_METHODS = [0, 3]  # the stream signatures' `method` per row: greedy, top_p


def warmup_inputs(signature, signatures: dict | None = None) -> dict[str, list]:
    """Inputs for one call of `signature` (a concrete function): two rows, default knobs;
    `stream_next` (which takes a `state`) continues `signatures["stream_start"]`.

    Example:
        >>> warmup_inputs(signatures["greedy"])["max_new_tokens"]
        [4, 4]
    """
    specs = signature.structured_input_signature[1]
    if "state" in specs:
        return _stream_next_inputs(signatures["stream_start"])
    inputs = {}
    for name, spec in specs.items():
        if spec.dtype == tf.string:
            inputs[name] = list(WARMUP_PROMPTS)
        elif name == "method":
            inputs[name] = list(WARMUP_METHODS)
        else:
            default = KNOB_SPECS[name][1]
            inputs[name] = [min(default, 4) if name == "max_new_tokens" else default] * len(WARMUP_PROMPTS)
    return inputs


def _stream_next_inputs(start) -> dict[str, list]:
    """The second call of the streams that `start` (stream_start) begins on the warmup inputs."""
    inputs = warmup_inputs(start)
    specs = start.structured_input_signature[1]
    out = start(**{k: tf.constant(v, specs[k].dtype) for k, v in inputs.items()})
    knobs = {k: v for k, v in inputs.items() if specs[k].dtype != tf.string}
    return {"state": out["state"].numpy().tolist(), "token": out["token"].numpy().tolist(),
            "step": [1] * len(WARMUP_PROMPTS), **knobs}


def write_warmup_requests(path: str, model_name: str, signatures: dict) -> None:
    """TF Serving's warmup file (`assets.extra/tf_serving_warmup_requests`): one PredictRequest per
    signature with a one-row example input, as PredictionLog records.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for name, fn in sorted(signatures.items()):
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=name))
            specs = fn.structured_input_signature[1]
            for key, values in warmup_inputs(fn, signatures).items():
                request.inputs[key].CopyFrom(tf.make_tensor_proto(values, dtype=specs[key].dtype))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def read_warmup_requests(path: str) -> list[tuple[str, dict[str, list]]]:
    """(signature name, inputs as lists) of each warmup record, for checks and tests."""
    out = []
    for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog.FromString(raw)
        request = log.predict_log.request
        inputs = {k: [x.decode() if isinstance(x, bytes) else x for x in tf.make_ndarray(v).tolist()]
                  for k, v in request.inputs.items()}
        out.append((request.model_spec.signature_name, inputs))
    return out
