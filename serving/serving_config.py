"""TF Serving's files for the exported versions, and the pruning of old ones.

`models.config` pins the versions to serve (`specific`) and labels them: `stable` is the
champion, `canary` the latest challenger when canaries are on. Beside it,
`batching_parameters.txt` (the `serve.batching` section) and `monitoring_config.txt`
(Prometheus on TF Serving's metrics path). `tf_serving_command` gives the command line
that uses all three (`lmpipe serve --print-tf-serving-command`):

    tensorflow_model_server --port=8500 --rest_api_port=8501 --model_config_file=work/export/models.config \\
        --allow_version_labels_for_unavailable_models --enable_batching \\
        --batching_parameters_file=work/export/batching_parameters.txt \\
        --monitoring_config_file=work/export/monitoring_config.txt

Example:
    >>> write_models_config("work/export", "lm", stable=3, canary=4)
    'work/export/models.config'
"""

from __future__ import annotations

import os
import shutil

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving.batching import BatchingParameters
from serving.export import existing_versions
from serving.metrics import monitoring_config_text

MODELS_CONFIG = "models.config"
BATCHING_PARAMETERS = "batching_parameters.txt"
MONITORING_CONFIG = "monitoring_config.txt"


def write_models_config(base_path: str, model_name: str, stable: int, canary: int | None = None) -> str:
    """Writes `<base_path>/models.config` atomically; returns its path."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = model_name
    model.base_path = os.path.abspath(os.path.join(base_path, model_name))
    model.model_platform = "tensorflow"
    versions = sorted({stable} | ({canary} if canary else set()))
    model.model_version_policy.specific.versions.extend(versions)
    model.version_labels["stable"] = stable
    if canary:
        model.version_labels["canary"] = canary
    return _write_atomically(os.path.join(base_path, MODELS_CONFIG), text_format.MessageToString(config))


def write_serving_files(base_path: str, batching: BatchingParameters) -> dict[str, str]:
    """Writes `batching_parameters.txt` and `monitoring_config.txt` beside `models.config`
    (atomically); returns their paths by file name."""
    return {name: _write_atomically(os.path.join(base_path, name), text) for name, text in
            ((BATCHING_PARAMETERS, batching.text()), (MONITORING_CONFIG, monitoring_config_text()))}


def tf_serving_command(base_path: str, grpc_port: int = 8500, rest_port: int = 8501, batching: bool = True) -> str:
    """The `tensorflow_model_server` command line that serves `base_path`'s files."""
    base = os.path.abspath(base_path)
    parts = ["tensorflow_model_server", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
             f"--model_config_file={os.path.join(base, MODELS_CONFIG)}", "--allow_version_labels_for_unavailable_models",
             f"--monitoring_config_file={os.path.join(base, MONITORING_CONFIG)}"]
    if batching:
        parts += ["--enable_batching", f"--batching_parameters_file={os.path.join(base, BATCHING_PARAMETERS)}"]
    return " \\\n    ".join(parts)


def _write_atomically(path: str, text: str) -> str:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def read_models_config(base_path: str) -> dict | None:
    """{"name", "base_path", "versions", "labels"} of the first model, or None."""
    path = os.path.join(base_path, MODELS_CONFIG)
    if not os.path.exists(path):
        return None
    config = text_format.Parse(open(path).read(), model_server_config_pb2.ModelServerConfig())
    model = config.model_config_list.config[0]
    return {"name": model.name, "base_path": model.base_path,
            "versions": list(model.model_version_policy.specific.versions),
            "labels": dict(model.version_labels)}


def prune_versions(model_base: str, keep: int, protect: set[int]) -> list[int]:
    """Deletes the oldest versions beyond `keep`, never one in `protect`; returns them."""
    versions = existing_versions(model_base)
    removable = [v for v in versions if v not in protect]
    excess = len(versions) - keep
    removed = removable[:max(excess, 0)]
    for version in removed:
        shutil.rmtree(os.path.join(model_base, str(version)))
    for name in os.listdir(model_base) if os.path.isdir(model_base) else []:
        if name.startswith(".tmp-"):  # an export killed before its rename
            shutil.rmtree(os.path.join(model_base, name), ignore_errors=True)
    return removed
