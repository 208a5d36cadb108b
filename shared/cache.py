"""Finished explanations and classifications, cached so identical requests are not computed twice.

The key covers everything that changes the numbers: the algorithm's version, the model's identity,
the text and every explanation option (SHAP's batch size among them). Explanations: in-process LRU
in single-process mode; Redis (shared by the API and all workers) when Redis is configured.
Classifications (cheap, small): an in-process LRU. A cache failure never fails a request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from shared import metrics
from shared.results import Explanation
from shared.schemas import ExplainOptions

log = logging.getLogger(__name__)
REDIS_PREFIX = "clarion:explanation:"
T = TypeVar("T")


def explanation_key(model_fingerprint: str, text: str, options: ExplainOptions) -> str:
    """Covers the algorithm's version, the model, the text and every option (SHAP's batch size
    included); not the pass size, which never changes a number."""
    from shared.explainer import ALGORITHM_VERSION

    material = json.dumps(
        [ALGORITHM_VERSION, model_fingerprint, text, list(options.cache_key())], default=str
    )
    return hashlib.sha256(material.encode()).hexdigest()


def classification_key(model_fingerprint: str, text: str, long_text: str = "truncate") -> str:
    material = [model_fingerprint, text] if long_text == "truncate" else [model_fingerprint, text, long_text]
    return hashlib.sha256(json.dumps(material).encode()).hexdigest()


class Cache(Protocol[T]):
    def get(self, key: str) -> T | None: ...

    def put(self, key: str, value: T) -> None: ...


ExplanationCache = Cache[Explanation]


class NoCache(Generic[T]):
    def get(self, key: str) -> T | None:
        return None

    def put(self, key: str, value: T) -> None:
        return None


class MemoryCache(Generic[T]):
    """A thread-safe LRU of at most `capacity` values."""

    def __init__(self, capacity: int) -> None:
        self._items: OrderedDict[str, T] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def get(self, key: str) -> T | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: str, value: T) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)

    def delete(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)


def through_cache(
    cache: Cache[T], keys: Sequence[str], compute: Callable[[list[int]], list[T]], name: str = "cache"
) -> list[T]:
    """Values for `keys`: cached ones from `cache`; the missing ones computed together by
    `compute(indexes)` (in key order) and stored. `name` labels the hit and miss counts."""
    found = [cache.get(key) for key in keys]
    missing = [i for i, item in enumerate(found) if item is None]
    if not isinstance(cache, NoCache):
        metrics.CACHE.labels(cache=name, result="hit").inc(len(keys) - len(missing))
        metrics.CACHE.labels(cache=name, result="miss").inc(len(missing))
    if missing:
        for i, value in zip(missing, compute(missing), strict=True):
            cache.put(keys[i], value)
            found[i] = value
    return [item for item in found if item is not None]


class RedisCache:
    """Explanations as JSON in Redis, expiring with job results.

    Each entry carries the algorithm's version (also in its key); an entry of another version, or
    one this version cannot decode, is a miss, never an error or a stale number."""

    def __init__(self, client: Any, ttl_s: int) -> None:
        self._client = client
        self._ttl_s = ttl_s

    def get(self, key: str) -> Explanation | None:
        import redis

        from shared.explainer import ALGORITHM_VERSION

        try:
            raw = self._client.get(REDIS_PREFIX + key)
        except redis.RedisError as exc:
            log.warning("explanation cache unavailable: %s", exc)
            return None
        if raw is None:
            return None
        try:
            entry = json.loads(raw)
            if entry.get("version") != ALGORITHM_VERSION:
                return None
            return Explanation.model_validate(entry["explanation"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring an undecodable explanation cache entry: %s", exc)
            return None

    def put(self, key: str, explanation: Explanation) -> None:
        import redis

        from shared.explainer import ALGORITHM_VERSION

        entry = {"version": ALGORITHM_VERSION, "explanation": explanation.model_dump(mode="json")}
        try:
            self._client.set(REDIS_PREFIX + key, json.dumps(entry), ex=self._ttl_s)
        except redis.RedisError as exc:
            log.warning("explanation cache unavailable: %s", exc)
