"""The versions of one exported model, loaded and watched like TF Serving does.

The newest integer version under `<base_path>/<model_name>` is served; a newer one that
appears is loaded (and warmed up with its own warmup requests) in the background and
swapped in only when ready, so requests never see half a model. An older version is
loaded on demand when a request names it.

Example:
    >>> versions = ModelVersions("work/export/lm", poll_seconds=2).start()
    >>> versions.latest().version
    3
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import Callable

import tensorflow_text  # noqa: F401  (registers the TF Text ops the graph uses)
from google.protobuf import json_format

from serving.export import existing_versions, read_export_meta
from serving.saved_model_session import SessionModel
from serving.warmup import WARMUP_FILE, read_warmup_requests


@dataclasses.dataclass
class LoadedVersion:
    """One served version: number, folder, its Session-loaded model, SignatureDefs and
    lmpipe_export.json. Example: `versions.latest().version` -> 3."""

    version: int
    path: str
    model: SessionModel  # loaded as TF Serving loads it: a Session over the MetaGraph
    signature_defs: dict  # name -> SignatureDef as TF Serving's JSON
    meta: dict  # assets.extra/lmpipe_export.json


def load_version(path: str, version: int, warm_up: bool = True) -> LoadedVersion:
    """Loads one version folder the way TF Serving does, then replays its warmup records
    through the same Session (a version whose warmup fails is not served)."""
    model = SessionModel(path)
    defs = {name: json_format.MessageToDict(sig, preserving_proto_field_name=True)
            for name, sig in model.signature_defs.items()}
    meta = read_export_meta(path)
    warmup = os.path.join(path, "assets.extra", WARMUP_FILE)
    if warm_up and os.path.exists(warmup):
        for name, inputs in read_warmup_requests(warmup):
            model.run(name, inputs)
    return LoadedVersion(version, path, model, defs, meta)


class ModelVersions:
    """Thread-safe view of the served versions of one model folder."""

    def __init__(self, model_base_path: str, poll_seconds: float = 2.0, config_dir: str | None = None,
                 on_load: Callable[[int, str, float], None] | None = None) -> None:
        """`config_dir`: a folder whose `models.config` (written by `lmpipe run`) pins the
        versions to serve and their labels, re-read whenever it changes. `on_load(version,
        status, seconds)` hears of every load ("OK" or "FAILED") and its duration."""
        self.base = model_base_path
        self.name = os.path.basename(os.path.normpath(model_base_path))
        self.poll_seconds = poll_seconds
        self.config_dir = config_dir
        self.labels: dict[str, int] = {}
        self._allowed: set[int] | None = None
        self._loaded: dict[int, LoadedVersion] = {}
        self._latest: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._on_load = on_load or (lambda version, status, seconds: None)

    def start(self) -> "ModelVersions":
        """Loads the newest version now and watches for newer ones."""
        self.refresh()
        if self._latest is None:
            raise FileNotFoundError(f"no integer version folder under {self.base}; run lmpipe export first")
        threading.Thread(target=self._watch, name="version-watcher", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stops the file-system poll thread."""
        self._stop.set()

    def refresh(self) -> None:
        """Loads the newest version if it is newer than the one served."""
        self._read_policy()
        versions = [v for v in existing_versions(self.base) if self._allowed is None or v in self._allowed]
        if not versions or versions[-1] == self._latest:
            return
        newest = versions[-1]
        loaded = self._load(newest)
        with self._lock:
            self._loaded[newest] = loaded
            self._latest = newest

    def _load(self, version: int) -> LoadedVersion:
        started = time.perf_counter()
        try:
            loaded = load_version(os.path.join(self.base, str(version)), version)
        except Exception:
            self._on_load(version, "FAILED", time.perf_counter() - started)
            raise
        self._on_load(version, "OK", time.perf_counter() - started)
        return loaded

    def _read_policy(self) -> None:
        if self.config_dir is None:
            return
        from serving.serving_config import read_models_config

        policy = read_models_config(self.config_dir)
        if policy is not None and policy["name"] == self.name:
            self._allowed, self.labels = set(policy["versions"]), policy["labels"]

    def label(self, label: str) -> LoadedVersion | None:
        """The version a `models.config` label (stable, canary) points at."""
        version = self.labels.get(label)
        return self.get(version) if version is not None else None

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception as err:  # noqa: BLE001 - a bad new version must not stop serving
                print(f"lmpipe serve: cannot load new version in {self.base}: {err}", flush=True)

    def latest(self) -> LoadedVersion:
        """The version served as latest (the newest loaded, or the one the policy pins)."""
        with self._lock:
            return self._loaded[self._latest]

    def get(self, version: int | None) -> LoadedVersion | None:
        """The given version (loaded on demand), the latest for None; None if absent."""
        if version is None:
            return self.latest()
        with self._lock:
            if version in self._loaded:
                return self._loaded[version]
        path = os.path.join(self.base, str(version))
        if not os.path.isdir(path) or (self._allowed is not None and version not in self._allowed):
            return None
        loaded = self._load(version)
        with self._lock:
            self._loaded.setdefault(version, loaded)
        return loaded

    def status(self) -> list[dict]:
        """GetModelStatus's entries, newest version first: each loaded version AVAILABLE."""
        with self._lock:
            served = sorted(self._loaded)
        return [{"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
                for v in reversed(served)]

