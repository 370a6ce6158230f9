"""Runs a signature of a SavedModel version in this process, loaded as TF Serving loads it,
with the REST API's row format.

Example:
    >>> predict_local("work/export/lm/3", "greedy", request_instances(["the"], "greedy"))
    [{'text': '...', 'token_ids': [...], 'lengths': 12, 'log_prob': -30.1}]
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the TF Text ops the graph uses)

from serving.rest_api import BadRequest, columns, format_response, graph_error, to_arrays
from serving.saved_model_session import SessionModel


def predict_local(export_dir: str, signature: str, instances: list[dict]) -> list:
    """Loads the version as TF Serving does (`SessionModel`) and runs one request; a bad
    request raises the `ServingError` the server would answer with."""
    model = SessionModel(export_dir)
    try:
        if signature not in model.signature_defs:
            raise BadRequest(f"unknown signature {signature!r}; available: {sorted(model.signature_defs)}")
        dtypes = model.input_dtypes(signature)
        arrays = to_arrays(columns(instances, "row", sorted(dtypes)), dtypes, model.input_ranks(signature))
        try:
            outputs = model.run(signature, arrays)
        except tf.errors.OpError as err:
            raise graph_error(err) from None
        return format_response(outputs, "row")["predictions"]
    finally:
        model.close()


def prompt_input(export_dir: str, signature: str) -> str:
    """"source" when the export is a sequence-to-sequence model (its metadata says so), else
    "prompt": the name of the strings input of every generation signature."""
    from serving.export import prompt_input, read_export_meta

    return prompt_input(read_export_meta(export_dir))
