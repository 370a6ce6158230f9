"""TF Serving's REST request and response formats, and the checks that turn bad requests
into clear errors before they reach the graph.

Request: `{"signature_name": "...", "instances": [...]}` (row format: one object per
prompt, or bare values when the signature has one input) or `{"inputs": {...}}`
(columnar: one list per input, or a bare list for one input).
Response: `{"predictions": [...]}` for row format, `{"outputs": {...}}` for columnar.
Errors: `{"error": "..."}` with TF Serving's status for the error's code (`ServingError`).

Example:
    >>> parse_request({"instances": [{"prompt": "the", "k": 5}]})
    ('serving_default', [{'prompt': 'the', 'k': 5}], 'row')
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import tensorflow as tf

from serving.knobs import knob_problem


class ServingError(ValueError):
    """A request TF Serving would refuse: answered with `status` and {"error": message}.
    The status follows TF Serving's mapping of error codes to HTTP (`STATUS`)."""

    code = "INVALID_ARGUMENT"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.status = STATUS[self.code]


class BadRequest(ServingError):
    """INVALID_ARGUMENT: HTTP 400."""


class NotFound(ServingError):
    """NOT_FOUND (an unknown model or version): HTTP 404."""

    code = "NOT_FOUND"


class ResourceExhausted(ServingError):
    """RESOURCE_EXHAUSTED (the graph ran out of memory): HTTP 429."""

    code = "RESOURCE_EXHAUSTED"


class Unavailable(ServingError):
    """UNAVAILABLE (no capacity now; retry): HTTP 503."""

    code = "UNAVAILABLE"


# TF Serving's HTTP status of each canonical error code (model_servers/http_server.cc).
STATUS = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400, "NOT_FOUND": 404,
          "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503, "INTERNAL": 500, "UNKNOWN": 500}


def parse_body(raw: bytes) -> Any:
    """The JSON of a request body; malformed or too deeply nested JSON is a BadRequest."""
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequest(f"malformed JSON: {err}") from None
    except RecursionError:
        raise BadRequest("malformed JSON: the body nests arrays or objects too deeply") from None


def parse_request(body: Any) -> tuple[str, Any, str]:
    """(signature name, raw inputs, 'row' | 'columnar')."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object with 'instances' or 'inputs'")
    signature = body.get("signature_name", "serving_default")
    if not isinstance(signature, str):
        raise BadRequest("signature_name must be a string")
    if ("instances" in body) == ("inputs" in body):
        raise BadRequest("give exactly one of 'instances' (row format) or 'inputs' (columnar format)")
    if "instances" in body:
        return signature, body["instances"], "row"
    return signature, body["inputs"], "columnar"


def columns(raw: Any, layout: str, input_names: list[str]) -> dict[str, list]:
    """Input name -> list of per-prompt values."""
    if layout == "row":
        if not isinstance(raw, list) or not raw:
            raise BadRequest("'instances' must be a non-empty list")
        if all(isinstance(row, dict) for row in raw):
            names = set().union(*raw)
            cols = {name: [row.get(name) for row in raw] for name in names}
            for name, values in cols.items():
                if any(v is None for v in values):
                    raise BadRequest(f"input {name!r} is missing in some instances")
            return cols
        if len(input_names) == 1:
            return {input_names[0]: raw}
        raise BadRequest(f"each instance must be an object with the inputs {input_names}")
    if isinstance(raw, dict):
        return {k: v if isinstance(v, list) else [v] for k, v in raw.items()}
    if len(input_names) == 1 and isinstance(raw, list):
        return {input_names[0]: raw}
    raise BadRequest(f"'inputs' must be an object with the inputs {input_names}")


def to_arrays(cols: dict[str, list], dtypes: dict[str, tf.DType],
              ranks: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Typed numpy arrays, one per signature input (dtypes and ranks as its SignatureDef
    has them: [B], or [B, S] for a stream state); names, counts, types, shapes, Unicode
    text and integer ranges are checked."""
    missing = sorted(set(dtypes) - set(cols))
    extra = sorted(set(cols) - set(dtypes))
    if missing:
        raise BadRequest(f"missing input(s) {missing}; this signature takes {sorted(dtypes)}")
    if extra:
        raise BadRequest(f"unknown input(s) {extra}; this signature takes {sorted(dtypes)}")
    sizes = {len(v) for v in cols.values()}
    if len(sizes) != 1:
        raise BadRequest("every input needs one value per prompt (the batch sizes differ)")
    arrays = {name: _typed(name, cols[name], dtype) for name, dtype in dtypes.items()}
    for name, rank in (ranks or {}).items():
        if arrays[name].ndim != rank:
            raise BadRequest(f"input {name!r} must have rank {rank} ({'[B]' if rank == 1 else '[B, S]'}), "
                             f"got shape {list(arrays[name].shape)}")
    return arrays


def _typed(name: str, values, dtype: tf.DType) -> np.ndarray:
    """values: a list (JSON), or an array already of a numeric dtype (gRPC), kept as it is."""
    if isinstance(values, np.ndarray) and dtype != tf.string and values.dtype == dtype.as_numpy_dtype:
        return values
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if dtype == tf.string:
        for row, value in enumerate(values):
            if not isinstance(value, str):
                raise BadRequest(f"input {name!r} must be strings, got {type(value).__name__} for prompt {row}")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as err:
                raise BadRequest(f"input {name!r} of prompt {row} is not valid Unicode text "
                                 f"({err.reason} at character {err.start}); send UTF-8 text") from None
        return np.array(values, dtype=object)
    if dtype.is_integer:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise BadRequest(f"input {name!r} must be integers, got {_short(values)}")
        info = np.iinfo(dtype.as_numpy_dtype)
        if any(v < info.min or v > info.max for v in values):
            raise BadRequest(f"input {name!r} is out of range for {dtype.name} ([{info.min}, {info.max}])")
        return np.array(values, dtype=dtype.as_numpy_dtype)
    if not all(_numbers(v) for v in values):
        raise BadRequest(f"input {name!r} must be numbers, got {_short(values)}")
    try:
        with np.errstate(over="ignore"):  # 1e39 as float32 is inf: refused with the knob's range
            return np.array(values, dtype=dtype.as_numpy_dtype)
    except ValueError:
        raise BadRequest(f"input {name!r} must be a rectangular array of numbers") from None


def _numbers(value) -> bool:
    """A number, or a list of numbers (a row of a stream state)."""
    if isinstance(value, list):
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(values: list) -> str:
    text = repr(values)
    return text if len(text) <= 200 else text[:200] + "..."


def check_request(arrays: dict[str, np.ndarray], max_new_tokens: int, max_batch: int,
                  compute_budget: int) -> None:
    """What the graph also asserts (every knob's range), and what only the server bounds:
    the batch size and the compute budget, prompts x beam width x max new tokens (the
    loop runs every row at the batch's widest beam and longest length)."""
    batch = len(next(iter(arrays.values())))
    if batch > max_batch:
        raise BadRequest(f"batch of {batch} prompts is over the limit of {max_batch} (serve.max_batch_size)")
    problem = knob_problem(arrays, max_new_tokens)
    if problem:
        raise BadRequest(problem)
    if "max_new_tokens" not in arrays:
        return
    width = int(arrays["beam_width"].max()) if "beam_width" in arrays else 1
    steps = int(arrays["max_new_tokens"].max())
    asked = batch * width * steps
    if asked > compute_budget:
        raise BadRequest(
            f"this request asks for {asked} token steps ({batch} prompts x beam width {width} x "
            f"{steps} max_new_tokens), over the compute budget of {compute_budget} per request "
            "(serve.compute_budget): send fewer prompts, a narrower beam or fewer new tokens")


def graph_error(err: tf.errors.OpError) -> ServingError:
    """The ServingError of a failed Session.run: a check's own message (the text of a
    failed assert, which TensorFlow puts on a later line than its first), TF Serving's
    status for the error's code."""
    lines = [line.strip() for line in err.message.splitlines() if line.strip()]
    text = next((line for line in lines if "assertion failed:" in line), None)
    if text is not None:
        text = text.split("assertion failed:", 1)[1].strip()
        text = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    else:
        text = next((line for line in lines if line != "Graph execution error:"), type(err).__name__)
        text = text.split("\t [[")[0].strip()
    if isinstance(err, tf.errors.ResourceExhaustedError):
        return ResourceExhausted(f"out of memory running the model: {text}; send a smaller request")
    if isinstance(err, (tf.errors.InvalidArgumentError, tf.errors.FailedPreconditionError,
                        tf.errors.OutOfRangeError)):
        return BadRequest(text)
    error = ServingError(f"{type(err).__name__}: {text}")
    error.status = STATUS["INTERNAL"]
    return error


def format_response(outputs: dict[str, np.ndarray], layout: str) -> dict:
    """TF Serving's JSON: predictions (row) or outputs (columnar); strings as UTF-8."""
    lists = {k: _jsonable(np.asarray(v)) for k, v in outputs.items()}
    if layout == "columnar":
        return {"outputs": next(iter(lists.values())) if len(lists) == 1 else lists}
    batch = len(next(iter(lists.values())))
    if len(lists) == 1:
        return {"predictions": next(iter(lists.values()))}
    return {"predictions": [{k: v[i] for k, v in lists.items()} for i in range(batch)]}


def _jsonable(array: np.ndarray):
    if array.dtype == object:
        return np.vectorize(lambda b: b.decode("utf-8", errors="replace"), otypes=[object])(array).tolist()
    if np.issubdtype(array.dtype, np.floating):
        return np.where(np.isfinite(array), array, -1e30).tolist()
    return array.tolist()
