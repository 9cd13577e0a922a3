"""Prometheus metrics of the service, correct under several gunicorn workers.

`cartox serve` sets PROMETHEUS_MULTIPROC_DIR (a fresh directory per server start) before anything imports
prometheus_client, so every worker writes its values to files that GET /metrics aggregates; without it
(tests, `flask run`) the process's own registry is used. Labels are route templates and service ids, never
request data: cardinality stays fixed and no patient data reaches the metrics.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import multiprocess

from service.observability.metrics_env import MULTIPROC_ENV

REQUESTS = Counter("cartox_http_requests_total", "HTTP requests answered, by route template, method and status",
                   ["route", "method", "status"])
LATENCY = Histogram("cartox_http_request_duration_seconds", "Time from request start to response, by route template and status",
                    ["route", "method", "status"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
EVALUATIONS = Counter("cartox_evaluations_total", "Evaluations answered with a result, by service (CDS Hooks service id or evaluate)",
                      ["service"])
AUDIT_WRITE_FAILURES = Counter("cartox_audit_write_failures_total", "Audit records that could not be written")


def record_request(route: str, method: str, status: int, seconds: float) -> None:
    REQUESTS.labels(route, method, str(status)).inc()
    LATENCY.labels(route, method, str(status)).observe(seconds)


def record_evaluation(service: str) -> None:
    EVALUATIONS.labels(service).inc()


def record_audit_failure() -> None:
    """Called by the storage layer when an audit write fails (it also logs the failure)."""
    AUDIT_WRITE_FAILURES.inc()


def exposition() -> tuple[bytes, str]:
    """The metrics text of every worker of this server (or of this process alone) and its content type."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def worker_exited(pid: int) -> None:
    """gunicorn child_exit hook: drop a dead worker's live-gauge files (counters and histograms are kept)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)
