"""Runs a signature of a SavedModel version in this process, with the REST API's row format.

Example:
    >>> predict_local("work/export/lm/3", "greedy", request_instances(["the"], "greedy"))
    [{'text': '...', 'token_ids': [...], 'lengths': 12, 'log_prob': -30.1}]
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the TF Text ops the graph uses)

from serving.rest_api import columns, format_response, to_tensors


def predict_local(export_dir: str, signature: str, instances: list[dict]) -> list:
    model = tf.saved_model.load(export_dir)
    fn = model.signatures[signature]
    specs = fn.structured_input_signature[1]
    tensors = to_tensors(columns(instances, "row", sorted(specs)), specs)
    return format_response(fn(**tensors), "row")["predictions"]


def prompt_input(export_dir: str, signature: str) -> str:
    """"source" when the export is a sequence-to-sequence model (its metadata says so), else
    "prompt": the name of the strings input of every generation signature."""
    import json
    import os

    from serving.export import EXPORT_META

    meta_path = os.path.join(export_dir, "assets.extra", EXPORT_META)
    if not os.path.exists(meta_path):
        return "prompt"
    with open(meta_path) as f:
        return "source" if json.load(f).get("kind") == "seq2seq" else "prompt"
