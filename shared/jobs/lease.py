"""Leases on running tasks: how a task whose whole worker died runs again within a minute.

A worker that starts a task (an explanation job, or one chunk of an analysis) takes the task's
lease, a Redis key holding the worker's token that expires after `JOB_LEASE` seconds, and renews it
every third of that while the task runs. Beside the lease, a hash (`LEASED`) notes how to publish
the task again: its Celery name and arguments. A worker that stops normally releases both.

A worker that dies whole (SIGKILL, out of memory, a node lost, a grace period run out) stops
renewing. Its message stays unacknowledged in Redis until Celery's visibility timeout, which must
outlast the longest job (minutes). The sweeper (`lapsed`, run by every API process) finds noted
tasks whose lease expired, claims each in one atomic step (so one sweeper republishes it) and hands
it back to be published again under the same task id.

A delivery that finds the lease held by another token does not run. Two deliveries run at once only
when a worker is cut off from Redis for a whole lease while it runs: it stops its task within a pass
of noticing (a lease not renewed for `JOB_LEASE` counts as lost), and the other delivery runs it. A
late redelivery (the visibility timeout, once the dead worker's message comes back) finds the job
finished and writes nothing: every write is a checked move (state.py, store.py) and a finished job
never moves again, so no job completes twice.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from shared.jobs.store import backend_call
from shared.settings import Settings
from shared.storage.redis import redis_client

log = logging.getLogger(__name__)
LEASE_PREFIX = "clarion:lease:"
LEASED = "clarion:leased"  # task id -> {"task": name, "args": [...]}: how to publish it again

# Take or renew: set the lease unless another token holds it, and note the task (again: a sweeper
# may have claimed the note while Redis was away from this worker). 1 when this token holds it.
_TAKE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
return 1
"""
# Release: only this token's lease, and the note with it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HDEL', KEYS[2], ARGV[2])
end
return 1
"""
# Claim a lapsed task: its note, when no lease is held; removing the note decides who republishes.
# A marker of the claim (for a lease) answers the same claim sent again after its reply was lost.
_CLAIM = """
local claimed = redis.call('GET', KEYS[3])
if claimed then
  local cut = string.find(claimed, '\\n', 1, true)
  if string.sub(claimed, 1, cut - 1) == ARGV[2] then return string.sub(claimed, cut + 1) end
  return false
end
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local delivery = redis.call('HGET', KEYS[2], ARGV[1])
if not delivery then return false end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], ARGV[2] .. '\\n' .. delivery, 'PX', ARGV[3])
return delivery
"""
CLAIMED_PREFIX = "clarion:claimed:"


@dataclass(frozen=True)
class Delivery:
    """What it takes to publish a task again: its id, Celery name and arguments."""

    task_id: str
    task: str
    args: list[Any]

    def to_json(self) -> str:
        return json.dumps({"task": self.task, "args": self.args})

    @classmethod
    def from_json(cls, task_id: str, raw: str | bytes) -> Delivery:
        data = json.loads(raw)
        return cls(task_id, data["task"], list(data["args"]))


@dataclass
class Lease:
    """One task's lease as its worker holds it. `lost` turns true when a renewal finds another
    token holding it (the task was published again after this worker was away too long), or when
    no renewal has gone through for a whole lease (the sweeper may have published it again by now):
    the task then stops, since another delivery runs it."""

    delivery: Delivery
    token: str
    lost: bool = False
    _leases: Leases | None = field(default=None, repr=False)
    renewed_at: float = field(default_factory=time.monotonic)

    def renew(self) -> None:
        assert self._leases is not None
        if self.lost:  # another delivery runs it, or may: taking it back would stop that one
            return
        try:
            if not self._leases.take(self.delivery, self.token):
                self._lose("its lease is held by another worker now")
                return
            self.renewed_at = time.monotonic()
        except redis.RedisError as exc:  # Redis away: renewals go on until the lease has lapsed
            log.warning("task %s: could not renew its lease (%s)", self.delivery.task_id, exc)
            if time.monotonic() - self.renewed_at >= self._leases.lease_s:
                self._lose(f"no renewal for {self._leases.lease_s}s (JOB_LEASE): another worker may run it")

    def _lose(self, why: str) -> None:
        if not self.lost:
            log.warning("task %s: %s; stopping it here", self.delivery.task_id, why)
        self.lost = True


def leases_for(settings: Settings) -> Leases:
    assert settings.redis_store_url is not None, "validated by Settings"
    return Leases(redis_client(settings.redis_store_url), settings.job_lease_s)


class Leases:
    """The leases of one Redis, `lease_s` seconds each."""

    def __init__(self, client: redis.Redis, lease_s: float) -> None:
        self._client = client
        self.lease_s = lease_s
        self._take = client.register_script(_TAKE)
        self._release = client.register_script(_RELEASE)
        self._claim = client.register_script(_CLAIM)

    def take(self, delivery: Delivery, token: str) -> bool:
        """Take or renew the lease for `token`; False when another token holds it."""
        keys = [LEASE_PREFIX + delivery.task_id, LEASED]
        args = [token, int(self.lease_s * 1000), delivery.task_id, delivery.to_json()]
        return bool(self._take(keys=keys, args=args))

    def acquire(self, delivery: Delivery) -> Lease | None:
        """A new lease for this delivery, or None when another delivery holds one."""
        token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        taken = backend_call(lambda: self.take(delivery, token))
        return Lease(delivery, token, _leases=self) if taken else None

    def release(self, lease: Lease) -> None:
        keys = [LEASE_PREFIX + lease.delivery.task_id, LEASED]
        backend_call(lambda: self._release(keys=keys, args=[lease.token, lease.delivery.task_id]))

    def lapsed(self) -> Iterator[Delivery]:
        """Claim, one at a time as the caller takes them, the noted tasks whose lease expired: each
        is handed to one caller only, and at most one is claimed and not yet handled."""
        noted = backend_call(lambda: self._client.hkeys(LEASED))
        for raw in noted:
            task_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            keys = [LEASE_PREFIX + task_id, LEASED, CLAIMED_PREFIX + task_id]
            args = [task_id, uuid.uuid4().hex, int(self.lease_s * 1000)]
            delivery = backend_call(lambda keys=keys, args=args: self._claim(keys=keys, args=args))
            if delivery:
                yield Delivery.from_json(task_id, delivery)

    def known(self, task_ids: list[str]) -> set[str]:
        """Those of `task_ids` a worker holds a lease on, or whose lapsed lease a sweep has noted or
        claimed (rerun_lapsed's to publish again)."""

        def ask() -> set[str]:
            with self._client.pipeline(transaction=False) as pipe:
                for task_id in task_ids:
                    pipe.exists(LEASE_PREFIX + task_id, CLAIMED_PREFIX + task_id)
                    pipe.hexists(LEASED, task_id)
                answers = pipe.execute()
            pairs = zip(answers[::2], answers[1::2], strict=True)
            return {task_id for task_id, (live, noted) in zip(task_ids, pairs, strict=True) if live or noted}

        return backend_call(ask) if task_ids else set()

    def note(self, delivery: Delivery) -> None:
        """Note a claimed task again (its republish failed): the next sweep claims it afresh."""

        def note() -> None:
            with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(LEASED, delivery.task_id, delivery.to_json())
                pipe.delete(CLAIMED_PREFIX + delivery.task_id)
                pipe.execute()

        backend_call(note)

    def forget(self, task_id: str) -> None:
        """Drop a task's lease and note whoever holds them: it ended for good (its worker killed it
        at the hard time limit), and must not run again."""

        def drop() -> None:
            with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(LEASE_PREFIX + task_id)
                pipe.hdel(LEASED, task_id)
                pipe.execute()

        backend_call(drop)


class LeaseKeeper:
    """Renews the leases a worker process holds, every third of a lease, from one daemon thread:
    renewals go on while a task's thread is busy in a long pass."""

    def __init__(self, leases: Leases) -> None:
        self._leases = leases
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, delivery: Delivery) -> Lease | None:
        lease = self._leases.acquire(delivery)
        if lease is not None:
            with self._lock:
                self._held[delivery.task_id] = lease
                # Started on first use: after the fork, in the process that runs tasks.
                if self._thread is None:
                    self._thread = threading.Thread(target=self._renew, name="clarion-leases", daemon=True)
                    self._thread.start()
        return lease

    def drop(self, lease: Lease) -> None:
        """The task ended here: stop renewing and release (after this, no renewal can bring it back:
        renewals run under the same lock and only for leases still held)."""
        self.abandon(lease)
        try:
            self._leases.release(lease)
        except Exception as exc:  # the lease expires by itself; its note is claimed and found finished
            log.warning("task %s: lease not released: %s", lease.delivery.task_id, exc)

    def abandon(self, lease: Lease) -> None:
        """Stop renewing without releasing: the lease lapses and the sweeper publishes the task again
        (for a task that could neither finish nor hand itself back)."""
        with self._lock:
            if self._held.get(lease.delivery.task_id) is lease:
                del self._held[lease.delivery.task_id]

    def _renew(self) -> None:
        while True:
            time.sleep(self._leases.lease_s / 3)
            with self._lock:
                for lease in list(self._held.values()):
                    try:
                        lease.renew()
                    except Exception:  # never let the renewals stop: every lease of the process would lapse
                        log.exception("task %s: renewing its lease failed", lease.delivery.task_id)
