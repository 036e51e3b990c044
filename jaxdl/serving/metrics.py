"""Prometheus metrics of one app, in a registry of its own (several apps in one process, as in the
tests, never share counters): requests by endpoint and status, latency, merged batch sizes, errors,
and the drift of recent inputs and predictions (``jaxdl.monitoring.server``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Paths counted under their own name; anything else is "other" (bounded label cardinality).
ENDPOINTS = ("/predict", "/healthz", "/metadata", "/metrics")


class ServingMetrics:
    """The app's counters and histograms, and the ASGI middleware that fills the request ones."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, buckets: Sequence[int]):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "jaxdl_serving_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "jaxdl_serving_request_latency_seconds",
            "HTTP request latency, from the request's start to its response's start",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "jaxdl_serving_errors",
            "Refused or failed /predict requests by reason",
            ["reason"],
            registry=self.registry,
        )
        size_buckets = [float(b) for b in buckets]
        self.batch_size = Histogram(
            "jaxdl_serving_batch_size",
            "Examples per model call (several requests merged by micro-batching)",
            buckets=size_buckets,
            registry=self.registry,
        )
        self.padded_batch_size = Histogram(
            "jaxdl_serving_padded_batch_size",
            "Batch size of each model call after padding to a compiled bucket",
            buckets=size_buckets,
            registry=self.registry,
        )
        self.requests_per_call = Histogram(
            "jaxdl_serving_requests_per_call",
            "Requests merged into each model call",
            buckets=size_buckets,
            registry=self.registry,
        )
        self.model_latency = Histogram(
            "jaxdl_serving_model_call_seconds",
            "Seconds per model call (concatenate, pad, run, copy back)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "jaxdl_serving_queue_depth", "Requests waiting for the model", registry=self.registry
        )

    def add_drift_gauges(self, predictions: bool) -> DriftGauges:
        """The drift gauges, registered beside the others (only servers with a reference);
        ``predictions``: whether the prediction PSI gauge applies (classifiers)."""
        return DriftGauges(self.registry, predictions)

    def observe_batch(self, examples: int, bucket: int, requests: int, seconds: float) -> None:
        """``MicroBatcher``'s observer: one model call."""
        self.batch_size.observe(examples)
        self.padded_batch_size.observe(bucket)
        self.requests_per_call.observe(requests)
        self.model_latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def middleware(self, app):
        """Pure ASGI middleware counting every HTTP request by endpoint and final status."""

        async def counted(scope, receive, send):
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
            start, status = time.perf_counter(), [500]

            async def send_counted(message):
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                    self.latency.labels(endpoint).observe(time.perf_counter() - start)
                await send(message)

            try:
                await app(scope, receive, send_counted)
            finally:
                self.requests.labels(endpoint, str(status[0])).inc()

        return counted


class DriftGauges:
    """Drift of the server's recent window against the reference, per input feature (PSI, KS)
    and for the predicted classes (PSI); set by ``DriftMonitor`` every N requests."""

    def __init__(self, registry: CollectorRegistry, predictions: bool):
        self.psi = Gauge(
            "jaxdl_drift_psi",
            "PSI of an input feature over the recent window vs the reference (>= 0.25: drift)",
            ["feature"],
            registry=registry,
        )
        self.ks_statistic = Gauge(
            "jaxdl_drift_ks_statistic",
            "Two-sample KS statistic of an input feature, recent window vs reference",
            ["feature"],
            registry=registry,
        )
        self.ks_pvalue = Gauge(
            "jaxdl_drift_ks_pvalue",
            "Two-sample KS p-value of an input feature, recent window vs reference",
            ["feature"],
            registry=registry,
        )
        self.prediction_psi = None
        if predictions:
            self.prediction_psi = Gauge(
                "jaxdl_drift_prediction_psi",
                "PSI of the predicted-class distribution, recent window vs reference",
                registry=registry,
            )
        self.window_examples = Gauge(
            "jaxdl_drift_window_examples",
            "Examples in the window of the last drift computation",
            registry=registry,
        )
        self.detected = Gauge(
            "jaxdl_drift_detected",
            "1 when the last window drifted (PSI >= 0.25 or a KS p-value below 0.05/features)",
            registry=registry,
        )
        self.updates = Counter(
            "jaxdl_drift_updates", "Drift computations completed", registry=registry
        )

    def record(self, result: Mapping[str, Any]) -> None:
        """Sets the gauges from a ``jaxdl.monitoring.report.compare_window`` result."""
        for name, stats in result["features"].items():
            self.psi.labels(name).set(stats["psi"])
            self.ks_statistic.labels(name).set(stats["ks_statistic"])
            self.ks_pvalue.labels(name).set(stats["ks_pvalue"])
        if self.prediction_psi is not None and "prediction_psi" in result:
            self.prediction_psi.set(result["prediction_psi"])
        self.window_examples.set(result["examples"])
        self.detected.set(1.0 if result["status"] == "drift" else 0.0)
        self.updates.inc()
