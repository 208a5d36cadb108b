"""Celery tasks. Each worker process loads and warms its own model after the fork.

The worker is the only writer of a job's state and result: it marks the job running, then
succeeded (with its explanations) or failed (with the reason), each by a compare-and-set that leaves
a finished job as it is (cancelled stays cancelled; a late redelivery of a job that another worker
already finished writes nothing).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import (
    task_failure,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
)

from shared import metrics
from shared.errors import ClarionError, JobBackendUnavailable, JobCancelled
from shared.io.inputs import Input, restored
from shared.io.schemas import ExplainOptions, parse_model
from shared.jobs.analysis import (
    StoredAnalysis,
    analysis_store_for,
    fail,
    is_cancelled,
    load_or_404,
    record_explainer,
    run_chunk,
    s3_publisher,
)
from shared.jobs.broker import ANALYZE_TASK, EXPLAIN_TASK
from shared.jobs.job import StoredJob, progress_of, utc_now
from shared.jobs.lease import Delivery, Lease, LeaseKeeper, leases_for
from shared.jobs.store import Store, job_store_for
from shared.kinds import CANCELLED, FAILED, RUNNING, SUCCEEDED
from shared.runtime.engine import Ticket
from shared.serving.service import ClarionService
from worker.main import celery_app

log = logging.getLogger(__name__)
T = TypeVar("T")
_service: ClarionService | None = None
_store: Store[StoredJob] | None = None
_analyses: Store[StoredAnalysis] | None = None
_leases: LeaseKeeper | None = None
_loading = threading.Lock()

# A job's state is written until Redis takes it: backoff doubles from 10 ms up to 10 s a try (with
# jitter), so 30 tries outlast a minute or more of Redis being away (a restart, a failover) instead
# of losing the job just computed (found by tests/test_compose.py: a job finished while Redis
# restarted).
STATE_WRITE_TRIES = 30
# A running job stores its progress this often at most: each write is one round trip of the whole
# stored job, so pollers see it move without the job spending its time writing.
PROGRESS_INTERVAL_S = 1.0


@worker_init.connect
def serve_metrics(**_: Any) -> None:
    """The worker's main process serves every pool process's metrics on METRICS_PORT."""
    port = celery_app.clarion_settings.metrics_port
    if port:
        metrics.serve(port)


@task_failure.connect
def fail_past_the_time_limit(
    sender: Any = None, task_id: str | None = None, exception: Any = None, args: Any = None, **_: Any
) -> None:
    """Runs in the worker's main process when it killed a pool process at the hard time limit
    (JOB_TIME_LIMIT): the task fails with that reason, and its lease goes, instead of the sweeper
    running it again as if its worker had died."""
    if not isinstance(exception, TimeLimitExceeded) or task_id is None:
        return
    settings = celery_app.clarion_settings
    message = f"the task exceeded the hard time limit ({settings.job_time_limit_s}s, JOB_TIME_LIMIT)"
    log.warning("task %s: %s; it fails", task_id, message)
    try:  # the outcome first: once it is stored, the lease may go
        if getattr(sender, "name", None) == ANALYZE_TASK and args:
            fail(analysis_store_for(settings), str(args[0]), message)
        elif getattr(sender, "name", None) == EXPLAIN_TASK:
            job_store_for(settings).update(task_id, FAILED, _failure(message))
        leases_for(settings).forget(task_id)
    except JobBackendUnavailable as exc:  # the lease lapses and the job runs again: the lesser harm
        log.warning("task %s: could not store the time limit (%s)", task_id, exc)


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
    global _service, _store, _analyses, _leases
    with _loading:
        if _service is None:
            settings = celery_app.clarion_settings
            _store = job_store_for(settings)
            _analyses = analysis_store_for(settings)
            _leases = LeaseKeeper(leases_for(settings))
            service = ClarionService(settings, threads=settings.celery_threads_per_process)
            service.load()
            service.explain(["warm up the explainer"], ExplainOptions(max_evals=16))
            _service = service


def _status(job_id: str) -> str | None:
    """The job's stored status (None: not stored). Unknown (Redis blip) counts as still running."""
    assert _store is not None
    try:
        job = _store.load(job_id)
    except JobBackendUnavailable:
        return RUNNING
    return None if job is None else job.status


def _write(job_id: str, target: str, change: Callable[[StoredJob], None]) -> StoredJob | None:
    """Move the job to `target` with `change` applied, if its state allows (shared/jobs/state.py);
    keep trying while Redis is away. The job as written, or None when the move was refused."""
    assert _store is not None
    store = _store
    return _until_stored(lambda: store.update(job_id, target, change), f"job {job_id}")


def _until_stored(operation: Callable[[], T], what: str) -> T:
    """Run a Redis operation, trying again while Redis is away (a restart, a failover)."""
    for attempt in range(STATE_WRITE_TRIES):
        try:
            return operation()
        except JobBackendUnavailable as exc:
            if attempt == STATE_WRITE_TRIES - 1:
                raise
            delay = min(10.0, 0.01 * 2**attempt) * random.uniform(0.5, 1.0)
            log.warning("%s: the job store is unavailable (%s); trying again in %.2fs", what, exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


@contextmanager
def _leased(task_id: str, task: str, args: list[Any]) -> Iterator[Lease | None]:
    """Hold the task's lease while it runs (None: another delivery of it holds the lease and runs
    it), and finish the task before a SIGTERM stops this process."""
    assert _leases is not None
    keeper = _leases
    lease = _until_stored(lambda: keeper.hold(Delivery(task_id, task, args)), f"task {task_id}")
    if lease is None:
        log.info("task %s: another worker holds its lease and runs it; not run here", task_id)
        yield None
        return
    try:
        with _finishing_on_sigterm():
            yield lease
    except JobBackendUnavailable:
        # Redis stayed away: keep the lease's note and let the lease lapse, so the sweeper publishes
        # the task again even if handing it back (a Celery retry) fails too.
        keeper.abandon(lease)
        raise
    except BaseException:
        keeper.drop(lease)
        raise
    if lease.lost:  # stopped for another delivery, which runs it or will: its note must stay
        keeper.abandon(lease)
    else:
        keeper.drop(lease)


@contextmanager
def _finishing_on_sigterm() -> Iterator[None]:
    """A SIGTERM that reaches this pool process while it runs a task (a whole process group
    signalled: systemd, `tini -g`, `kill -- -PGID`) waits until the task is done, then ends the
    process as it asked. The main process takes the same SIGTERM as a warm shutdown: it takes no
    new task and waits for this one, so the job finishes within the grace period instead of being
    lost with the process. The threads pool runs tasks off the main thread, where the main process
    already waits for them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    received: list[int] = []

    def defer(signum: int, _frame: Any) -> None:
        if not received:
            log.warning("SIGTERM: finishing the running task first (process %d)", os.getpid())
        received.append(signum)

    signal.signal(signal.SIGTERM, defer)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if received:
            # Once this process has handed the result to the main process (moments from now) it
            # waits for work again, and the pool's own handler ends it cleanly.
            timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
            timer.daemon = True
            timer.start()


def _start(job: StoredJob) -> None:
    """Running, one more attempt."""
    job.attempts += 1
    job.started_at = utc_now()


def _out_of_attempts(job_id: str) -> bool:
    """A job whose worker was lost JOB_MAX_ATTEMPTS times fails instead of starting again."""
    assert _store is not None
    store = _store
    limit = celery_app.clarion_settings.job_max_attempts
    job = _until_stored(lambda: store.load(job_id), f"job {job_id}")
    if job is None or job.attempts < limit:
        return False
    message = (
        f"the job ran out of attempts: its worker was lost during each of its {limit} "
        "(JOB_MAX_ATTEMPTS), out of memory? It is not run again"
    )
    _failed(job_id, message)
    return True


class _Progress:
    """Stores a running job's progress, at most every PROGRESS_INTERVAL_S, best effort: one try, and
    a Redis blip skips a report rather than slowing the job (the next one catches up)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self._next = time.monotonic() + PROGRESS_INTERVAL_S

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + PROGRESS_INTERVAL_S
        assert _store is not None
        with suppress(JobBackendUnavailable):
            _store.update(
                self.job_id, RUNNING, lambda job: setattr(job, "progress", progress_of(done, total))
            )


@celery_app.task(name=EXPLAIN_TASK, bind=True)
def explain_job(self: Any, texts: list[str | dict[str, Any]], options: dict[str, Any]) -> None:
    """Explain `texts` (inputs as shared.io.inputs.stored keeps them): the same
    `ClarionService.explain` the single-process API calls."""
    if _service is None:  # the threads pool while it loads, or the solo pool
        _load_model()
    job_id = self.request.id
    with _leased(job_id, EXPLAIN_TASK, [texts, options]) as lease:
        if lease is not None:
            _explain(job_id, [restored(text) for text in texts], options, lease)


def _explain(job_id: str, texts: list[Input], options: dict[str, Any], lease: Lease) -> None:
    assert _service is not None
    if _out_of_attempts(job_id):
        return
    started = _write(job_id, RUNNING, _start)
    if started is None:  # cancelled, finished or expired
        log.info("job %s: not run (%s)", job_id, _status(job_id) or "not stored")
        return
    limit = _service.settings.job_soft_time_limit_s
    timeout_message = f"the explanation exceeded the time limit ({limit}s)"
    # The engine stops the job's work within one pass of its soft limit, a DELETE or a lost lease
    # (polled here, in the task's thread), without killing the process and its loaded model.
    ticket = Ticket.within(
        limit,
        timeout_message,
        cancelled_by=lambda: lease.lost or _status(job_id) == CANCELLED,
        progress=_Progress(job_id),
    )
    fingerprint = _service.model.fingerprint
    predictions = None
    try:
        parsed = parse_model(ExplainOptions, options, _service.settings)
        if started.model_fingerprint not in (None, fingerprint):  # one model per job: classify again
            log.warning("job %s: classified by model %s, explained by %s: classifying it again",
                        job_id, started.model_fingerprint, fingerprint)  # fmt: skip
            classified = _service.classify(texts, ticket, parsed.long_text)
            predictions = [c.model_dump(mode="json") for c in classified]
        with metrics.JOB_SECONDS.time():
            explanations = [
                e.model_copy(update={"model_fingerprint": fingerprint}).model_dump(mode="json")
                for e in _service.explain(texts, parsed, ticket)
            ]
    except JobCancelled:
        if lease.lost:
            log.info("job %s: stopped, another worker runs it now", job_id)
        else:
            log.info("job %s cancelled while it ran: its work stopped", job_id)
        return  # the DELETE wrote the outcome, or the other delivery will
    except SoftTimeLimitExceeded:
        _failed(job_id, timeout_message)
        return
    except ClarionError as exc:
        _failed(job_id, exc.message)
        return
    except Exception as exc:  # a bug or a library error: the job fails visibly, the worker goes on
        log.exception("job %s failed", job_id)
        _failed(job_id, f"{type(exc).__name__}: {exc}")
        return

    def succeeded(job: StoredJob) -> None:
        job.explanations, job.finished_at = explanations, utc_now()
        if predictions is not None:
            job.predictions, job.model_fingerprint = predictions, fingerprint
        job.progress = progress_of(*ticket.progress) if ticket.progress else None

    if _write(job_id, SUCCEEDED, succeeded) is not None:
        log.info("job %s succeeded", job_id)


def _failure(message: str) -> Callable[[StoredJob], None]:
    def failed(job: StoredJob) -> None:
        job.finished_at = utc_now()
        job.error = {"code": "explanation_failed", "message": message}

    return failed


def _failed(job_id: str, message: str) -> None:
    log.info("job %s failed: %s", job_id, message)
    _write(job_id, FAILED, _failure(message))


@celery_app.task(name=ANALYZE_TASK, bind=True, max_retries=None)
def analyze_chunk(self: Any, analysis_id: str, index: int) -> None:
    """Explain one chunk of an analysis (and merge the analysis when it was the last one)."""
    if _service is None:
        _load_model()
    try:
        with _leased(self.request.id, ANALYZE_TASK, [analysis_id, index]) as lease:
            if lease is not None:
                _analyze(analysis_id, index, lease)
    except JobBackendUnavailable as exc:  # Redis away: the chunk runs again once it is back
        log.warning("analysis %s chunk %d: %s; trying again", analysis_id, index, exc)
        raise self.retry(countdown=min(30, 2 ** min(self.request.retries, 5))) from None


def _analyze(analysis_id: str, index: int, lease: Lease) -> None:
    assert _service is not None and _analyses is not None
    store = _analyses
    limit = _service.settings.job_soft_time_limit_s
    timeout_message = f"chunk {index} of the analysis exceeded the time limit ({limit}s)"
    ticket = Ticket.within(
        limit, timeout_message, cancelled_by=lambda: lease.lost or is_cancelled(store, analysis_id)
    )
    try:
        analysis = load_or_404(store, analysis_id)
        explain = record_explainer(_service, analysis)
        if run_chunk(store, analysis_id, index, explain, ticket, s3_publisher(_service.settings)) is None:
            log.info("analysis %s chunk %d: not run (%s)", analysis_id, index, analysis.status)
    except JobCancelled:
        if lease.lost:
            log.info("analysis %s chunk %d: stopped, another worker runs it now", analysis_id, index)
        else:
            log.info("analysis %s cancelled while chunk %d ran: its work stopped", analysis_id, index)
    except SoftTimeLimitExceeded:
        log.info("analysis %s failed: %s", analysis_id, timeout_message)
        fail(store, analysis_id, timeout_message)
    except JobBackendUnavailable:
        raise  # analyze_chunk retries the chunk once Redis is back
    except ClarionError as exc:
        log.info("analysis %s failed: %s", analysis_id, exc.message)
        fail(store, analysis_id, exc.message)
    except Exception as exc:  # a bug or a library error: the analysis fails visibly, the worker goes on
        log.exception("analysis %s chunk %d failed", analysis_id, index)
        fail(store, analysis_id, f"{type(exc).__name__}: {exc}")
