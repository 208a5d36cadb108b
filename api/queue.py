"""Jobs and analyses on the workers, as the API sees them: store, publish by task name, read and
cancel; and the sweeper that publishes what was stored but never published, and runs again what
lost its worker. Nothing here runs a task or writes a task's progress or result (shared/jobs/state.py
says who writes what)."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import redis
from kombu.exceptions import KombuError

from api.broker import publisher
from shared.errors import JobBackendUnavailable, NotFound
from shared.jobs.analysis import (
    StoredAnalysis,
    analysis_store_for,
    cancel_or_remove,
)
from shared.jobs.broker import ANALYZE_TASK, EXPLAIN_TASK, QUEUE
from shared.jobs.job import Idempotency, StoredJob, stamp_finished
from shared.jobs.lease import Leases, leases_for
from shared.jobs.store import Store, job_store_for
from shared.kinds import CANCELLED, FINISHED, QUEUED
from shared.runtime.engine import Ticket
from shared.settings import Settings
from shared.storage.redis import redis_client

log = logging.getLogger(__name__)
BACKEND_ERRORS = (redis.RedisError, KombuError, OSError, TimeoutError, JobBackendUnavailable)
# Move a task just published to the end of the queue's list that workers take from next. Celery on
# Redis pushes on the left and workers pop from the right, so a task published again after its worker
# died would otherwise wait behind every job accepted after it. (The newest 100 entries are searched:
# it was pushed moments ago; its id is matched in quotes, so chunk 1's is not chunk 10's.)
_TO_FRONT = """
for _, item in ipairs(redis.call('LRANGE', KEYS[1], 0, 99)) do
  if string.find(item, '"' .. ARGV[1] .. '"', 1, true) then
    redis.call('LREM', KEYS[1], 1, item)
    redis.call('RPUSH', KEYS[1], item)
    return 1
  end
end
return 0
"""


UNACKED = "unacked"  # kombu's Redis transport: messages taken by a worker, not yet acknowledged
# A task message's id: a job's, or an analysis chunk's (<analysis id>-<chunk>).
_TASK_ID = re.compile(rb'"id": "([0-9a-f]{32}(?:-[0-9]+)?)"')


class Broker(Protocol):
    """What the API needs of Celery: publish a task by name, and revoke tasks."""

    def send_task(self, name: str, args: Any = None, task_id: str | None = None, **options: Any) -> Any: ...

    @property
    def control(self) -> Any: ...


class CeleryJobQueue:
    """Explanation jobs as Celery tasks, stored in Redis per issued id.

    Store first (noted unpublished, in one step), then publish, then mark published. Once the job
    is stored the job is accepted: a publish that fails leaves it noted, and the sweeper publishes it,
    so the answer is a 202 whatever fails after it is stored. A GET reads the stored job alone.
    """

    asynchronous = True

    def __init__(
        self, settings: Settings, broker: Broker | None = None, store: Store[StoredJob] | None = None
    ) -> None:
        self.store = store or job_store_for(settings)
        self._broker = broker or publisher(settings)
        broker_url = settings.redis_broker_url  # its list is the queue: `pending` reads it
        self._queue_list = redis_client(broker_url) if broker_url else None

    def submit(
        self, job: StoredJob, ticket: Ticket | None = None, idempotency: Idempotency | None = None
    ) -> tuple[StoredJob, bool]:
        """Store and publish (or, with a key used before, the job it made); the job runs on a
        worker, within its own time limit (not `ticket`). Whether it was made before."""
        job, replayed = self.store.create(job, idempotency)
        if not replayed:
            publish_now(self, job)
        return job, replayed

    def publish(self, job: StoredJob) -> None:
        self._broker.send_task(EXPLAIN_TASK, args=(job.texts, job.options), task_id=job.id, retry=False)

    def tasks_left(self, job: StoredJob) -> dict[str, Callable[[], None]]:
        """A queued job's one task (its id is the job's), with how to publish it."""
        return {job.id: partial(self.publish, job)} if job.status == QUEUED else {}

    def pending(self) -> int | None:
        """Jobs waiting in the broker's queue (None when the broker cannot say)."""
        if self._queue_list is None:
            return None
        try:
            return int(self._queue_list.llen(QUEUE))
        except BACKEND_ERRORS:
            return None

    def get(self, job_id: str) -> StoredJob:
        job = self.store.load(job_id)
        if job is None:
            raise NotFound(f"no explanation job {job_id!r}")
        return job

    def delete(self, job_id: str) -> StoredJob | None:
        """Cancel a queued or running job (the task checks before it starts and between passes, so
        its work stops within one pass and the worker keeps its loaded model), or remove a finished
        one. A cancel that was stored stands even when the revoke fails: the task reads it anyway."""
        self.get(job_id)  # an unknown id is a 404
        cancelled = self.store.update(job_id, CANCELLED, stamp_finished)
        if cancelled is None:  # finished, maybe moments ago: removed
            self.store.remove(job_id)
            return None
        revoke(self._broker, [job_id])
        return cancelled


class CeleryAnalyses:
    """Analyses on the workers: staged by the API into the store, then one task per chunk, all
    published at once so that every worker takes chunks (shared/jobs/analysis.py runs them)."""

    asynchronous = True

    def __init__(
        self,
        settings: Settings,
        broker: Broker | None = None,
        store: Store[StoredAnalysis] | None = None,
    ) -> None:
        self.store = store or analysis_store_for(settings)
        self._broker = broker or publisher(settings)

    def submit(self, analysis: StoredAnalysis, ticket: Ticket | None = None) -> StoredAnalysis:
        """Publish every chunk task of an analysis staged and stored (noted unpublished)."""
        publish_now(self, analysis)
        return analysis

    def publish(self, analysis: StoredAnalysis) -> None:
        """Every chunk's task; a chunk done or running is not done twice (its output and lease say so)."""
        for index in range(analysis.chunks):
            self._publish_chunk(analysis.id, index)

    def tasks_left(self, analysis: StoredAnalysis) -> dict[str, Callable[[], None]]:
        """An unfinished analysis's chunks not counted done yet, by task id, with how to publish each."""
        if analysis.status in FINISHED:
            return {}
        done = self.store.chunks_done(analysis.id)
        return {
            _chunk_task_id(analysis.id, index): partial(self._publish_chunk, analysis.id, index)
            for index in range(analysis.chunks)
            if index not in done
        }

    def _publish_chunk(self, analysis_id: str, index: int) -> None:
        task_id = _chunk_task_id(analysis_id, index)
        self._broker.send_task(ANALYZE_TASK, args=(analysis_id, index), task_id=task_id, retry=False)

    def delete(self, analysis_id: str) -> StoredAnalysis | None:
        analysis = cancel_or_remove(self.store, analysis_id)
        if analysis is not None:  # cancelled: chunks not started are dropped, running ones stop
            revoke(self._broker, [_chunk_task_id(analysis_id, i) for i in range(analysis.chunks)])
        return analysis


def _chunk_task_id(analysis_id: str, index: int) -> str:
    return f"{analysis_id}-{index}"


class Publishes(Protocol):
    """A queue whose entries the sweeper publishes: its store, and how to publish one entry."""

    store: Store[Any]

    def publish(self, entry: Any) -> None: ...

    def tasks_left(self, entry: Any) -> dict[str, Callable[[], None]]:
        """The tasks `entry` still needs run, by task id, each with how to publish it alone."""
        ...


def publish_now(queue: Publishes, entry: Any) -> None:
    """Publish an entry just stored, and mark it published. A failure is logged, not raised: the
    entry stays noted and the sweeper publishes it within a grace."""
    try:
        queue.publish(entry)
        queue.store.mark_published(entry.id)
    except BACKEND_ERRORS as exc:
        log.warning(
            "%s %s: accepted; not published yet (%s): the sweeper will", queue.store.kind.name, entry.id, exc
        )


def revoke(broker: Broker, task_ids: list[str]) -> None:
    """Best effort: a cancelled task is stopped by its stored state anyway, revoked only sooner."""
    try:
        broker.control.revoke(task_ids if len(task_ids) > 1 else task_ids[0])
    except BACKEND_ERRORS as exc:
        log.warning(
            "tasks %s: cancelled, not revoked (%s); they stop when they read the cancel", task_ids, exc
        )


@dataclass
class Sweeper:
    """Every API process runs one: it publishes entries whose publisher died or failed, and tasks
    whose worker stopped renewing their lease. Each id is handled on its own: one that fails stays
    noted (or is noted again) for the next sweep, and does not hold up the others."""

    queues: list[Publishes]
    leases: Leases
    broker: Broker
    queue_list: redis.Redis | None
    grace_s: float
    every_s: float

    @classmethod
    def for_settings(
        cls, settings: Settings, queues: list[Publishes], broker: Broker | None = None
    ) -> Sweeper:
        broker_url = settings.redis_broker_url
        return cls(
            queues=queues,
            leases=leases_for(settings),
            broker=broker or publisher(settings),
            queue_list=redis_client(broker_url) if broker_url else None,
            # A publish takes milliseconds; the grace keeps a sweeper from racing a slow but live one.
            grace_s=settings.job_publish_grace_s,
            # A few times per grace and per lease: a lapsed lease is found within a third of one.
            every_s=min(10.0, settings.job_publish_grace_s / 3, settings.job_lease_s / 3),
        )

    def sweep(self) -> int:
        """One sweep; how many entries and tasks it published."""
        stranded = sum(self.republish_stranded(queue) for queue in self.queues)
        return stranded + self.rerun_lapsed() + sum(self.rescue_lost(queue) for queue in self.queues)

    def republish_stranded(self, queue: Publishes) -> int:
        """Publish the entries noted unpublished over a grace ago that are still waiting to run."""
        store = queue.store
        count = 0
        for entry_id in store.claim_unpublished(self.grace_s):
            try:
                entry = store.load(entry_id)
                if entry is not None and _waits(entry):
                    log.warning("%s %s: stored, never published (its API process died?); publishing it",
                                store.kind.name, entry_id)  # fmt: skip
                    queue.publish(entry)
                    count += 1
                store.mark_published(entry_id)
            except BACKEND_ERRORS as exc:  # still noted (claimed for a grace): the next sweeps try again
                log.warning("%s %s: not published (%s); next sweep", store.kind.name, entry_id, exc)
            except Exception:  # one entry that cannot be read must not hold up the others
                log.exception("%s %s: not published; next sweep", store.kind.name, entry_id)
        return count

    def rerun_lapsed(self) -> int:
        """Publish again every task (job or analysis chunk) whose worker stopped renewing its lease:
        the worker died whole, and its message would wait for Celery's visibility timeout. The
        job's own compare-and-set keeps a late redelivery from completing it twice."""
        count = 0
        for delivery in self.leases.lapsed():  # each claimed by this sweep alone
            task_id = delivery.task_id
            log.warning("task %s: its worker stopped renewing its lease (lost?); running it again", task_id)
            try:
                self.broker.send_task(delivery.task, args=delivery.args, task_id=task_id, retry=False)
            except BACKEND_ERRORS as exc:
                log.warning("task %s: could not publish it again (%s); next sweep", task_id, exc)
                try:
                    self.leases.note(delivery)
                except JobBackendUnavailable:  # Redis away too: the visibility timeout brings it back
                    log.warning(
                        "task %s: not noted again; the broker's visibility timeout redelivers it", task_id
                    )
                continue
            self._to_front(task_id)
            count += 1
        return count

    def rescue_lost(self, queue: Publishes) -> int:
        """Publish again the tasks of entries waiting over a grace (a queued job; an unfinished
        analysis's chunks not done) that the broker holds no more and no worker runs: a message a
        worker popped just as its connection broke (a Redis restart) never reaches Celery's list of
        unacknowledged ones, and nothing would bring it back. A task found in the queue, taken by a
        worker, or under a lease is left alone; a duplicate is harmless (its lease and the checked
        moves run it once)."""
        if self.queue_list is None:
            return 0
        ids = queue.store.claim_waiting(self.grace_s)
        if not ids:
            return 0
        held = self._ids_in_broker()
        what = queue.store.kind.name
        count = 0
        for entry_id in ids:
            try:
                entry = queue.store.load(entry_id)
                tasks = queue.tasks_left(entry) if entry is not None else {}
                unheld = [task_id for task_id in tasks if task_id not in held]
                running = self.leases.known(unheld)
                for task_id in unheld:
                    if task_id in running:
                        continue
                    log.warning("%s %s: task %s in no queue and run by no worker (lost by the broker?); "
                                "publishing it again", what, entry_id, task_id)  # fmt: skip
                    tasks[task_id]()
                    count += 1
            except BACKEND_ERRORS as exc:  # claimed for a grace only: a later sweep looks again
                log.warning("%s %s: not published again (%s); next sweep", what, entry_id, exc)
        return count

    def _ids_in_broker(self) -> set[str]:
        """Every task id in the queue's list or among the messages workers took and did not
        acknowledge yet (kombu's `unacked` hash)."""
        assert self.queue_list is not None
        messages = [*self.queue_list.lrange(QUEUE, 0, -1), *self.queue_list.hvals(UNACKED)]
        return {match.group(1).decode() for item in messages for match in _TASK_ID.finditer(item)}

    def _to_front(self, task_id: str) -> None:
        """It was accepted before the jobs waiting now: it goes first (best effort)."""
        if self.queue_list is None:
            return
        try:
            self.queue_list.eval(_TO_FRONT, 1, QUEUE, task_id)
        except BACKEND_ERRORS as exc:
            log.warning("task %s: published again at the back of the queue (%s)", task_id, exc)

    def start(self, sleep: Callable[[float], None] = time.sleep) -> threading.Thread:
        """Sweep forever from a daemon thread of this API process."""

        def run() -> None:
            while True:
                sleep(self.every_s)
                try:
                    self.sweep()
                except BACKEND_ERRORS as exc:
                    log.warning("sweep skipped: %s", exc)
                except Exception:  # never let the sweeper die
                    log.exception("sweep failed")

        thread = threading.Thread(target=run, name="clarion-sweeper", daemon=True)
        thread.start()
        return thread


def _waits(entry: Any) -> bool:
    """Still to run: a job only while queued; an analysis until it finishes (chunks may be left)."""
    if isinstance(entry, StoredJob):
        return entry.status == QUEUED
    return entry.status not in FINISHED
