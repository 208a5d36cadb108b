"""Micro-batching: concurrent classification requests in one process share forward passes.

Request threads tokenize their own texts and hand them to one batching thread, which runs whatever
has arrived as one padded forward pass. It never waits when a request is alone (no latency added at
concurrency 1); while a pass runs, newcomers queue up and go together in the next one. When more
than one request is already waiting, it waits up to `window_s` more for others, up to `max_rows`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from shared.model import EncodedText
from shared.results import Classification

RunBatch = Callable[[Sequence[EncodedText]], list[Classification]]


@dataclass
class _Request:
    encoded: Sequence[EncodedText]
    future: Future


class MicroBatcher:
    def __init__(self, run_batch: RunBatch, max_rows: int, window_s: float) -> None:
        self._run_batch = run_batch
        self._max_rows = max_rows
        self._window_s = window_s
        self._queue: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="clarion-micro-batcher", daemon=True)
        self._thread.start()

    def classify(self, encoded: Sequence[EncodedText]) -> list[Classification]:
        """Blocks until this request's rows went through a forward pass; returns its results."""
        request = _Request(encoded, Future())
        self._queue.put(request)
        return request.future.result()

    def _gather(self) -> list[_Request]:
        batch = [self._queue.get()]
        rows = len(batch[0].encoded)
        deadline = None
        while rows < self._max_rows:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                if len(batch) == 1 or self._window_s <= 0:
                    break  # alone: go now
                deadline = deadline or time.monotonic() + self._window_s
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            batch.append(item)
            rows += len(item.encoded)
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._gather()
            encoded = [e for request in batch for e in request.encoded]
            try:
                results = self._run_batch(encoded)
            except BaseException as exc:  # hand the error to every waiting request, keep serving
                for request in batch:
                    request.future.set_exception(exc)
                continue
            start = 0
            for request in batch:
                request.future.set_result(results[start : start + len(request.encoded)])
                start += len(request.encoded)
