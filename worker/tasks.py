"""Celery tasks. Each worker process loads and warms its own model after the fork."""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init

from shared.errors import ClarionError
from shared.job_store import RedisJobStore, redis_client
from shared.jobs import CANCELLED
from shared.schemas import ExplainOptions, parse_model
from shared.service import ClarionService
from worker.app import celery_app

log = logging.getLogger(__name__)
_service: ClarionService | None = None


class JobFailed(Exception):
    """A job that cannot succeed (bad input, time limit); stored as the job's error, never retried."""


@worker_process_init.connect
def load_model_in_child(**_: Any) -> None:
    """Runs in each pool process after the fork: never in the parent, where torch would deadlock."""
    global _service
    settings = celery_app.clarion_settings
    _service = ClarionService(settings)
    _service.load()
    _service.explain(["warm up the explainer"], ExplainOptions(max_evals=16))


def _job_store() -> RedisJobStore:
    settings = celery_app.clarion_settings
    assert settings.redis_url or settings.broker_url
    return RedisJobStore(redis_client(settings.redis_url or settings.broker_url), settings.job_result_ttl_s)


@celery_app.task(name="clarion.explain", bind=True)
def explain_job(self: Any, texts: list[str], options: dict[str, Any]) -> list[dict[str, Any]]:
    """Explain `texts`: the same `ClarionService.explain` the single-process API calls."""
    record = _job_store().load(self.request.id)
    if record is not None and record.status == CANCELLED:
        return []
    if _service is None:  # pragma: no cover - only without worker_process_init (e.g. solo pool)
        load_model_in_child()
    assert _service is not None
    try:
        parsed = parse_model(ExplainOptions, options, _service.settings)
        return [e.to_dict() for e in _service.explain(texts, parsed)]
    except SoftTimeLimitExceeded:
        raise JobFailed(
            f"the explanation exceeded the time limit ({_service.settings.job_soft_time_limit_s}s)"
        ) from None
    except ClarionError as exc:
        raise JobFailed(exc.message) from None
