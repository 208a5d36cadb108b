"""The Celery-backed job queue the API uses when a broker is configured."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery.result import AsyncResult
from kombu.exceptions import KombuError

from shared.errors import JobBackendUnavailable, NotFound
from shared.job_store import job_store_for
from shared.jobs import CANCELLED, FAILED, FINISHED, QUEUED, RUNNING, SUCCEEDED, JobRecord, iso_utc, utc_now
from shared.settings import Settings
from worker.app import celery_app
from worker.tasks import explain_job

log = logging.getLogger(__name__)
_BACKEND_ERRORS = (redis.RedisError, KombuError, OSError, TimeoutError)
_STATUS_OF_STATE = {
    "PENDING": QUEUED,
    "RECEIVED": QUEUED,
    "STARTED": RUNNING,
    "RETRY": RUNNING,
    "SUCCESS": SUCCEEDED,
    "FAILURE": FAILED,
    "REVOKED": CANCELLED,
}


class CeleryJobQueue:
    asynchronous = True

    def __init__(self, settings: Settings) -> None:
        self._store = job_store_for(settings)

    def submit(self, record: JobRecord) -> JobRecord:
        # Record first, then publish: an id is never issued without a record, and a record whose
        # publish failed is removed so the client's 503 is the whole truth.
        self._store.save(record)
        try:
            explain_job.apply_async(args=(record.texts, record.options), task_id=record.id, retry=False)
        except _BACKEND_ERRORS as exc:
            self._forget(record.id)
            raise JobBackendUnavailable(f"the job queue (Redis) is unavailable: {exc}") from None
        return record

    def get(self, job_id: str) -> JobRecord:
        record = self._store.load(job_id)
        if record is None:
            raise NotFound(f"no explanation job {job_id!r}")
        if record.status in FINISHED:
            return record
        try:
            self._refresh(record, AsyncResult(job_id, app=celery_app))
        except _BACKEND_ERRORS as exc:
            raise JobBackendUnavailable(f"the job result store (Redis) is unavailable: {exc}") from None
        if record.status in FINISHED and not self._store.save_unless_finished(record):
            # Finished meanwhile (a DELETE won the race): the stored outcome stands.
            return self._store.load(job_id) or record
        return record

    def cancel(self, job_id: str) -> JobRecord:
        record = self.get(job_id)
        if record.status in FINISHED:
            return record
        record.status = CANCELLED
        record.finished_at = utc_now()
        # The task checks this before it starts and, while it runs, between passes: its work stops
        # within one pass, and the pool process keeps its loaded model (no terminate).
        if not self._store.save_unless_finished(record):
            return self._store.load(job_id) or record  # it finished first: that outcome stands
        try:
            celery_app.control.revoke(job_id)
        except _BACKEND_ERRORS as exc:
            raise JobBackendUnavailable(f"the job queue (Redis) is unavailable: {exc}") from None
        return record

    def _refresh(self, record: JobRecord, result: AsyncResult) -> None:
        state = result.state
        record.status = _STATUS_OF_STATE.get(state, QUEUED)
        if record.status == SUCCEEDED:
            record.explanations = result.result
        elif record.status == FAILED:
            record.error = {"code": "explanation_failed", "message": _failure_message(result.result)}
        if record.status in FINISHED:
            record.finished_at = iso_utc(result.date_done) if result.date_done is not None else utc_now()

    def _forget(self, job_id: str) -> None:
        try:
            self._store.delete(job_id)
        except JobBackendUnavailable:
            log.warning("could not remove the record of unpublished job %s", job_id)


def _failure_message(error: Any) -> str:
    if isinstance(error, BaseException):
        return str(error) or type(error).__name__
    return str(error)
