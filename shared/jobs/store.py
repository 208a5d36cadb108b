"""The Redis record of every issued job id (so unknown ids are 404s) and of cancellations."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from shared.errors import JobBackendUnavailable
from shared.jobs.record import JobRecord
from shared.kinds import FINISHED
from shared.settings import Settings
from shared.storage.redis import redis_client

T = TypeVar("T")
KEY_PREFIX = "clarion:job:"
# Jobs recorded but not yet known to be published to the broker, scored by when they were recorded.
UNPUBLISHED = "clarion:unpublished"
# Compare-and-set in one step on the server: write the record unless the stored one is finished.
# A finished job never changes again (cancelled stays cancelled, succeeded stays succeeded), even
# when a GET refreshing it and a DELETE cancelling it race.
SAVE_UNLESS_FINISHED = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, record = pcall(cjson.decode, current)
  if ok and type(record) == 'table' then
    for _, finished in ipairs(cjson.decode(ARGV[3])) do
      if record['status'] == finished then return 0 end
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


class Unpublished:
    """Ids recorded but not yet known to be published to the broker, scored by when they were
    recorded (a sorted set): what a sweeper publishes when their publisher died or failed."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self._client = client
        self.key = key

    def add(self, pipe: Any, item_id: str) -> None:
        """Note `item_id` in the same transaction (`pipe`) that records it."""
        pipe.zadd(self.key, {item_id: time.time()})

    def remove(self, item_id: str) -> None:
        backend_call(lambda: self._client.zrem(self.key, item_id))

    def claim(self, older_than_s: float, limit: int = 100) -> list[str]:
        """Ids noted over `older_than_s` ago and never marked published. Each id is handed to one
        caller only (the ZREM that removes it decides)."""
        cutoff = time.time() - older_than_s
        ids = backend_call(lambda: self._client.zrangebyscore(self.key, 0, cutoff, start=0, num=limit))
        claimed = []
        for raw in ids:
            item_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            if backend_call(lambda item_id=item_id: self._client.zrem(self.key, item_id)):
                claimed.append(item_id)
        return claimed


def job_store_for(settings: Settings) -> RedisJobStore:
    assert settings.redis_store_url is not None, "validated by Settings"
    return RedisJobStore(redis_client(settings.redis_store_url), settings.job_result_ttl_s)


class RedisJobStore:
    """Job records as JSON under `clarion:job:<id>`, expiring with the job results."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self._client = client
        self._ttl_s = ttl_s
        self._save_unless_finished = client.register_script(SAVE_UNLESS_FINISHED)
        self._unpublished = Unpublished(client, UNPUBLISHED)

    def save(self, record: JobRecord) -> None:
        self._call(lambda: self._client.set(KEY_PREFIX + record.id, record.to_json(), ex=self._ttl_s))

    def save_unpublished(self, record: JobRecord) -> None:
        """Record a new job and, in the same transaction, note it as not published yet."""

        def save() -> None:
            with self._client.pipeline(transaction=True) as pipe:
                pipe.set(KEY_PREFIX + record.id, record.to_json(), ex=self._ttl_s)
                self._unpublished.add(pipe, record.id)
                pipe.execute()

        self._call(save)

    def mark_published(self, job_id: str) -> None:
        self._unpublished.remove(job_id)

    def claim_unpublished(self, older_than_s: float, limit: int = 100) -> list[str]:
        """Ids recorded over `older_than_s` ago and never marked published: their publisher died
        or failed. Each id is handed to one caller only."""
        return self._unpublished.claim(older_than_s, limit)

    def save_unless_finished(self, record: JobRecord) -> bool:
        """Store `record` unless the stored record is already finished; say whether it was stored."""
        finished = json.dumps(sorted(FINISHED))
        stored = self._call(
            lambda: self._save_unless_finished(
                keys=[KEY_PREFIX + record.id], args=[record.to_json(), self._ttl_s, finished]
            )
        )
        return bool(stored)

    def load(self, job_id: str) -> JobRecord | None:
        raw = self._call(lambda: self._client.get(KEY_PREFIX + job_id))
        return None if raw is None else JobRecord.from_json(raw)

    def delete(self, job_id: str) -> None:
        self._call(lambda: self._client.delete(KEY_PREFIX + job_id))

    def _call(self, operation: Callable[[], T]) -> T:
        return backend_call(operation)


def backend_call(operation: Callable[[], T]) -> T:
    """Run a Redis operation of the job store; Redis's failure is the job backend's (a 503)."""
    try:
        return operation()
    except redis.RedisError as exc:
        raise JobBackendUnavailable(f"the job store (Redis) is unavailable: {_reason(exc)}") from None


def _reason(exc: Any) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
