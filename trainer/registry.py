"""The MLflow model registry as the scheduled run needs it: the champion and its aliases.

A version registered by `serving.mlflow_model.register_export` is an MLflow Model (its
source `models:/m-<id>`, holding the TF Serving SavedModel); its training run keeps the
Keras model folder as the run's `model` artifact. A version registered before that points
straight at the Keras model folder and has no `MLmodel`: it still warm-starts and is
evaluated, but `mlflow.pyfunc` cannot load it (`is_mlflow_model` tells them apart).

Example:
    >>> registry = ModelRegistry("sqlite:///work/mlflow.db", "lmpipe-lm")
    >>> champion = registry.version_with_alias("champion")
    >>> champion.version, champion.tags["test_ppl"]
    ('3', '118.4000')
    >>> registry.set_alias("champion", "4")
"""

from __future__ import annotations

import os

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from trainer.tracking import MODEL_ARTIFACT, check_tracking_uri


class ModelRegistry:
    """One registered model of an MLflow registry: its versions, aliases and tags (see the
    module's example)."""

    def __init__(self, uri: str, name: str) -> None:
        check_tracking_uri(uri)
        self.uri = uri
        self.client = MlflowClient(uri)
        self.name = name

    def version_with_alias(self, alias: str) -> ModelVersion | None:
        """The version `alias` names, or None (no such alias or no such model)."""
        try:
            return self.client.get_model_version_by_alias(self.name, alias)
        except mlflow.exceptions.MlflowException:
            return None

    def version(self, number: str | int) -> ModelVersion | None:
        """Version `number`, or None."""
        try:
            return self.client.get_model_version(self.name, str(number))
        except mlflow.exceptions.MlflowException:
            return None

    def set_alias(self, alias: str, version: str) -> None:
        """Points `alias` (champion, challenger) at `version`."""
        self.client.set_registered_model_alias(self.name, alias, str(version))

    def set_tag(self, version: str, key: str, value: str) -> None:
        """Sets one tag of `version` (export_version, decision, ...)."""
        self.client.set_model_version_tag(self.name, str(version), key, value)

    def versions(self) -> list[ModelVersion]:
        """Every version of the model ([] when it is not registered yet)."""
        try:
            return list(self.client.search_model_versions(f"name='{self.name}'"))
        except mlflow.exceptions.MlflowException:
            return []

    def is_mlflow_model(self, version: ModelVersion) -> bool:
        """True for a version whose source is an MLflow Model (it has an `MLmodel` file)."""
        if version.source.startswith("models:/"):
            return True
        try:
            listed = mlflow.artifacts.list_artifacts(artifact_uri=version.source, tracking_uri=self.uri)
        except Exception:  # noqa: BLE001 - an unlistable source is no MLflow model
            return False
        return any(os.path.basename(item.path) == "MLmodel" for item in listed)

    def local_copy(self, version: ModelVersion) -> str:
        """A local folder with the version's Keras model folder (model_config.json, weights,
        vocabulary): its training run's `model` artifact, or an old version's source."""
        source = (f"runs:/{version.run_id}/{MODEL_ARTIFACT}" if self.is_mlflow_model(version)
                  else version.source)
        return self.download(source)

    def download(self, artifact_uri: str, dst_path: str | None = None) -> str:
        """A local copy of `artifact_uri` (a folder already local is returned as it is)."""
        return mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=dst_path,
                                                   tracking_uri=self.uri)


def version_for_run(registry: ModelRegistry, run_id: str) -> ModelVersion | None:
    """The registered version made by MLflow run `run_id`, if any."""
    for version in registry.versions():
        if version.run_id == run_id:
            return version
    return None
