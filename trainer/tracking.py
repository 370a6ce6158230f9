"""MLflow at the trainer's edge: one run per training, its params, metrics, datasets,
system metrics and artifacts (the Keras model folder as the `model` artifact).

Model code never imports mlflow; only this module does. An unreachable tracking server at
start is an error naming the URI; one lost mid-run only costs warnings: training goes on
and every local output is kept.

Example:
    >>> tracker = RunTracker("sqlite:///work/mlflow.db", "lmpipe", system_metrics_interval_s=10)
    >>> run_id = tracker.start("lm-3f9c", params={"model.cell": "lstm"}, tags={})
    >>> tracker.log_datasets("work/data/3f9c...", stats)   # train, valid, test: MLflow dataset inputs
    >>> tracker.log_metrics({"valid_ppl": 120.5}, step=1)
    >>> tracker.end()
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

from pipeline.core.errors import LmpipeError

# Fail fast on a dead server instead of MLflow's default minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.data.dataset_source_registry import get_dataset_source_from_json, resolve_dataset_source  # noqa: E402
from mlflow.data.meta_dataset import MetaDataset  # noqa: E402
from mlflow.entities import DatasetInput, InputTag  # noqa: E402

MODEL_ARTIFACT = "model"  # the run's artifact folder holding the Keras model folder
SPLIT_CONTEXTS = {"train": "training", "valid": "validation", "test": "testing"}


class SplitDataset(MetaDataset):
    """One split of a dataset folder as an MLflow dataset: named `<fingerprint[:16]>-<split>`,
    its digest the dataset's fingerprint, its profile the split's counts from stats.json.

    Example:
        >>> SplitDataset("work/data/3f9c...", stats, "valid").to_dict()["profile"]
        '{"split": "valid", "kind": "text", "tokenizer": "word", "vocab_size": 7336, "lines": 887, ...}'
    """

    def __init__(self, dataset_dir: str, stats: dict, split: str) -> None:
        fingerprint = stats["fingerprint"]
        self._profile = {"split": split, "kind": stats.get("kind", "text"), "tokenizer": stats.get("tokenizer"),
                         **{k: stats[k] for k in ("vocab_size", "vocab") if k in stats},
                         **stats.get("splits", {}).get(split, {})}
        super().__init__(_dataset_source(dataset_dir), name=f"{fingerprint[:16]}-{split}", digest=fingerprint[:36])

    @property
    def profile(self) -> dict:
        """The split's counts from stats.json (tokens, documents, ...), shown by MLflow."""
        return self._profile

    def to_dict(self) -> dict[str, str]:
        """MLflow's dataset fields, with the profile as JSON."""
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


class TrackingError(LmpipeError):
    """The MLflow tracking URI cannot be used."""

    exit_code = 4


def _dataset_source(dataset_dir: str):
    """MLflow's source for a dataset folder: local, or the artifact store its URI names (gs://...)."""
    if "://" in dataset_dir:
        return resolve_dataset_source(dataset_dir)
    return get_dataset_source_from_json(json.dumps({"uri": os.path.abspath(dataset_dir)}), source_type="local")


def check_tracking_uri(uri: str) -> None:
    """Raises TrackingError unless `uri` answers (HTTP) or can be created (SQLite, files)."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:
                if response.status != 200:
                    raise OSError(f"HTTP {response.status}")
        except (OSError, urllib.error.URLError) as err:
            raise TrackingError(
                f"MLflow tracking server {uri} is unreachable ({err}); start it "
                "or set tracking.uri (e.g. sqlite:///work/mlflow.db)") from None
    elif uri.startswith("sqlite:///"):
        folder = os.path.dirname(os.path.abspath(uri[len("sqlite:///"):]))
        os.makedirs(folder, exist_ok=True)


class RunTracker:
    """One MLflow run; after `start`, every call degrades to a warning on failure."""

    def __init__(self, uri: str, experiment: str, system_metrics_interval_s: float | None = None) -> None:
        """`system_metrics_interval_s`: sample CPU, memory and disk into the run's `system/`
        metrics this often while it runs (None: off)."""
        check_tracking_uri(uri)
        self.uri = uri
        self.system_metrics_interval_s = system_metrics_interval_s
        self._monitor = None
        self.client = MlflowClient(uri)
        try:
            self.experiment_id = self._experiment(experiment)
        except Exception as err:  # noqa: BLE001 - any client failure is the same to the user
            raise TrackingError(f"MLflow at {uri} refused experiment {experiment!r}: {err}") from None
        self.run_id: str | None = None
        self._warned = False

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):  # keep artifacts beside the database
            db = os.path.abspath(self.uri[len("sqlite:///"):])
            location = "file://" + os.path.join(os.path.dirname(db), "mlartifacts")
        return self.client.create_experiment(name, artifact_location=location)

    def start(self, run_name: str, params: dict[str, Any], tags: dict[str, str],
              run_id: str | None = None) -> str:
        """Starts the run, or continues `run_id` (a resumed training)."""
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
        else:
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
            self.run_id = run.info.run_id
            items = list(params.items())
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=[
                    mlflow.entities.Param(k, str(v)[:6000]) for k, v in items[i:i + 100]])
        self._start_system_metrics(resumed=run_id is not None)
        return self.run_id

    def _start_system_metrics(self, resumed: bool) -> None:
        if self.system_metrics_interval_s is None:
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        def start():
            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=self.system_metrics_interval_s,
                                                 resume_logging=resumed, tracking_uri=self.uri)
            self._monitor.start()

        self._safe("start system metrics", start)

    def log_datasets(self, dataset_dir: str, stats: dict) -> None:
        """The train, valid and test splits as the run's dataset inputs (`SplitDataset`)."""
        inputs = [DatasetInput(SplitDataset(dataset_dir, stats, split)._to_mlflow_entity(),
                               tags=[InputTag("mlflow.data.context", context)])
                  for split, context in SPLIT_CONTEXTS.items()]
        self._safe("log the datasets", lambda: self.client.log_inputs(self.run_id, datasets=inputs))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Logs `metrics` at `step` (0 when None); a failure is a warning."""
        self._safe("log metrics", lambda: self.client.log_batch(self.run_id, metrics=[
            mlflow.entities.Metric(k, float(v), _now_ms(), step or 0) for k, v in metrics.items()]))

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        """Uploads `local_dir` under `artifact_path` of the run; a failure is a warning."""
        self._safe("log artifacts", lambda: self.client.log_artifacts(self.run_id, local_dir, artifact_path))

    def end(self, status: str = "FINISHED") -> None:
        """Stops the system metrics and ends the run with `status` (FINISHED, KILLED)."""
        if self._monitor is not None:
            self._safe("finish system metrics", self._monitor.finish)
            self._monitor = None
        self._safe("end the run", lambda: self.client.set_terminated(self.run_id, status))

    def _safe(self, what: str, fn):
        if self.run_id is None:
            return None
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - tracking must never stop training
            print(f"lmpipe: warning: MLflow at {self.uri} failed to {what} ({type(err).__name__}: "
                  f"{str(err)[:200]}); training goes on, local outputs are kept", file=sys.stderr)
            return None


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def log_report_artifacts(uri: str, run_id: str, folder: str, artifact_path: str) -> bool:
    """Adds a report folder to a finished run's artifacts; False (with a warning) on failure."""
    try:
        MlflowClient(uri).log_artifacts(run_id, folder, artifact_path)
        return True
    except Exception as err:  # noqa: BLE001 - a report must not fail for tracking
        print(f"lmpipe: warning: could not log {folder} to MLflow run {run_id} at {uri}: {err}", file=sys.stderr)
        return False


def log_run_metrics(uri: str, run_id: str, metrics: dict[str, float]) -> bool:
    """Adds metrics to a finished run; False (with a warning) on failure."""
    try:
        client = MlflowClient(uri)
        for key, value in metrics.items():
            client.log_metric(run_id, key, float(value))
        return True
    except Exception as err:  # noqa: BLE001 - a report must not fail for tracking
        print(f"lmpipe: warning: could not log metrics to MLflow run {run_id} at {uri}: {err}", file=sys.stderr)
        return False
