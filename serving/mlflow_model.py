"""An export as an MLflow Model: one SavedModel, two doors (TF Serving and MLflow).

`register_export` logs a TF Serving version folder as a pyfunc model (MLflow's
models-from-code: `serving/mlflow_pyfunc_model.py`, with `saved_model_session.py` as its
code path and the version folder as its `saved_model` artifact) under the MLflow run that
trained it. It links the model's metrics to the model (MLflow 3 LoggedModel: valid/test
perplexity against the valid/test datasets, BLEU for seq2seq) and registers it with the
TF Serving version and path as tags. `export_from_registry` goes the other way: it writes
any registered version (`models:/<name>@<alias>` or `models:/<name>/<version>`) as a new
TF Serving version.

    registered version  --source-->  models:/m-<id>          (the LoggedModel)
        tags: export_version, export_path, test_ppl, run_key, fingerprint
    models:/m-<id>/     MLmodel, python_env.yaml, requirements.txt (tensorflow, tensorflow-text),
                        code/saved_model_session.py, artifacts/<version>/ (a copy of <base>/<name>/<version>,
                        the pyfunc's `saved_model` artifact)

Example:
    >>> version = register_export("sqlite:///work/mlflow.db", "lmpipe-lm", "work/export/lm/3")
    >>> version.version, version.tags["export_version"]
    ('4', '3')
    >>> mlflow.pyfunc.load_model("models:/lmpipe-lm/4").predict(["the"], params={"method": "greedy"})
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings

import mlflow
from mlflow.entities import LoggedModelOutput
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

from pipeline.core.constants import STATS_FILE
from pipeline.core.errors import InputDataError
from serving import mlflow_pyfunc_model, saved_model_session
from serving.export import EXPORT_META, ExportResult, export_model, prompt_input, publish_copy, read_export_meta
from serving.knobs import KNOB_SPECS
from trainer.registry import ModelRegistry
from trainer.tracking import SplitDataset, check_tracking_uri

MODEL_NAME = "lmpipe"  # the LoggedModel's name in its run
EXAMPLE_TEXT = {"prompt": "the meaning of", "source": "a man is walking ."}
_SPLIT_METRICS = {"valid": ("valid_ppl", "valid_loss"), "test": ("test_ppl", "test_loss", "test_bits_per_token")}


def _export_meta(export_path: str) -> dict:
    """The export's lmpipe_export.json; an InputDataError for a folder without one."""
    meta = read_export_meta(export_path)
    if not meta:
        raise InputDataError(f"{export_path} is not an lmpipe export (assets.extra/{EXPORT_META} is missing); "
                             "give a version folder that lmpipe export wrote")
    return meta


def param_defaults(meta: dict) -> dict:
    """Every inference param and its default: the export's default method and the knobs'
    defaults (as `lmpipe serve`'s clients fill them), max_new_tokens within the export's cap."""
    defaults = {name: (float(default) if dtype.is_floating else int(default))
                for name, (dtype, default) in KNOB_SPECS.items()}
    defaults["max_new_tokens"] = min(defaults["max_new_tokens"], int(meta["max_new_tokens"]))
    return {"method": meta["default_signature"], **defaults}


def model_signature(meta: dict) -> ModelSignature:
    """One string column in (the prompt; seq2seq: the source), `text` out, the method and
    knobs as params with their defaults. The input column is left unnamed: MLflow checks
    a named column by name, so `predict(["the meaning of"])` (a list) would fail it with
    "Model is missing inputs ['prompt']"; a DataFrame with a `prompt` (`source`) column
    works either way."""
    kinds = {str: DataType.string, int: DataType.long, float: DataType.double}
    params = [ParamSpec(name, kinds[type(value)], value) for name, value in param_defaults(meta).items()]
    return ModelSignature(inputs=Schema([ColSpec(DataType.string)]),
                          outputs=Schema([ColSpec(DataType.string, "text")]), params=ParamSchema(params))


def register_export(tracking_uri: str, registered_model: str, export_path: str, max_batch_size: int = 64,
                    compute_budget: int = 65_536, extra_metrics: dict[str, float] | None = None) -> ModelVersion:
    """Logs `export_path` as an MLflow Model under its training run and registers it.

    Args:
        max_batch_size, compute_budget: the request limits the pyfunc model enforces
            (those of `serve`).
        extra_metrics: more test-split metrics to link to the model (e.g. test_bleu_greedy).
    Returns the new registered version; its tags name the TF Serving version and path.
    """
    meta = _export_meta(export_path)
    metrics = meta["metrics"]
    run_id = metrics.get("mlflow_run_id")
    if not run_id:
        raise InputDataError(f"the model of {export_path} has no MLflow run (metrics.json has no mlflow_run_id); "
                             "train it with tracking on to register it")
    check_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    export_path = os.path.abspath(export_path)
    tags = {"export_version": os.path.basename(export_path), "export_path": export_path,
            "run_key": metrics.get("run_key", ""), "fingerprint": metrics.get("fingerprint", ""),
            "test_ppl": f"{metrics['test_ppl']:.4f}"}
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    # The model is created first and filled without an active run: log_model inside the run
    # would also link every run metric at step 0 (system metrics, and copies of earlier
    # links) to it; its metrics are linked below, each with the split it was measured on.
    model = mlflow.initialize_logged_model(name=MODEL_NAME, source_run_id=run_id, tags=tags,
                                           params=run.data.params, experiment_id=run.info.experiment_id)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*type hints to the `predict` method")  # the signature is given
        info = mlflow.pyfunc.log_model(
            model_id=model.model_id, python_model=mlflow_pyfunc_model.__file__,
            code_paths=[saved_model_session.__file__],
            artifacts={mlflow_pyfunc_model.SAVED_MODEL_ARTIFACT: export_path},
            model_config={"input": prompt_input(meta), "defaults": param_defaults(meta),
                          "max_batch_size": max_batch_size, "compute_budget": compute_budget},
            signature=model_signature(meta), input_example=_input_example(meta),
            pip_requirements=[f"tensorflow=={meta['tensorflow']}", f"tensorflow-text=={meta['tensorflow_text']}"])
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    _log_model_metrics(client, run_id, model.model_id, metrics, extra_metrics or {})
    return mlflow.register_model(info.model_uri, registered_model, tags={**tags, "model_id": info.model_id})


def _log_model_metrics(client, run_id: str, model_id: str, metrics: dict, extra: dict[str, float]) -> None:
    """Valid/test metrics against the model and the split they were measured on."""
    datasets = _split_datasets(metrics)
    wanted = {split: {k: metrics[k] for k in keys if metrics.get(k) is not None}
              for split, keys in _SPLIT_METRICS.items()}
    wanted["test"].update(extra)
    for split, values in wanted.items():
        dataset = datasets.get(split)
        for key, value in values.items():
            client.log_metric(run_id, key, float(value), model_id=model_id,
                              dataset_name=dataset.name if dataset else None,
                              dataset_digest=dataset.digest if dataset else None)


def _split_datasets(metrics: dict) -> dict[str, SplitDataset]:
    """The valid and test datasets the training run logged, if the dataset folder is here."""
    dataset_dir = metrics.get("dataset_dir") or ""
    stats_path = os.path.join(dataset_dir, STATS_FILE)
    if not os.path.exists(stats_path):
        return {}
    with open(stats_path) as f:
        stats = json.load(f)
    return {split: SplitDataset(dataset_dir, stats, split) for split in _SPLIT_METRICS}


def _input_example(meta: dict) -> tuple[list[str], dict]:
    return [EXAMPLE_TEXT[prompt_input(meta)]], {"method": "greedy", "max_new_tokens": 8}


def saved_model_of(mlflow_model_dir: str) -> str:
    """The SavedModel folder inside a downloaded MLflow Model (its `saved_model` artifact)."""
    flavor = Model.load(mlflow_model_dir).flavors["python_function"]
    return os.path.join(mlflow_model_dir, flavor["artifacts"][mlflow_pyfunc_model.SAVED_MODEL_ARTIFACT]["path"])


_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


def resolve_version(registry: ModelRegistry, uri: str) -> ModelVersion:
    """The registered version `models:/<name>@<alias>` or `models:/<name>/<version>` names."""
    match = _MODEL_URI.match(uri)
    if not match:
        raise InputDataError(f"--from {uri!r} is not a registry URI; give models:/<name>@<alias> "
                             "or models:/<name>/<version>")
    registry = ModelRegistry(registry.uri, match["name"])
    version = (registry.version_with_alias(match["alias"]) if match["alias"]
               else registry.version(match["version"]))
    if version is None:
        raise InputDataError(f"{uri} names no registered version at {registry.uri}; "
                             f"see the versions of {match['name']} in the MLflow UI")
    return version


def export_from_registry(registry: ModelRegistry, uri: str, base_path: str, model_name: str,
                         export_options: dict) -> tuple[ModelVersion, ExportResult, bool]:
    """Writes registered version `uri` as a new TF Serving version under
    `<base_path>/<model_name>`: its SavedModel as it is, or (a version registered before
    MLflow models, a Keras model folder) exported with `export_options` (those of
    `export_model`). The version's export tags then name the new folder. Returns the
    version, the new TF Serving version, and whether it is the registered SavedModel."""
    version = resolve_version(registry, uri)
    registry = ModelRegistry(registry.uri, version.name)
    copied = registry.is_mlflow_model(version)
    with tempfile.TemporaryDirectory() as tmp:
        if copied:
            result = publish_copy(saved_model_of(registry.download(version.source, tmp)),
                                  os.path.join(base_path, model_name))
        else:
            result = export_model(registry.download(version.source, tmp), base_path, model_name, **export_options)
    registry.set_tag(version.version, "export_version", str(result.version))
    registry.set_tag(version.version, "export_path", os.path.abspath(result.path))
    return version, result, copied

