"""Finished explanations, cached so identical requests are not computed twice.

The key covers everything that changes the numbers: the model's identity, the text, every explanation
option and the explainer's batch size. In-process LRU in single-process mode; Redis (shared by the
API and all workers) when Redis is configured. A cache failure never fails a request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from typing import Any, Protocol

from shared.results import Explanation
from shared.schemas import ExplainOptions

log = logging.getLogger(__name__)
REDIS_PREFIX = "clarion:explanation:"


def explanation_key(model_fingerprint: str, text: str, options: ExplainOptions, batch_size: int) -> str:
    material = json.dumps([model_fingerprint, text, list(options.cache_key()), batch_size], default=str)
    return hashlib.sha256(material.encode()).hexdigest()


class ExplanationCache(Protocol):
    def get(self, key: str) -> Explanation | None: ...

    def put(self, key: str, explanation: Explanation) -> None: ...


class NoCache:
    def get(self, key: str) -> Explanation | None:
        return None

    def put(self, key: str, explanation: Explanation) -> None:
        return None


class MemoryCache:
    """A thread-safe LRU of at most `capacity` explanations."""

    def __init__(self, capacity: int) -> None:
        self._items: OrderedDict[str, Explanation] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def get(self, key: str) -> Explanation | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: str, explanation: Explanation) -> None:
        with self._lock:
            self._items[key] = explanation
            self._items.move_to_end(key)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)


class RedisCache:
    """Explanations as JSON in Redis, expiring with job results."""

    def __init__(self, client: Any, ttl_s: int) -> None:
        self._client = client
        self._ttl_s = ttl_s

    def get(self, key: str) -> Explanation | None:
        import redis

        try:
            raw = self._client.get(REDIS_PREFIX + key)
        except redis.RedisError as exc:
            log.warning("explanation cache unavailable: %s", exc)
            return None
        return None if raw is None else Explanation.from_dict(json.loads(raw))

    def put(self, key: str, explanation: Explanation) -> None:
        import redis

        try:
            self._client.set(REDIS_PREFIX + key, json.dumps(explanation.to_dict()), ex=self._ttl_s)
        except redis.RedisError as exc:
            log.warning("explanation cache unavailable: %s", exc)
