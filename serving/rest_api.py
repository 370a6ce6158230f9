"""TF Serving's REST request and response formats, and the checks that turn bad requests
into clear 400 errors before they reach the graph.

Request: `{"signature_name": "...", "instances": [...]}` (row format: one object per
prompt, or bare values when the signature has one input) or `{"inputs": {...}}`
(columnar: one list per input, or a bare list for one input).
Response: `{"predictions": [...]}` for row format, `{"outputs": {...}}` for columnar.

Example:
    >>> parse_request({"instances": [{"prompt": "the", "k": 5}]}, ["prompt", "k"])
    ('serving_default', {'prompt': ['the'], 'k': [5]}, 'row')
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf


class BadRequest(ValueError):
    """A request TF Serving would refuse: answered with HTTP 400 and {"error": message}."""


def parse_request(body: Any, input_names: list[str] | None = None) -> tuple[str, Any, str]:
    """(signature name, raw inputs, 'row' | 'columnar'); input names resolve bare values."""
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


def to_tensors(cols: dict[str, list], specs: dict[str, tf.TensorSpec]) -> dict[str, tf.Tensor]:
    """Typed [B] tensors, one per signature input; names, counts and types are checked."""
    missing = sorted(set(specs) - set(cols))
    extra = sorted(set(cols) - set(specs))
    if missing:
        raise BadRequest(f"missing input(s) {missing}; this signature takes {sorted(specs)}")
    if extra:
        raise BadRequest(f"unknown input(s) {extra}; this signature takes {sorted(specs)}")
    sizes = {len(v) for v in cols.values()}
    if len(sizes) != 1:
        raise BadRequest("every input needs one value per prompt (the batch sizes differ)")
    tensors = {}
    for name, spec in specs.items():
        tensors[name] = _typed(name, cols[name], spec.dtype)
    return tensors


def _typed(name: str, values: list, dtype: tf.DType) -> tf.Tensor:
    if dtype == tf.string:
        if not all(isinstance(v, str) for v in values):
            raise BadRequest(f"input {name!r} must be strings")
        return tf.constant(values, tf.string)
    if dtype.is_integer:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise BadRequest(f"input {name!r} must be integers, got {values!r}")
        info = np.iinfo(dtype.as_numpy_dtype)
        if any(v < info.min or v > info.max for v in values):
            raise BadRequest(f"input {name!r} is out of range for {dtype.name}")
        return tf.constant(values, dtype)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise BadRequest(f"input {name!r} must be numbers, got {values!r}")
    return tf.constant(values, dtype)


def check_knobs(tensors: dict[str, tf.Tensor], max_new_tokens: int, max_batch: int) -> None:
    """The knob ranges the graph also asserts, with friendlier messages."""
    batch = int(next(iter(tensors.values())).shape[0])
    if batch > max_batch:
        raise BadRequest(f"batch of {batch} prompts is over the limit of {max_batch}")

    def values(name):
        return tensors[name].numpy().tolist() if name in tensors else []

    if any(v < 1 for v in values("k")):
        raise BadRequest(f"k must be >= 1, got {values('k')}")
    if any(not 0 < v <= 1 for v in values("p")):
        raise BadRequest(f"p must be in (0, 1], got {values('p')}")
    if any(v <= 0 for v in values("temperature")):
        raise BadRequest(f"temperature must be > 0, got {values('temperature')}")
    if any(v > max_new_tokens or v < 0 for v in values("max_new_tokens")):
        raise BadRequest(f"max_new_tokens must be in [0, {max_new_tokens}], got {values('max_new_tokens')}")
    if any(v < 1 for v in values("beam_width")):
        raise BadRequest(f"beam_width must be >= 1, got {values('beam_width')}")


def format_response(outputs: dict[str, tf.Tensor], layout: str) -> dict:
    """TF Serving's JSON: predictions (row) or outputs (columnar); strings as UTF-8."""
    lists = {k: _jsonable(v.numpy()) for k, v in outputs.items()}
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
