"""Prometheus metrics of `lmpipe serve`, named after TF Serving's where TF Serving has one.

Served at TF Serving's path, `GET /monitoring/prometheus/metrics`, in Prometheus' text
format (`prometheus_client`). Each server has its own registry, so two servers in one
process (tests) never share counts.

    :tensorflow:serving:request_count        requests by model, version, signature, API, status
    :tensorflow:serving:request_latency      request latency histogram (seconds) by model, signature, API
    :tensorflow:serving:batching_session:processed_batch_size   rows per batch run, by model, signature
    :lmpipe:serving:tokens_generated         new tokens generated, by model, version, signature
    :tensorflow:cc:saved_model:load_attempt_count   version loads by model, version, status
    :tensorflow:cc:saved_model:load_latency   load (and warmup) duration histogram (seconds)

Example:
    >>> metrics = ServingMetrics()
    >>> metrics.request("lm", 3, "greedy", "rest", "OK", seconds=0.02)
    >>> b"request_count" in metrics.exposition()
    True
"""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

METRICS_PATH = "/monitoring/prometheus/metrics"
CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServingMetrics:
    """The counters and histograms of one server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(":tensorflow:serving:request_count", "Predict requests by outcome",
                                ["model_name", "model_version", "signature_name", "API", "status"],
                                registry=self.registry)
        self.latency = Histogram(":tensorflow:serving:request_latency", "Request latency in seconds",
                                 ["model_name", "signature_name", "API"], buckets=_LATENCY_BUCKETS,
                                 registry=self.registry)
        self.batch_size = Histogram(":tensorflow:serving:batching_session:processed_batch_size",
                                    "Rows of each graph run", ["model_name", "signature_name"],
                                    buckets=_BATCH_BUCKETS, registry=self.registry)
        self.tokens = Counter(":lmpipe:serving:tokens_generated", "New tokens generated",
                              ["model_name", "model_version", "signature_name"], registry=self.registry)
        self.loads = Counter(":tensorflow:cc:saved_model:load_attempt_count", "Version loads by outcome",
                             ["model_name", "model_version", "status"], registry=self.registry)
        self.load_latency = Histogram(":tensorflow:cc:saved_model:load_latency",
                                      "Load and warmup of a version, in seconds", ["model_name", "model_version"],
                                      buckets=_LATENCY_BUCKETS, registry=self.registry)

    def request(self, model: str, version, signature: str, api: str, status: str, seconds: float) -> None:
        """One finished request (`status`: OK or the error's code, e.g. INVALID_ARGUMENT)."""
        self.requests.labels(model, str(version or ""), signature, api, status).inc()
        self.latency.labels(model, signature, api).observe(seconds)

    def batch(self, model: str, signature: str, rows: int) -> None:
        """Records one graph run of `rows` requests' rows for `signature`."""
        self.batch_size.labels(model, signature).observe(rows)

    def generated(self, model: str, version, signature: str, outputs: dict) -> None:
        """Counts the new tokens of a prediction (its `lengths` output, when it has one)."""
        if "lengths" in outputs:
            self.tokens.labels(model, str(version), signature).inc(int(np.sum(outputs["lengths"])))

    def load(self, model: str, version, status: str, seconds: float) -> None:
        """Records a version load's outcome (`status`: OK or an error code) and, when OK, its
        duration.
        """
        self.loads.labels(model, str(version), status).inc()
        if status == "OK":
            self.load_latency.labels(model, str(version)).observe(seconds)

    def exposition(self) -> bytes:
        """Every metric in Prometheus' text format."""
        return generate_latest(self.registry)


def monitoring_config_text() -> str:
    """TF Serving's `--monitoring_config_file` (MonitoringConfig in text format) that turns
    on the same endpoint."""
    return f'prometheus_config {{\n  enable: true\n  path: "{METRICS_PATH}"\n}}\n'
