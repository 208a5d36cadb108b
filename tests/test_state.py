"""The state machine, the sweeper, leases and publishes against a real Redis, with the store's Redis
and the broker failing at each step in turn: no accepted job is lost, none completes twice, and no
write overrides a cancel."""

from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from api.queue import CeleryJobQueue, Sweeper
from shared.errors import ClarionError
from shared.io.schemas import ExplainOptions
from shared.jobs.broker import EXPLAIN_TASK
from shared.jobs.job import Idempotency, StoredJob, new_job
from shared.jobs.lease import Delivery, Leases
from shared.jobs.state import MOVES, may_move
from shared.jobs.store import JOBS, Store
from shared.kinds import CANCELLED, FAILED, FINISHED, QUEUED, RUNNING, SUCCEEDED
from shared.settings import Settings


class Fault:
    """Fails the step numbered `at` (counted across the store's Redis and the broker), once."""

    def __init__(self, at: int | None = None) -> None:
        self.at = at
        self.steps = 0
        self.fired = False

    def step(self, what: str) -> None:
        self.steps += 1
        if self.steps == self.at:
            self.fired = True
            raise redis.ConnectionError(f"injected failure at step {self.at} ({what})")


class FlakyRedis(redis.Redis):
    """A real Redis client whose commands fail when the fault says so."""

    fault: Fault

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.fault.step(str(args[0]))
        return super().execute_command(*args, **options)


@dataclass
class FlakyBroker:
    """Records what is published (task name, id, arguments) and fails when the fault says so."""

    fault: Fault
    sent: list[tuple[str, str, Any]] = field(default_factory=list)
    revoked: list[Any] = field(default_factory=list)
    fail_once: set[str] = field(default_factory=set)  # task ids whose next publish fails

    def send_task(self, name: str, args: Any = None, task_id: str | None = None, **_: Any) -> None:
        self.fault.step(f"publish {task_id}")
        if task_id in self.fail_once:
            self.fail_once.discard(task_id)
            raise redis.ConnectionError(f"injected failure: publish {task_id}")
        self.sent.append((name, str(task_id), args))

    @property
    def control(self) -> Any:
        broker = self

        class Control:
            def revoke(self, ids: Any) -> None:
                broker.fault.step("revoke")
                if "revoke" in broker.fail_once:
                    broker.fail_once.discard("revoke")
                    raise redis.ConnectionError("injected failure: revoke")
                broker.revoked.append(ids)

        return Control()


@dataclass
class Stack:
    fault: Fault
    client: FlakyRedis
    store: Store[StoredJob]
    broker: FlakyBroker
    queue: CeleryJobQueue
    sweeper: Sweeper
    completions: dict[str, int] = field(default_factory=dict)

    def run_published(self) -> None:
        """What a worker does with each delivery: start, then succeed; a redelivery of a job that
        already finished writes nothing (the compare-and-set), which is what `completions` counts."""
        for name, task_id, _ in list(self.broker.sent):
            assert name == EXPLAIN_TASK
            try:
                if self.store.update(task_id, RUNNING) is None:
                    continue
                if self.store.update(task_id, SUCCEEDED) is not None:
                    self.completions[task_id] = self.completions.get(task_id, 0) + 1
            except ClarionError:
                continue  # Redis away for the worker: it tries again (worker/tasks.py's _until_stored)


def make_stack(redis_url: str, fault: Fault, lease_s: float = 30.0) -> Stack:
    redis.Redis.from_url(redis_url).flushdb()
    client = FlakyRedis.from_url(redis_url)
    client.fault = fault
    store = Store(client, JOBS, ttl_s=600)
    broker = FlakyBroker(fault)
    settings = Settings.from_env({"REDIS_URL": redis_url})
    queue = CeleryJobQueue(settings, broker=broker, store=store)
    sweeper = Sweeper(
        queues=[queue], leases=Leases(client, lease_s), broker=broker, queue_list=None, grace_s=0.0, every_s=1
    )
    return Stack(fault, client, store, broker, queue, sweeper)


def job(text: str) -> StoredJob:
    return new_job("tiny", [text], True, ExplainOptions(max_evals=16), [])


def settle(stack: Stack, rounds: int = 4) -> None:
    """Sweep and run until nothing is left, as the API's sweeper and the workers do over time."""
    for _ in range(rounds):
        with contextlib.suppress(ClarionError):  # the sweeper's thread logs and sweeps again
            stack.sweeper.sweep()
        stack.run_published()


def scenario(stack: Stack) -> list[str]:
    """Four submits; the ids the API answered 202 for."""
    accepted = []
    for n in range(4):
        try:
            record, replayed = stack.queue.submit(job(f"text {n}"))
        except ClarionError:
            continue  # a 503: nothing was accepted
        assert not replayed
        accepted.append(record.id)
    settle(stack)
    return accepted


def test_the_moves_are_the_documented_ones() -> None:
    assert may_move(QUEUED, RUNNING) and may_move(RUNNING, RUNNING) and may_move(RUNNING, SUCCEEDED)
    assert not may_move(QUEUED, SUCCEEDED)
    for finished in FINISHED:
        assert not any(may_move(finished, target) for target in MOVES), finished
    assert MOVES[CANCELLED] == MOVES[FAILED] == {QUEUED, RUNNING}


def test_a_failure_at_any_step_loses_no_accepted_job_and_completes_none_twice(redis_url: str) -> None:
    baseline = make_stack(redis_url, Fault())
    accepted = scenario(baseline)
    assert len(accepted) == 4 and all(baseline.completions[i] == 1 for i in accepted)
    steps = baseline.fault.steps
    assert steps > 20  # creates, publishes, marks, claims, loads and moves were all counted
    fired = 0
    for at in range(1, steps + 1):
        stack = make_stack(redis_url, Fault(at))
        accepted = scenario(stack)
        fired += stack.fault.fired
        stack.fault.at = None  # the checks below read through the same client
        assert len(accepted) >= 3, at  # at most the one submit the failure hit was refused
        for job_id in accepted:
            assert stack.store.load(job_id).status == SUCCEEDED, (at, job_id)
            assert stack.completions.get(job_id) == 1, (at, job_id)
        run = {task_id for _, task_id, _ in stack.broker.sent}
        assert run <= set(accepted), at  # nothing refused ever runs
    assert fired >= steps - 10  # past the busy part, the last sweeps have fewer steps to fail


def test_a_broker_failing_on_the_second_of_four_stranded_jobs_loses_none(redis_url: str) -> None:
    stack = make_stack(redis_url, Fault())
    records = [job(f"stranded {n}") for n in range(4)]
    for record in records:  # recorded, noted, never published: their API process died
        stack.store.create(record)
    stack.broker.fail_once = {records[1].id}
    assert stack.sweeper.republish_stranded(stack.queue) == 3
    assert {task_id for _, task_id, _ in stack.broker.sent} == {r.id for r in records[:1] + records[2:]}
    time.sleep(0.01)
    assert stack.sweeper.republish_stranded(stack.queue) == 1  # the one that failed, on the next sweep
    stack.run_published()
    assert all(stack.store.load(r.id).status == SUCCEEDED for r in records)
    assert stack.sweeper.republish_stranded(stack.queue) == 0  # nothing left noted


def test_a_cancel_stands_against_the_sweeper_and_the_worker(redis_url: str) -> None:
    stack = make_stack(redis_url, Fault())
    record = job("cancel me")
    stack.store.create(record)  # noted, not published
    seen_by_worker = stack.store.load(record.id)
    assert stack.queue.delete(record.id).status == CANCELLED
    assert stack.sweeper.republish_stranded(stack.queue) == 0  # not published: it waits for nothing
    assert stack.store.move(seen_by_worker, RUNNING) == 0
    assert stack.store.load(record.id).status == CANCELLED
    assert stack.queue.delete(record.id) is None  # finished: removed
    assert stack.store.load(record.id) is None


def test_a_stored_cancel_is_the_answer_even_when_the_revoke_fails(redis_url: str) -> None:
    stack = make_stack(redis_url, Fault())
    record, _ = stack.queue.submit(job("cancel, revoke fails"))
    stack.broker.fail_once = {"revoke"}
    assert stack.queue.delete(record.id).status == CANCELLED
    assert stack.broker.fail_once == set() and stack.broker.revoked == []
    assert stack.store.load(record.id).status == CANCELLED


def test_a_failed_publish_after_the_record_is_still_accepted_and_published_by_the_sweeper(
    redis_url: str,
) -> None:
    stack = make_stack(redis_url, Fault())
    record = job("published later")
    stack.broker.fail_once = {record.id}
    stack.queue.submit(record)
    assert stack.broker.fail_once == set() and stack.broker.sent == []
    assert stack.store.load(record.id).status == QUEUED
    assert stack.sweeper.republish_stranded(stack.queue) == 1
    assert [task_id for _, task_id, _ in stack.broker.sent] == [record.id]


@pytest.mark.parametrize("fail_at", [None, 1, 2, 3, 4, 5])
def test_a_task_whose_worker_died_runs_again_once(redis_url: str, fail_at: int | None) -> None:
    """A worker takes the lease and dies (it never renews): the sweeper publishes the task again
    once the lease lapses, whatever single step fails on the way."""
    stack = make_stack(redis_url, Fault(), lease_s=0.2)
    record, _ = stack.queue.submit(job("worker dies"))
    delivery = Delivery(record.id, EXPLAIN_TASK, [record.texts, record.options])
    assert stack.sweeper.leases.acquire(delivery) is not None
    assert stack.store.update(record.id, RUNNING) is not None  # the dead worker's start
    stack.broker.sent.clear()
    time.sleep(0.3)
    stack.fault.at = None if fail_at is None else stack.fault.steps + fail_at
    for _ in itertools.repeat(None, 3):
        with contextlib.suppress(ClarionError):
            stack.sweeper.rerun_lapsed()
    assert [task_id for _, task_id, _ in stack.broker.sent] == [record.id]
    stack.run_published()
    assert stack.completions == {record.id: 1}


def test_analyses_beyond_the_running_limit_are_refused_and_finished_ones_free_a_place(redis_url: str) -> None:
    from shared.errors import TooBusy
    from shared.jobs.analysis import ANALYSES, StoredAnalysis
    from shared.jobs.job import new_job_id

    redis.Redis.from_url(redis_url).flushdb()
    store = Store(redis.Redis.from_url(redis_url), ANALYSES, ttl_s=600, max_active=2)

    def analysis() -> StoredAnalysis:
        return StoredAnalysis(new_job_id(), "2026-12-06T00:00:00.000Z", "tiny", {}, {}, chunks=1, texts=1)

    first, second = analysis(), analysis()
    store.create(first)
    store.create(second)
    with pytest.raises(TooBusy) as refused:
        store.create(analysis())
    assert "ANALYSIS_MAX_RUNNING" in refused.value.message
    assert store.update(first.id, RUNNING) is not None
    assert store.update(first.id, FAILED) is not None  # finished: its place is free
    store.create(analysis())
    with pytest.raises(TooBusy):
        store.create(analysis())
    redis.Redis.from_url(redis_url).delete(ANALYSES.prefix + second.id)  # expired: forgotten
    store.create(analysis())


def test_a_task_killed_at_the_hard_time_limit_fails_with_that_reason_and_is_not_run_again(
    redis_url: str,
) -> None:
    """What the worker's main process does when it killed a pool process at JOB_TIME_LIMIT: Celery
    sends task_failure with TimeLimitExceeded there, and the handler (run here in a process of its
    own, as the worker's main process would) fails the job and drops its lease and note."""
    import subprocess
    import sys

    redis.Redis.from_url(redis_url).flushdb()
    client = redis.Redis.from_url(redis_url)
    store = Store(client, JOBS, ttl_s=600)
    record = job("runs past the hard limit")
    store.create(record)
    assert store.update(record.id, RUNNING) is not None
    leases = Leases(client, 30)
    assert leases.acquire(Delivery(record.id, EXPLAIN_TASK, [record.texts, record.options])) is not None
    handler = (
        "from celery.exceptions import TimeLimitExceeded\n"
        "from worker.tasks import explain_job, fail_past_the_time_limit\n"
        f"fail_past_the_time_limit(sender=explain_job, task_id={record.id!r},\n"
        "                         exception=TimeLimitExceeded(12))\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "REDIS_URL": redis_url,
        "JOB_TIME_LIMIT": "12",
        "JOB_SOFT_TIME_LIMIT": "10",
    }
    subprocess.run([sys.executable, "-c", handler], env=env, check=True, timeout=120)
    failed = store.load(record.id)
    assert failed.status == FAILED
    assert "hard time limit (12s, JOB_TIME_LIMIT)" in failed.error["message"]
    assert list(leases.lapsed()) == []  # nothing for the sweeper to run again
    assert client.exists(f"clarion:lease:{record.id}") == 0


def test_a_released_lease_stays_released_while_the_keeper_renews(redis_url: str) -> None:
    from shared.jobs.lease import LeaseKeeper

    client = redis.Redis.from_url(redis_url)
    keeper = LeaseKeeper(Leases(client, 0.3))  # renewals every 0.1 s
    delivery = Delivery("released-" + "0" * 23, EXPLAIN_TASK, [["text"], {}])
    lease = keeper.hold(delivery)
    assert lease is not None
    time.sleep(0.35)  # renewed a few times: still held past its first expiry
    assert client.exists(f"clarion:lease:{delivery.task_id}") == 1
    keeper.drop(lease)
    time.sleep(0.35)
    assert client.exists(f"clarion:lease:{delivery.task_id}") == 0
    assert client.hexists("clarion:leased", delivery.task_id) == 0


def test_a_lease_not_renewed_for_a_whole_period_is_lost_and_an_abandoned_one_runs_again(
    redis_url: str,
) -> None:
    from shared.jobs.lease import Lease, LeaseKeeper
    from tests.support import free_port

    unreachable = Leases(redis.Redis(port=free_port(), socket_connect_timeout=0.2), 30)
    cut_off = Lease(Delivery("cut-off", EXPLAIN_TASK, []), "token", _leases=unreachable)
    cut_off.renew()
    assert not cut_off.lost  # one failed renewal: the lease may still be held
    cut_off.renewed_at -= 30  # its last renewal went through a whole lease ago
    cut_off.renew()
    assert cut_off.lost  # the task stops: the sweeper may have published it again

    client = redis.Redis.from_url(redis_url)
    leases = Leases(client, 0.3)
    keeper = LeaseKeeper(leases)
    delivery = Delivery("abandoned-" + "0" * 22, EXPLAIN_TASK, [["text"], {}])
    lease = keeper.hold(delivery)
    keeper.abandon(lease)  # Redis stayed away for the task: neither finished nor handed back
    time.sleep(0.45)
    assert [d.task_id for d in list(leases.lapsed())] == [delivery.task_id]  # the sweeper publishes it again


def test_each_script_sent_again_after_its_reply_was_lost_reports_its_own_work(redis_url: str) -> None:
    """redis-py sends a command again when the connection broke before its reply: a create, a move
    or a claim that already ran must say it is done, not undo or refuse what it did."""
    from shared.jobs.lease import _CLAIM, CLAIMED_PREFIX, LEASE_PREFIX, LEASED

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    store = Store(client, JOBS, ttl_s=600)
    record = job("sent twice")
    idempotency = Idempotency(key="twice", owner=None, request="digest")
    assert store.create(record, idempotency) == (record, False)
    assert store.create(record, idempotency) == (record, False)  # its own record: made now, not replayed
    started = store.load(record.id)
    cancelling = store.load(record.id)
    assert store.move(cancelling, CANCELLED) == 1
    cancelling.revision -= 1  # the same write again, as it was sent
    cancelling.status = QUEUED
    assert store.move(cancelling, CANCELLED) == 1  # done, not "refused" (which DELETE would read as finished)
    assert store.move(started, RUNNING) == 0

    claim = client.register_script(_CLAIM)
    client.hset(LEASED, "lapsed", '{"task": "t", "args": []}')
    keys = [LEASE_PREFIX + "lapsed", LEASED, CLAIMED_PREFIX + "lapsed"]
    first = claim(keys=keys, args=["lapsed", "token-1", 60000])
    assert first == claim(keys=keys, args=["lapsed", "token-1", 60000]) == b'{"task": "t", "args": []}'
    assert claim(keys=keys, args=["lapsed", "token-2", 60000]) is None  # another sweeper's claim


def test_a_queued_job_whose_task_the_broker_lost_is_published_again(redis_url: str) -> None:
    """A message a worker popped just as its connection broke is in no list: the job would stay
    queued forever. The sweeper looks for the task of every job queued over a grace in the queue and
    among the unacknowledged ones, and publishes again what it finds in neither."""
    import json

    from shared.jobs.broker import QUEUE

    stack = make_stack(redis_url, Fault())
    client = redis.Redis.from_url(redis_url)
    stack.sweeper.queue_list = client
    lost, waiting, taken, started = (stack.queue.submit(job(f"text {n}"))[0] for n in range(4))
    client.lpush(QUEUE, json.dumps({"body": "...", "headers": {"task": EXPLAIN_TASK, "id": waiting.id}}))
    client.hset("unacked", "tag-1", json.dumps([{"headers": {"id": taken.id}}, "", QUEUE]))
    assert stack.store.update(started.id, RUNNING) is not None
    stack.broker.sent.clear()
    stack.sweeper.grace_s = 0.2
    assert stack.sweeper.rescue_lost(stack.queue) == 0  # queued moments ago: not looked at yet
    time.sleep(0.25)
    assert stack.sweeper.rescue_lost(stack.queue) == 1
    assert [task_id for _, task_id, _ in stack.broker.sent] == [lost.id]
    assert stack.sweeper.rescue_lost(stack.queue) == 0  # claimed: looked at again a grace later only
    stack.run_published()
    assert stack.store.load(lost.id).status == SUCCEEDED
    assert stack.sweeper.rescue_lost(stack.queue) == 0  # started: no longer waiting


def test_an_analysis_chunk_whose_task_the_broker_lost_is_published_again(redis_url: str) -> None:
    """An analysis's chunks start one by one, so any of them can be lost while the analysis already
    runs: until it finishes, the sweeper publishes again each chunk not done whose task is in no
    queue, taken by no worker and under no lease."""
    import json

    from api.queue import CeleryAnalyses
    from shared.jobs.analysis import ANALYSES, StoredAnalysis
    from shared.jobs.broker import ANALYZE_TASK, QUEUE
    from shared.jobs.job import new_job_id, utc_now

    redis.Redis.from_url(redis_url).flushdb()
    client = redis.Redis.from_url(redis_url)
    store = Store(client, ANALYSES, ttl_s=600)
    broker = FlakyBroker(Fault())
    analyses = CeleryAnalyses(Settings.from_env({"REDIS_URL": redis_url}), broker=broker, store=store)
    leases = Leases(client, 30.0)
    sweeper = Sweeper(
        queues=[analyses], leases=leases, broker=broker, queue_list=client, grace_s=0.2, every_s=1
    )
    record = StoredAnalysis(new_job_id(), utc_now(), "tiny", {}, {}, chunks=5)
    store.create(record)
    analyses.submit(record)
    assert store.update(record.id, RUNNING) is not None  # chunk 0 started: the analysis runs
    store.chunk_done(record.id, 0, 10)  # done
    client.lpush(QUEUE, json.dumps({"headers": {"task": ANALYZE_TASK, "id": f"{record.id}-1"}}))  # waiting
    client.hset("unacked", "tag-1", json.dumps([{"headers": {"id": f"{record.id}-2"}}, "", QUEUE]))  # taken
    assert leases.take(Delivery(f"{record.id}-3", ANALYZE_TASK, [record.id, 3]), "worker-1")  # running
    broker.sent.clear()  # chunk 4: popped by a worker whose connection broke, in no list
    assert sweeper.rescue_lost(analyses) == 0  # accepted moments ago: not looked at yet
    time.sleep(0.25)
    assert sweeper.rescue_lost(analyses) == 1
    assert broker.sent == [(ANALYZE_TASK, f"{record.id}-4", (record.id, 4))]
    assert sweeper.rescue_lost(analyses) == 0  # claimed: looked at again a grace later only
    for index in range(1, 5):
        store.chunk_done(record.id, index, 10)
    assert store.update(record.id, SUCCEEDED) is not None
    time.sleep(0.25)
    assert sweeper.rescue_lost(analyses) == 0  # finished: no longer waiting
    assert client.zscore(ANALYSES.waiting, record.id) is None
