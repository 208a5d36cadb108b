"""Prometheus metrics: one set of definitions, shared by the API processes and the Celery workers.

`clarion serve` and `clarion worker` point PROMETHEUS_MULTIPROC_DIR at a folder before any process
starts (prometheus_client's multiprocess mode), so every gunicorn worker and every Celery pool process
writes its samples there, and one scrape of `GET /metrics` (or of the worker's METRICS_PORT) adds them
up. Without that variable (tests, scripts) the metrics live in the process, as usual.
"""

from __future__ import annotations

import logging
import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)

REQUESTS = Counter("clarion_requests", "HTTP requests", ["route", "method", "status"])
REQUEST_SECONDS = Histogram("clarion_request_seconds", "HTTP request latency", ["route"], buckets=_SECONDS)
CLASSIFY_SECONDS = Histogram("clarion_classify_seconds", "classifying a batch of texts", buckets=_SECONDS)
EXPLAIN_SECONDS = Histogram("clarion_explain_seconds", "explaining a batch of texts", buckets=_SECONDS)
JOB_SECONDS = Histogram("clarion_job_seconds", "an explanation job's run time in a worker", buckets=_SECONDS)
EVALUATIONS = Counter("clarion_evaluations", "model evaluations counted by SHAP's algorithm")
PASSES = Counter("clarion_forward_passes", "forward passes, by priority", ["priority"])
ROWS = Counter("clarion_rows", "rows run in forward passes")
TOKENS = Counter("clarion_tokens", "real tokens run in forward passes")
PADDING = Counter("clarion_padding_tokens", "padded positions run (wasted work)")
QUEUE_WAIT = Histogram(
    "clarion_queue_wait_seconds", "wait before a work item's first pass", ["priority"], buckets=_SECONDS
)
DROPPED_ITEMS = Counter("clarion_dropped_items", "work items dropped past their deadline or cancelled")
DROPPED_ROWS = Counter("clarion_dropped_rows", "rows those items still had queued")
CACHE = Counter("clarion_cache_requests", "cache lookups by cache and result", ["cache", "result"])
MODEL_LOAD_SECONDS = Gauge(
    "clarion_model_load_seconds", "seconds the model took to load", multiprocess_mode="max"
)
BUILD_INFO = Gauge(
    "clarion_build_info",
    "Clarion's version and the model it serves (value 1)",
    ["version", "model"],
    multiprocess_mode="max",
)


def exposition(pending_jobs: int | None = None) -> bytes:
    """The text format of every process's metrics (all of them in multiprocess mode), and the jobs
    waiting in the broker's queue, read by the caller at scrape time."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY as registry  # the default, in-process
    text = generate_latest(registry)
    if pending_jobs is not None:  # a family, not a Gauge: no sample file in the multiprocess folder
        family = GaugeMetricFamily(
            "clarion_jobs_pending", "explanation jobs waiting for a worker", value=pending_jobs
        )
        scratch = CollectorRegistry()
        scratch.register(_Families([family]))
        text += generate_latest(scratch)
    return text


class _Families:
    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self._families = families

    def collect(self) -> list[GaugeMetricFamily]:
        return self._families


def process_died(pid: int) -> None:
    """A process of the pool exited: its live gauges must stop counting."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)


def build_info(model_id: str) -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        clarion = version("clarion")
    except PackageNotFoundError:
        clarion = "unknown"
    BUILD_INFO.labels(version=clarion, model=model_id).set(1)


def serve(port: int) -> None:
    """Serve the exposition on its own port (the Celery worker, which has no HTTP server)."""
    from prometheus_client import REGISTRY, start_http_server

    registry = REGISTRY
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    try:
        start_http_server(port, registry=registry)
    except OSError as exc:  # a second worker on the same host: it still works, unscraped
        log.warning("metrics: cannot listen on port %d (%s); set METRICS_PORT per worker", port, exc)
