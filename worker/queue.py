"""The Celery-backed job queue the API uses when a broker is configured: it records, publishes by
task name, reads records and cancels. It never runs a job nor writes a job's progress or result."""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import redis
from kombu.exceptions import KombuError

from shared.errors import JobBackendUnavailable, NotFound
from shared.jobs.analysis import AnalysisRecord, analysis_store_for, cancel_or_remove, fail
from shared.jobs.lease import leases_for
from shared.jobs.record import JobRecord, utc_now
from shared.jobs.store import job_store_for
from shared.kinds import CANCELLED, FINISHED, QUEUED
from shared.runtime.engine import Ticket
from shared.settings import Settings
from shared.storage.redis import redis_client
from worker.app import ANALYZE_TASK, EXPLAIN_TASK, QUEUE, create_celery_app

log = logging.getLogger(__name__)
_BACKEND_ERRORS = (redis.RedisError, KombuError, OSError, TimeoutError)
# Move a task just published to the end of the queue's list that workers take from next. Celery on
# Redis pushes on the left and workers pop from the right, so a task published again after its worker
# died would otherwise wait behind every job accepted after it. (The newest 100 entries are searched:
# it was pushed moments ago.)
_TO_FRONT = """
for _, item in ipairs(redis.call('LRANGE', KEYS[1], 0, 99)) do
  if string.find(item, ARGV[1], 1, true) then
    redis.call('LREM', KEYS[1], 1, item)
    redis.call('RPUSH', KEYS[1], item)
    return 1
  end
end
return 0
"""


class CeleryJobQueue:
    """Jobs as Celery tasks, with a Redis record per issued id.

    Record first, then publish: an id is never issued without a record. The record is noted as
    unpublished in the same transaction and the note is removed once the broker has the task, so a
    job whose API process died between the two, or whose publish failed, is found and published
    by the sweeper (`republish_stranded`) that every API process runs: an accepted job always
    runs or fails visibly. A GET reads the record alone: what the worker last wrote.
    """

    asynchronous = True

    def __init__(self, settings: Settings) -> None:
        self._store = job_store_for(settings)
        self._celery = create_celery_app(settings)  # from these settings: publish-only
        # The broker's own client when it is Redis: it reads and orders the queue's list.
        broker_url = settings.redis_broker_url
        self._broker = redis_client(broker_url) if broker_url else None
        self._leases = leases_for(settings)
        # A publish takes milliseconds; the grace keeps a sweeper from racing a slow but live one.
        self.stranded_after_s = settings.job_publish_grace_s
        # Sweep a few times per grace and per lease: a lapsed lease is found within a third of one.
        self.sweep_every_s = min(10.0, self.stranded_after_s / 3, settings.job_lease_s / 3)

    def submit(self, record: JobRecord, ticket: Ticket | None = None) -> JobRecord:
        """Record and publish; the job runs on a worker, within its own time limit (not `ticket`)."""
        self._store.save_unpublished(record)
        try:
            self._publish(record)
        except _BACKEND_ERRORS as exc:
            self._forget(record.id)  # the client's 503 is the whole truth
            raise JobBackendUnavailable(f"the job queue (Redis) is unavailable: {exc}") from None
        return record

    def pending(self) -> int | None:
        """Jobs waiting in the broker's queue (None when the broker cannot say)."""
        if self._broker is None:
            return None
        try:
            return int(self._broker.llen(QUEUE))
        except _BACKEND_ERRORS:
            return None

    def republish_stranded(self) -> int:
        """Publish the jobs recorded over a while ago whose publish never completed; say how many."""
        count = 0
        for job_id in self._store.claim_unpublished(self.stranded_after_s):
            record = self._store.load(job_id)
            if record is None or record.status != QUEUED:
                continue
            log.warning("publishing job %s, recorded but never published (its API process died?)", job_id)
            try:
                self._publish(record)
            except _BACKEND_ERRORS:
                self._store.save_unpublished(record)  # try again on the next sweep
                raise
            count += 1
        return count

    def rerun_lapsed(self) -> int:
        """Publish again every task (job or analysis chunk) whose worker stopped renewing its lease:
        the worker died whole, and its message would wait for Celery's visibility timeout. Say how
        many. The job's own compare-and-set keeps a late redelivery from completing it twice."""
        count = 0
        for delivery in self._leases.lapsed():  # each claimed by this sweep alone: publish them all
            task_id = delivery.task_id
            log.warning("task %s: its worker stopped renewing its lease (lost?); running it again", task_id)
            try:
                self._celery.send_task(delivery.task, args=delivery.args, task_id=task_id, retry=False)
            except _BACKEND_ERRORS as exc:
                log.warning("task %s: could not publish it again (%s); next sweep", task_id, exc)
                with contextlib.suppress(JobBackendUnavailable):  # else the visibility timeout brings it
                    self._leases.note(delivery)
                continue
            self._to_front(task_id)
            count += 1
        return count

    def _to_front(self, task_id: str) -> None:
        """It was accepted before the jobs waiting now: it goes first (best effort)."""
        if self._broker is None:
            return
        try:
            self._broker.eval(_TO_FRONT, 1, QUEUE, task_id)
        except _BACKEND_ERRORS as exc:
            log.warning("task %s: published again at the back of the queue (%s)", task_id, exc)

    def _publish(self, record: JobRecord) -> None:
        self._celery.send_task(
            EXPLAIN_TASK, args=(record.texts, record.options), task_id=record.id, retry=False
        )
        self._store.mark_published(record.id)

    def get(self, job_id: str) -> JobRecord:
        record = self._store.load(job_id)
        if record is None:
            raise NotFound(f"no explanation job {job_id!r}")
        return record

    def delete(self, job_id: str) -> JobRecord | None:
        record = self.get(job_id)
        if record.status in FINISHED:
            self._store.delete(job_id)
            return None
        record.status = CANCELLED
        record.finished_at = utc_now()
        # The task checks this before it starts and, while it runs, between passes: its work stops
        # within one pass, and the pool process keeps its loaded model (no terminate).
        if not self._store.save_unless_finished(record):  # it finished first: remove that outcome
            self._store.delete(job_id)
            return None
        try:
            self._celery.control.revoke(job_id)
        except _BACKEND_ERRORS as exc:
            raise JobBackendUnavailable(f"the job queue (Redis) is unavailable: {exc}") from None
        return record

    def _forget(self, job_id: str) -> None:
        try:
            self._store.delete(job_id)
        except JobBackendUnavailable:
            log.warning("could not remove the record of unpublished job %s", job_id)


def start_sweeper(queue: CeleryJobQueue, analyses: CeleryAnalyses) -> threading.Thread:
    """Publish what was recorded but never published (jobs, analyses) and run again what lost its
    worker (tasks whose lease lapsed), from a daemon thread of this API process."""

    def sweep() -> None:
        while True:
            time.sleep(queue.sweep_every_s)
            try:
                queue.republish_stranded()
                analyses.republish_stranded()
                queue.rerun_lapsed()
            except (JobBackendUnavailable, *_BACKEND_ERRORS) as exc:
                log.warning("stranded-job sweep skipped: %s", exc)
            except Exception:  # never let the sweeper die
                log.exception("stranded-job sweep failed")

    thread = threading.Thread(target=sweep, name="clarion-job-sweeper", daemon=True)
    thread.start()
    return thread


class CeleryAnalyses:
    """Analyses on the workers: staged by the API into the store, then one task per chunk, all
    published at once so that every worker takes chunks (shared/jobs/analysis.py runs them)."""

    asynchronous = True

    def __init__(self, settings: Settings) -> None:
        self.store = analysis_store_for(settings)
        self._celery = create_celery_app(settings)
        self.stranded_after_s = settings.job_publish_grace_s

    def submit(self, record: AnalysisRecord, ticket: Ticket | None = None) -> AnalysisRecord:
        """Publish every chunk task of a staged analysis (recorded as unpublished by `stage`)."""
        try:
            self._publish(record)
        except _BACKEND_ERRORS as exc:
            message = f"the job queue (Redis) is unavailable: {exc}"
            with contextlib.suppress(JobBackendUnavailable):  # Redis is away: the sweeper publishes it
                fail(self.store, record.id, message)
                self.store.mark_published(record.id)
            raise JobBackendUnavailable(message) from None
        return record

    def republish_stranded(self) -> int:
        """Publish the chunk tasks of analyses recorded over a grace ago whose publish never
        completed (their API process died); say how many analyses. A chunk already done or running
        is not done twice: its stored output and its lease say so."""
        count = 0
        for analysis_id in self.store.claim_unpublished(self.stranded_after_s):
            record = self.store.load(analysis_id)
            if record is None or record.status in FINISHED:
                continue
            log.warning("publishing analysis %s, recorded but never published (API died?)", analysis_id)
            try:
                self._publish(record)
            except _BACKEND_ERRORS:
                self.store.save_new(record)  # noted again: the next sweep tries again
                raise
            count += 1
        return count

    def _publish(self, record: AnalysisRecord) -> None:
        for index in range(record.chunks):
            self._celery.send_task(
                ANALYZE_TASK, args=(record.id, index), task_id=f"{record.id}-{index}", retry=False
            )
        self.store.mark_published(record.id)

    def delete(self, analysis_id: str) -> AnalysisRecord | None:
        record = cancel_or_remove(self.store, analysis_id)
        if record is not None:  # cancelled: chunks not started are dropped, running ones stop
            try:
                self._celery.control.revoke([f"{analysis_id}-{i}" for i in range(record.chunks)])
            except _BACKEND_ERRORS as exc:
                raise JobBackendUnavailable(f"the job queue (Redis) is unavailable: {exc}") from None
        return record
