"""Celery tasks. Each worker process loads and warms its own model after the fork."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import (
    celeryd_init,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
)

from shared import metrics
from shared.engine import Ticket
from shared.errors import ClarionError, JobBackendUnavailable
from shared.job_store import RedisJobStore, job_store_for
from shared.jobs import CANCELLED
from shared.schemas import ExplainOptions, parse_model
from shared.service import ClarionService
from worker.app import celery_app

log = logging.getLogger(__name__)
_service: ClarionService | None = None
_store: RedisJobStore | None = None
_loading = threading.Lock()


class JobFailed(Exception):
    """A job that cannot succeed (bad input, time limit); stored as the job's error, never retried."""


# Backoff doubles from 10 ms up to 10 s a try (with jitter): 30 tries outlast a minute or more of
# Redis being away.
RESULT_WRITE_TRIES = 30


@celeryd_init.connect
def keep_trying_result_writes(conf: Any, **_: Any) -> None:
    """A worker whose Redis restarts or fails over keeps trying to store a job's state and result
    until it is back, instead of failing the job it has just computed with the connection error
    (found by tests/test_compose.py: a job finished while Redis restarted). Only workers: the API
    reads with one quick retry and answers 503, never hangs (worker/app.py)."""
    conf.result_backend_always_retry = True
    conf.result_backend_max_retries = RESULT_WRITE_TRIES


@worker_init.connect
def serve_metrics(**_: Any) -> None:
    """The worker's main process serves every pool process's metrics on METRICS_PORT."""
    port = celery_app.clarion_settings.metrics_port
    if port:
        metrics.serve(port)


@worker_process_shutdown.connect
def forget_metrics(**_: Any) -> None:
    metrics.process_died(os.getpid())


@worker_process_init.connect
def load_model_in_child(**_: Any) -> None:
    """Runs in each pool process after the fork: never in the parent, where torch would deadlock."""
    _load_model()


@worker_ready.connect
def load_model_for_threads(**_: Any) -> None:
    """The threads pool runs jobs in this very process (no fork): its threads share one model and
    one engine, so concurrent jobs' rounds share passes. A job that arrives while it loads waits."""
    if celery_app.clarion_settings.worker_pool == "threads":
        _load_model()


def _load_model() -> None:
    global _service
    with _loading:
        if _service is None:
            _service = _loaded_service()


def _loaded_service() -> ClarionService:
    global _store
    settings = celery_app.clarion_settings
    _store = job_store_for(settings)
    service = ClarionService(settings, threads=settings.celery_threads_per_process)
    service.load()
    service.explain(["warm up the explainer"], ExplainOptions(max_evals=16))
    return service


def _cancelled(job_id: str) -> bool:
    """Was the job cancelled before it started? Unknown (Redis blip) counts as not cancelled."""
    assert _store is not None
    try:
        record = _store.load(job_id)
    except JobBackendUnavailable:
        return False
    return record is not None and record.status == CANCELLED


# throws: a failed job is an expected outcome (logged in one line), not a crash with a traceback.
@celery_app.task(name="clarion.explain", bind=True, throws=(JobFailed,))
def explain_job(self: Any, texts: list[str], options: dict[str, Any]) -> list[dict[str, Any]]:
    """Explain `texts`: the same `ClarionService.explain` the single-process API calls."""
    if _service is None:  # the threads pool while it loads, or the solo pool
        _load_model()
    assert _service is not None
    job_id = self.request.id
    if _cancelled(job_id):
        return []
    limit = _service.settings.job_soft_time_limit_s
    timeout_message = f"the explanation exceeded the time limit ({limit}s)"
    # The engine stops the job's work within one pass of its soft limit or of a DELETE (polled
    # here, in the task's thread), without killing the process and its loaded model.
    ticket = Ticket.within(limit, timeout_message, cancelled_by=lambda: _cancelled(job_id))
    try:
        parsed = parse_model(ExplainOptions, options, _service.settings)
        with metrics.JOB_SECONDS.time():
            return [e.model_dump(mode="json") for e in _service.explain(texts, parsed, ticket)]
    except SoftTimeLimitExceeded:
        raise JobFailed(timeout_message) from None
    except ClarionError as exc:
        raise JobFailed(exc.message) from None
