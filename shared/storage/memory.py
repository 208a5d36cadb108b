"""In-process caches: a thread-safe LRU, a cache that keeps nothing, and "compute what is missing"."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from shared import metrics

T = TypeVar("T")


class Cache(Protocol[T]):
    def get(self, key: str) -> T | None: ...

    def put(self, key: str, value: T) -> None: ...


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
    cache: Cache[T],
    keys: Sequence[str],
    compute: Callable[[list[int]], list[T]],
    name: str = "cache",
    keep: Callable[[T], bool] | None = None,
) -> list[T]:
    """Values for `keys`: cached ones from `cache`; the missing ones computed together by
    `compute(indexes)` (in key order) and stored, those `keep` accepts (default: all). `name`
    labels the hit and miss counts."""
    found = [cache.get(key) for key in keys]
    missing = [i for i, item in enumerate(found) if item is None]
    if not isinstance(cache, NoCache):
        metrics.CACHE.labels(cache=name, result="hit").inc(len(keys) - len(missing))
        metrics.CACHE.labels(cache=name, result="miss").inc(len(missing))
    if missing:
        for i, value in zip(missing, compute(missing), strict=True):
            if keep is None or keep(value):
                cache.put(keys[i], value)
            found[i] = value
    return [item for item in found if item is not None]
