"""The MLflow model registry as the scheduled run needs it: the champion and its aliases.

Example:
    >>> registry = ModelRegistry("sqlite:///work/mlflow.db", "lmpipe-lm")
    >>> champion = registry.version_with_alias("champion")
    >>> champion.version, champion.tags["test_ppl"]
    ('3', '118.4000')
    >>> registry.set_alias("champion", "4")
"""

from __future__ import annotations

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from trainer.tracking import check_tracking_uri


class ModelRegistry:
    def __init__(self, uri: str, name: str) -> None:
        check_tracking_uri(uri)
        self.uri = uri
        self.client = MlflowClient(uri)
        self.name = name

    def version_with_alias(self, alias: str) -> ModelVersion | None:
        try:
            return self.client.get_model_version_by_alias(self.name, alias)
        except mlflow.exceptions.MlflowException:
            return None

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.name, alias, str(version))

    def set_tag(self, version: str, key: str, value: str) -> None:
        self.client.set_model_version_tag(self.name, str(version), key, value)

    def versions(self) -> list[ModelVersion]:
        try:
            return list(self.client.search_model_versions(f"name='{self.name}'"))
        except mlflow.exceptions.MlflowException:
            return []

    def local_copy(self, version: ModelVersion) -> str:
        """A local folder with the version's model files (downloaded when remote)."""
        return mlflow.artifacts.download_artifacts(artifact_uri=version.source, tracking_uri=self.uri)


def version_for_run(registry: ModelRegistry, run_id: str) -> ModelVersion | None:
    """The registered version made by MLflow run `run_id`, if any."""
    for version in registry.versions():
        if version.run_id == run_id:
            return version
    return None
