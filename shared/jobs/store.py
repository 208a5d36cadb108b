"""The one Redis store of jobs and analyses, each an entry (a StoredJob or StoredAnalysis), written
only through the state machine's checked moves (state.py), the ledger of what is not yet published,
idempotency keys, and an analysis's parts (chunks, outputs, its document)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import redis

from shared.errors import IdempotencyConflict, JobBackendUnavailable, TooBusy
from shared.jobs.job import Idempotency, Stored, StoredJob, replayed
from shared.jobs.state import MOVES, REMOVABLE
from shared.kinds import FINISHED, QUEUED
from shared.settings import Settings
from shared.storage.redis import redis_client

T = TypeVar("T")
R = TypeVar("R", bound=Stored)
KEY_PREFIX = "clarion:job:"
ANALYSIS_PREFIX = "clarion:analysis:"
IDEMPOTENCY_PREFIX = "clarion:idempotency:"
# How often a move that lost a race to another writer reads the entry again before giving up.
MOVE_TRIES = 50

# Create an entry, noted unpublished, with its idempotency key, all at once; or say which entry
# already holds the key, or that the limit on active entries is reached. The client library sends a
# command again when its reply was lost, so a script that finds its own work done says so (an id is
# new: an entry under it can only be this create's own).
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {'created', ''} end
if KEYS[3] ~= '' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return {'existing', existing} end
end
if KEYS[4] ~= '' then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
    if redis.call('EXISTS', ARGV[6] .. id) == 0 then redis.call('ZREM', KEYS[4], id) end
  end
  if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[5]) then return {'busy', ''} end
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[3])
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
if KEYS[5] ~= '' then redis.call('ZADD', KEYS[5], ARGV[4], ARGV[3]) end
if KEYS[3] ~= '' then redis.call('SET', KEYS[3], ARGV[7], 'EX', ARGV[2]) end
return {'created', ''}
"""
# A checked move: 1 done, 0 not allowed from the stored state (or no entry), -1 the entry changed
# since the writer read it (read it again). The stored entry being this very one means it is done
# (a command sent again after its reply was lost).
_MOVE = """
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
if current == ARGV[1] then return 1 end
local ok, entry = pcall(cjson.decode, current)
if not ok or type(entry) ~= 'table' then return 0 end
local allowed = false
for _, state in ipairs(cjson.decode(ARGV[4])) do
  if entry['status'] == state then allowed = true end
end
if not allowed then return 0 end
if (tonumber(entry['revision']) or 0) ~= tonumber(ARGV[3]) then return -1 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if KEYS[2] ~= '' then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
if KEYS[3] ~= '' and ARGV[5] == '1' then redis.call('ZREM', KEYS[3], ARGV[6]) end
if KEYS[4] ~= '' then redis.call('ZREM', KEYS[4], ARGV[6]) end
return 1
"""
# Remove a finished entry with its idempotency key and notes: 1 removed, 0 not finished, -1 gone.
_REMOVE = """
local current = redis.call('GET', KEYS[1])
if not current then return -1 end
local ok, entry = pcall(cjson.decode, current)
if ok and type(entry) == 'table' then
  local finished = false
  for _, state in ipairs(cjson.decode(ARGV[1])) do
    if entry['status'] == state then finished = true end
  end
  if not finished then return 0 end
end
redis.call('DEL', KEYS[1])
if KEYS[2] ~= '' then redis.call('DEL', KEYS[2]) end
redis.call('ZREM', KEYS[3], ARGV[2])
if KEYS[4] ~= '' then redis.call('ZREM', KEYS[4], ARGV[2]) end
if KEYS[5] ~= '' then redis.call('ZREM', KEYS[5], ARGV[2]) end
return 1
"""
# Claim the ids noted over a grace ago: each one's note moves to now, so no other sweeper takes it
# within the grace, and it stays noted until its publish is marked done. A sweeper that fails or
# dies leaves it to the next sweep: nothing is taken out of the ledger before it is published.
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], 0, ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
"""


@dataclass(frozen=True)
class Kind(Generic[R]):
    """What one store holds: jobs or analyses."""

    name: str
    prefix: str
    unpublished: str  # the ledger: ids recorded and not yet known to be published, by time noted
    entry: type[R]  # StoredJob or StoredAnalysis
    active: str | None = None  # ids queued or running, when their number is limited
    # ids recorded whose tasks the broker could still lose, by when: a job's until it starts, an
    # analysis's until it finishes (its chunks start one by one)
    waiting: str | None = None
    waits_until_finished: bool = False


class Moved:
    """Outcomes of one compare-and-set."""

    DONE, REFUSED, STALE = 1, 0, -1


class Store(Generic[R]):
    """Entries of one kind as JSON under `<prefix><id>`, expiring `ttl_s` after their last write."""

    def __init__(self, client: redis.Redis, kind: Kind[R], ttl_s: int, max_active: int | None = None) -> None:
        self._client = client
        self.kind = kind
        self._ttl_s = ttl_s
        self._max_active = max_active
        self._create = client.register_script(_CREATE)
        self._move = client.register_script(_MOVE)
        self._remove = client.register_script(_REMOVE)
        self._claim = client.register_script(_CLAIM)

    # ---- entries ---------------------------------------------------------------------------------

    def create(self, entry: R, idempotency: Idempotency | None = None) -> tuple[R, bool]:
        """Record a new one, noted unpublished, under its idempotency key when it has one; with
        whether it was made before. The same key with the same request gives the entry it made
        first (True); with another request, a 422. With a limit on active entries, one more is a 429."""
        key_name = self.idempotency_key(idempotency)
        entry.idempotency_key = key_name  # type: ignore[attr-defined]
        claim = json.dumps({"id": entry.id, "request": idempotency.request}) if idempotency else ""
        keys = [
            self._key(entry.id),
            self.kind.unpublished,
            key_name or "",
            self._active_key,
            self._waiting_key,
        ]
        args = [entry.to_json(), self._ttl_s, entry.id, time.time(), self._max_active or 0,
                self.kind.prefix, claim]  # fmt: skip
        outcome, held = backend_call(lambda: self._create(keys=keys, args=args))
        outcome = outcome.decode() if isinstance(outcome, bytes) else outcome
        if outcome == "busy":
            raise TooBusy(
                f"{self._max_active} {self.kind.name}s are queued or running already (ANALYSIS_MAX_RUNNING); "
                "try again once one finishes"
            )
        if outcome == "existing":
            return self._replayed(json.loads(held), idempotency), True
        return entry, False

    def find(self, idempotency: Idempotency | None) -> R | None:
        """The entry an idempotency key already made (None: the key is new)."""
        key_name = self.idempotency_key(idempotency)
        if key_name is None:
            return None
        held = backend_call(lambda: self._client.get(key_name))
        return None if held is None else self._replayed(json.loads(held), idempotency)

    def _replayed(self, held: dict[str, Any], idempotency: Idempotency | None) -> R:
        assert idempotency is not None
        entry = replayed(held, idempotency, self.load)
        if entry is None:  # removed (DELETE) moments ago, with its key
            raise IdempotencyConflict(
                f"the {self.kind.name} made with Idempotency-Key {idempotency.key!r} was removed; "
                "a new request needs a new key"
            )
        return entry

    def idempotency_key(self, idempotency: Idempotency | None) -> str | None:
        if idempotency is None:
            return None
        return f"{IDEMPOTENCY_PREFIX}{self.kind.name}:{idempotency.key_name}"

    def load(self, entry_id: str) -> R | None:
        raw = backend_call(lambda: self._client.get(self._key(entry_id)))
        return None if raw is None else self.kind.entry.from_json(raw)

    def move(self, entry: R, target: str) -> int:
        """One compare-and-set: `entry` (as read, then changed) becomes the stored one in state
        `target`, if the stored one is still the revision it was read at and may move there."""
        expected = entry.revision  # type: ignore[attr-defined]
        entry.status, entry.revision = target, expected + 1  # type: ignore[attr-defined]
        leaves = target in FINISHED if self.kind.waits_until_finished else target != QUEUED
        waiting = self._waiting_key if leaves else ""
        keys = [
            self._key(entry.id),
            getattr(entry, "idempotency_key", None) or "",
            self._active_key,
            waiting,
        ]  # type: ignore[attr-defined]
        args = [entry.to_json(), self._ttl_s, expected, json.dumps(sorted(MOVES[target])),
                "1" if target in FINISHED else "0", entry.id]  # type: ignore[attr-defined]  # fmt: skip
        outcome = int(backend_call(lambda: self._move(keys=keys, args=args)))
        if outcome != Moved.DONE:
            entry.revision = expected  # type: ignore[attr-defined]
        return outcome

    def update(self, entry_id: str, target: str, change: Callable[[R], None] | None = None) -> R | None:
        """Read, change and move to `target`, reading again while other writers win the race; the
        entry as stored, or None when the move is not allowed from its state (or it is gone)."""
        for _ in range(MOVE_TRIES):
            entry = self.load(entry_id)
            if entry is None or entry.status not in MOVES[target]:  # type: ignore[attr-defined]
                return None
            if change is not None:
                change(entry)
            outcome = self.move(entry, target)
            if outcome == Moved.DONE:
                return entry
            if outcome == Moved.REFUSED:
                return None
        raise JobBackendUnavailable(f"{self.kind.name} {entry_id}: too many concurrent writers")

    def remove(self, entry_id: str, parts: list[str] = ()) -> bool:  # type: ignore[assignment]
        """Delete a finished entry with its idempotency key and its parts; False when not finished.
        An entry already gone counts as removed."""
        entry = self.load(entry_id)
        key_name = getattr(entry, "idempotency_key", None) if entry else None
        keys = [
            self._key(entry_id),
            key_name or "",
            self.kind.unpublished,
            self._active_key,
            self._waiting_key,
        ]
        args = [json.dumps(sorted(REMOVABLE)), entry_id]
        outcome = int(backend_call(lambda: self._remove(keys=keys, args=args)))
        if outcome == 0:
            return False
        self.drop(entry_id, parts)
        return True

    # ---- the ledger of unpublished entries -------------------------------------------------------

    def claim_unpublished(self, older_than_s: float, limit: int = 100) -> list[str]:
        """Ids noted over `older_than_s` ago and not marked published since: their publisher died or
        failed. Each stays noted (its note moved to now) until `mark_published`."""
        now = time.time()
        args = [now - older_than_s, now, limit]
        ids = backend_call(lambda: self._claim(keys=[self.kind.unpublished], args=args))
        return [raw.decode() if isinstance(raw, bytes) else str(raw) for raw in ids]

    def mark_published(self, entry_id: str) -> None:
        backend_call(lambda: self._client.zrem(self.kind.unpublished, entry_id))

    def claim_waiting(self, older_than_s: float, limit: int = 100) -> list[str]:
        """Ids still waiting (see Kind.waiting) over `older_than_s` after they were recorded (or last
        claimed): each one's note moves to now, so one sweeper looks at it per grace (kinds that
        keep no such list: [])."""
        if not self.kind.waiting:
            return []
        now = time.time()
        args = [now - older_than_s, now, limit]
        ids = backend_call(lambda: self._claim(keys=[self.kind.waiting], args=args))
        return [raw.decode() if isinstance(raw, bytes) else str(raw) for raw in ids]

    # ---- an analysis's parts ---------------------------------------------------------------------

    def put(self, entry_id: str, name: str, data: bytes) -> None:
        backend_call(lambda: self._client.set(self._part(entry_id, name), data, ex=self._ttl_s))

    def get(self, entry_id: str, name: str) -> bytes | None:
        return backend_call(lambda: self._client.get(self._part(entry_id, name)))

    def chunk_done(self, entry_id: str, index: int, texts: int) -> tuple[int, int]:
        """Count a chunk as done (once, however often it is told); (chunks done, texts done)."""
        key = self._part(entry_id, "done")

        def mark() -> tuple[int, int]:
            with self._client.pipeline(transaction=True) as pipe:
                pipe.hsetnx(key, str(index), texts)
                pipe.expire(key, self._ttl_s)
                pipe.hvals(key)
                _, _, counts = pipe.execute()
            return len(counts), sum(int(c) for c in counts)

        return backend_call(mark)

    def chunks_done(self, entry_id: str) -> set[int]:
        """The chunks counted done so far."""
        return {int(i) for i in backend_call(lambda: self._client.hkeys(self._part(entry_id, "done")))}

    def drop(self, entry_id: str, parts: list[str]) -> None:
        """Delete parts once nothing reads them again."""
        if parts:
            backend_call(lambda: self._client.delete(*(self._part(entry_id, name) for name in parts)))

    def _key(self, entry_id: str) -> str:
        return self.kind.prefix + entry_id

    def _part(self, entry_id: str, name: str) -> str:
        return f"{self.kind.prefix}{entry_id}:{name}"

    @property
    def _waiting_key(self) -> str:
        return self.kind.waiting or ""

    @property
    def _active_key(self) -> str:
        return self.kind.active if self.kind.active and self._max_active else ""


JOBS = Kind("job", KEY_PREFIX, "clarion:unpublished", StoredJob, waiting="clarion:jobs:waiting")


def job_store_for(settings: Settings) -> Store[StoredJob]:
    assert settings.redis_store_url is not None, "validated by Settings"
    return Store(redis_client(settings.redis_store_url), JOBS, settings.job_result_ttl_s)


def backend_call(operation: Callable[[], T]) -> T:
    """Run a Redis operation of the store; Redis's failure is the job backend's (a 503)."""
    try:
        return operation()
    except redis.RedisError as exc:
        raise JobBackendUnavailable(f"the job store (Redis) is unavailable: {_reason(exc)}") from None


def _reason(exc: Any) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
