"""The engine: the one loop per process that runs forward passes, for every caller.

Callers (the classifier, each text of each explanation) submit *work items*: token-id rows with a
priority, a precision and a `Ticket` (deadline and cancellation). They wait on a future for the
logits. One thread owns the model and builds each pass from what is waiting:

- classification rows go first; an explanation round joins the next pass after it is submitted, so
  rounds of every request and every text in flight share passes (continuous batching); among
  explanations the earliest deadline goes first, so an overloaded engine finishes the oldest
  requests in time rather than making every request late;
- a pass is bounded by rows and by tokens (rows x padded width), sized to the device, so that a
  classification that arrives waits at most for the pass in flight;
- explanation rows only share a pass with rows of the same length (no padding: a text's masked
  variants all have the text's length, and padding would change the numbers in the last bits); so
  do classification rows of a model that is never padded (a decoder head without a pad id:
  shared/runtime/padding.py);
- at every pass boundary, items whose ticket expired or was cancelled are dropped and their waiters
  told at once. No pass is interrupted: work stops within one pass.

Each row's logits are computed on their own, so what else is in a pass changes the wall time and at
most the last bits: kernels round differently with the number of rows (about 1e-6 in a logit on
CPU), a classification row is padded to its pass's longest, and a fast GPU pass pads to its shape
bucket (model.py).
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared import metrics
from shared.errors import ClarionError, EngineStopped, ExplanationTimeout, JobCancelled
from shared.kinds import Precision
from shared.runtime.model import TextModel

log = logging.getLogger(__name__)

CLASSIFY, EXPLAIN = 0, 1  # priorities: lower goes first
PRIORITY_NAMES = {CLASSIFY: "classify", EXPLAIN: "explain"}


@dataclass(frozen=True)
class PassLimits:
    """How big one forward pass may be on this device."""

    rows: int
    tokens: int  # rows x padded width
    # Tokens of rows an explanation may run beyond its max_evals budget, per text, when it computes
    # masks ahead of the recursion. On a CPU every row costs its share: none. On a GPU a short text's
    # rounds are bound by latency, and a pass of this many tokens costs about what a tiny one does,
    # so computing ahead past the budget saves rounds for almost nothing (`bench explain` on a GPU).
    spare_tokens: int = 0


# Measured on minilm-sst2, 2 CPU threads (`bench passes`): a pass of 768 tokens takes 130-175 ms
# whatever the row length (32 rows of 24 tokens ... 2 rows of 270), and its per-row cost is within
# ~5 % of the best any pass size reaches; bigger passes gain nothing per row but make a waiting
# classification wait longer.
CPU_PASS = PassLimits(rows=32, tokens=768)
GPU_PASS = PassLimits(rows=256, tokens=65536, spare_tokens=16384)


def pass_limits_for(
    model: TextModel, rows: int | None = None, tokens: int | None = None, spare_tokens: int | None = None
) -> PassLimits:
    """The device's pass size, unless the operator set PASS_ROWS / PASS_TOKENS / PASS_SPARE_TOKENS."""
    default = GPU_PASS if model.device.type == "cuda" else CPU_PASS
    return PassLimits(
        rows=rows or default.rows,
        tokens=tokens or default.tokens,
        spare_tokens=default.spare_tokens if spare_tokens is None else spare_tokens,
    )


class Ticket:
    """A request's (or job's) deadline and cancellation, shared by all of its work items.

    `timeout_message` is what the caller is told when the deadline passes. `cancelled_by` is an
    optional check the *waiting* thread runs every `poll_s` (a job reads its stored state in Redis): the
    engine thread itself never blocks on it. `progress` hears (done, total) from the work as it
    advances, on the waiting thread too (a job stores it for its pollers).
    """

    def __init__(
        self,
        deadline: float | None = None,
        timeout_message: str = "the work did not finish before its deadline",
        cancelled_by: Callable[[], bool] | None = None,
        poll_s: float = 0.5,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.started = time.monotonic()  # what a time_budget counts from
        self.deadline = deadline
        self.timeout_message = timeout_message
        self._cancelled_by = cancelled_by
        self._poll_s = poll_s
        self._next_poll = 0.0
        self._error: ClarionError | None = None
        self._progress = progress
        self.progress: tuple[int, int] | None = None  # the latest (done, total) reported

    def report(self, done: int, total: int) -> None:
        """The work's progress: `done` of at most `total` units (the listener throttles itself)."""
        self.progress = (done, total)
        if self._progress is not None:
            self._progress(done, total)

    @classmethod
    def within(cls, seconds: float, timeout_message: str, **kwargs: Any) -> Ticket:
        return cls(time.monotonic() + seconds, timeout_message, **kwargs)

    def cancel(self, error: ClarionError | None = None) -> None:
        if self._error is None:
            self._error = error or JobCancelled("the explanation was cancelled")

    def error(self, now: float | None = None) -> ClarionError | None:
        """Why this ticket's work must stop now, or None. Cheap: the engine calls it every pass."""
        if self._error is not None:
            return self._error
        if self.deadline is not None and (now or time.monotonic()) >= self.deadline:
            return ExplanationTimeout(self.timeout_message)
        return None

    def check(self) -> None:
        """Raise if the work must stop (polling `cancelled_by` at most every `poll_s`)."""
        if self._cancelled_by is not None and self._error is None:
            now = time.monotonic()
            if now >= self._next_poll:
                self._next_poll = now + self._poll_s
                if self._cancelled_by():
                    self.cancel()
        error = self.error()
        if error is not None:
            raise error

    def wait_s(self, longest: float) -> float:
        """How long a waiter may block before it must look at this ticket again."""
        limit = longest if self._cancelled_by is None else min(longest, self._poll_s)
        if self.deadline is None:
            return limit
        return max(0.0, min(limit, self.deadline - time.monotonic()))


@dataclass(eq=False)
class _Item:
    """Rows submitted together; may be spread over several passes."""

    rows: Sequence[np.ndarray]
    priority: int
    precision: Precision
    ticket: Ticket
    seq: int
    width: int  # rows of a same_length item all have this length; other classification rows vary
    same_length: bool
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None  # when its first row entered a pass
    next_row: int = 0
    done_rows: int = 0
    logits: np.ndarray | None = None

    @property
    def pending(self) -> int:
        return len(self.rows) - self.next_row


@dataclass
class EngineStats:
    """Counters since start; `snapshot()` is what the log reads."""

    passes: int = 0
    rows: int = 0
    tokens: int = 0  # real tokens run
    padding: int = 0  # padded positions run (wasted work)
    pass_seconds: float = 0.0
    items: dict[str, int] = field(default_factory=lambda: {"classify": 0, "explain": 0})
    queue_wait_s: dict[str, float] = field(default_factory=lambda: {"classify": 0.0, "explain": 0.0})
    queue_wait_max_s: dict[str, float] = field(default_factory=lambda: {"classify": 0.0, "explain": 0.0})
    dropped_items: int = 0
    dropped_rows: int = 0
    failed_passes: int = 0

    # Each event updates the counters above and the process's Prometheus metrics (shared/metrics.py).

    def waited(self, name: str, wait: float) -> None:
        self.items[name] += 1
        self.queue_wait_s[name] += wait
        self.queue_wait_max_s[name] = max(self.queue_wait_max_s[name], wait)
        metrics.QUEUE_WAIT.labels(priority=name).observe(wait)

    def dropped(self, rows: int) -> None:
        self.dropped_items += 1
        self.dropped_rows += rows
        metrics.DROPPED_ITEMS.inc()
        metrics.DROPPED_ROWS.inc(rows)

    def passed(self, name: str, rows: int, real: int, width: int, seconds: float) -> None:
        self.passes += 1
        self.rows += rows
        self.tokens += real
        self.padding += width * rows - real
        self.pass_seconds += seconds
        metrics.PASSES.labels(priority=name).inc()
        metrics.ROWS.inc(rows)
        metrics.TOKENS.inc(real)
        metrics.PADDING.inc(width * rows - real)

    def snapshot(self) -> dict[str, Any]:
        out = {
            "passes": self.passes,
            "rows": self.rows,
            "tokens": self.tokens,
            "padding": self.padding,
            "padding_ratio": self.padding / max(1, self.tokens + self.padding),
            "mean_pass_ms": 1000 * self.pass_seconds / max(1, self.passes),
            "dropped_items": self.dropped_items,
            "dropped_rows": self.dropped_rows,
            "failed_passes": self.failed_passes,
        }
        for name, count in self.items.items():
            out[f"{name}_items"] = count
            out[f"{name}_mean_wait_ms"] = 1000 * self.queue_wait_s[name] / max(1, count)
            out[f"{name}_max_wait_ms"] = 1000 * self.queue_wait_max_s[name]
        return out


class Engine:
    """Runs every forward pass of this process; see the module docstring."""

    def __init__(
        self,
        model: TextModel,
        limits: PassLimits,
        merge_classifications: bool = True,
        log_every_s: float = 60.0,
        observe_pass: Callable[[int, list[tuple[int, int]]], None] | None = None,
    ) -> None:
        """`merge_classifications=False` gives each classification request passes of its own (only
        to measure what cross-request batching buys). `observe_pass(priority, [(item seq, rows)])`
        is called before each pass (tests use it to see what shared a pass)."""
        self.model = model
        self.limits = limits
        self.stats = EngineStats()
        self._merge_classifications = merge_classifications
        self._observe_pass = observe_pass
        self._log_every_s = log_every_s
        self._next_log = time.monotonic() + log_every_s
        self._waiting: list[_Item] = []  # in _queue_order
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="clarion-engine", daemon=True)
        self._thread.start()

    # ---- callers ----------------------------------------------------------------------------

    def submit(
        self,
        rows: Sequence[np.ndarray],
        priority: int,
        precision: Precision = "exact",
        ticket: Ticket | None = None,
    ) -> Future:
        """Queue rows; the future gets their raw logits (rows x labels, float32) in order."""
        future: Future = Future()
        ticket = ticket or Ticket()
        if not rows:
            future.set_result(np.empty((0, len(self.model.labels)), dtype=np.float32))
            return future
        widths = {len(r) for r in rows}
        # (A remote model's rows stand for texts: no padding, so any rows may share a call.)
        same_length = self.model.runs_locally and (priority != CLASSIFY or not self.model.pads)
        if same_length and len(widths) > 1:
            # Explanation rows share a pass only with rows of their length (no padding), so rows of
            # several lengths (masking "text" re-tokenizes; a batch of texts to classify where the
            # model is never padded) go in as one item per length.
            return self._submit_by_width(rows, priority, precision, ticket)
        item = _Item(
            rows=rows,
            priority=priority,
            precision=precision,
            ticket=ticket,
            seq=0,
            width=max(widths),
            same_length=same_length,
            future=future,
        )
        with self._cond:
            if self._stopped:
                raise EngineStopped("the engine has stopped")
            item.seq = next(self._seq)
            self._waiting.append(item)
            self._waiting.sort(key=_queue_order)
            self._cond.notify()
        return future

    def _submit_by_width(
        self, rows: Sequence[np.ndarray], priority: int, precision: Precision, ticket: Ticket
    ) -> Future:
        """Submit rows of several lengths as one item per length; one future gets all their logits."""
        positions: dict[int, list[int]] = {}
        for i, row in enumerate(rows):
            positions.setdefault(len(row), []).append(i)
        parts = [
            (where, self.submit([rows[i] for i in where], priority, precision, ticket))
            for where in positions.values()
        ]
        combined: Future = Future()
        logits = np.empty((len(rows), len(self.model.labels)), dtype=np.float32)
        remaining = [len(parts)]
        lock = threading.Lock()

        def part_done(where: list[int], part: Future) -> None:
            with lock:
                if combined.done():
                    return
                if part.exception() is not None:
                    combined.set_exception(part.exception())
                    return
                logits[where] = part.result()
                remaining[0] -= 1
                if remaining[0] == 0:
                    combined.set_result(logits)

        for where, part in parts:
            part.add_done_callback(lambda f, where=where: part_done(where, f))
        return combined

    def run(
        self,
        rows: Sequence[np.ndarray],
        priority: int,
        precision: Precision = "exact",
        ticket: Ticket | None = None,
    ) -> np.ndarray:
        """Submit and wait, honouring the ticket: raise its error within one pass of it firing."""
        ticket = ticket or Ticket()
        future = self.submit(rows, priority, precision, ticket)
        return wait_for(future, ticket)

    def cancel(self, ticket: Ticket, error: ClarionError | None = None) -> None:
        """Stop a ticket's work: its queued rows are dropped at the next pass boundary."""
        ticket.cancel(error)
        with self._cond:
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            for item in self._waiting:
                item.future.set_exception(EngineStopped("the engine has stopped"))
            self._waiting.clear()
            self._cond.notify()
        self._thread.join(timeout=30)

    # ---- the loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and not self._waiting:
                    self._cond.wait()
                if self._stopped:
                    return
                self._drop_expired()
                batch = self._next_pass()
            if batch:
                self._run_pass(batch)
            self._maybe_log()

    def _drop_expired(self) -> None:
        now = time.monotonic()
        keep = []
        for item in self._waiting:
            error = item.ticket.error(now)
            if error is None:
                keep.append(item)
                continue
            self.stats.dropped(item.pending)
            if not item.future.done():
                item.future.set_exception(error)
        self._waiting = keep

    def _next_pass(self) -> list[tuple[_Item, int, int]]:
        """Pick rows for one pass: (item, first row, row count) in queue order."""
        waiting = [i for i in self._waiting if i.pending]
        if not waiting:
            return []
        head = waiting[0]
        limits = self.limits
        chosen: list[tuple[_Item, int, int]] = []
        rows = width = 0
        full = False
        for item in waiting:
            if item.priority != head.priority or item.precision != head.precision:
                continue
            if head.same_length and item.width != head.width:
                continue
            if head.priority == CLASSIFY and not self._merge_classifications and item is not head:
                break
            take, start = 0, item.next_row
            for row in item.rows[start:]:
                new_width = max(width, len(row))
                if rows and (rows + 1 > limits.rows or (rows + 1) * new_width > limits.tokens):
                    full = True  # a single row longer than the token budget still runs, alone
                    break
                width = new_width
                rows += 1
                take += 1
            if take:
                chosen.append((item, start, take))
                item.next_row += take
            if full:
                break
        return chosen

    def _run_pass(self, batch: list[tuple[_Item, int, int]]) -> None:
        started = time.monotonic()
        priority = batch[0][0].priority
        name = PRIORITY_NAMES[priority]
        rows: list[np.ndarray] = []
        for item, start, count in batch:
            if item.started is None:
                item.started = started
                self.stats.waited(name, started - item.submitted)
            rows.extend(item.rows[start : start + count])
        if self._observe_pass is not None:
            self._observe_pass(priority, [(item.seq, count) for item, _, count in batch])
        try:
            with self.model.lock:
                logits = self.model.forward(rows, batch[0][0].precision)
        except Exception as exc:  # a broken pass fails its items; the engine keeps serving
            log.exception("forward pass failed")
            self.stats.failed_passes += 1
            with self._cond:
                for item, _, _ in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                    if item in self._waiting:
                        self._waiting.remove(item)
            return
        width = max(len(r) for r in rows)
        real = sum(len(r) for r in rows)
        self.stats.passed(name, len(rows), real, width, time.monotonic() - started)
        offset = 0
        with self._cond:
            for item, start, count in batch:
                if item.logits is None:
                    item.logits = np.empty((len(item.rows), logits.shape[1]), dtype=np.float32)
                item.logits[start : start + count] = logits[offset : offset + count]
                offset += count
                item.done_rows += count
                if item.done_rows == len(item.rows):
                    if item in self._waiting:
                        self._waiting.remove(item)
                    if not item.future.done():  # a dropped item's waiter was already told
                        item.future.set_result(item.logits)

    def _maybe_log(self) -> None:
        now = time.monotonic()
        if now < self._next_log:
            return
        self._next_log = now + self._log_every_s
        if self.stats.passes:
            log.info("engine: %s", " ".join(f"{k}={_short(v)}" for k, v in self.stats.snapshot().items()))


def _queue_order(item: _Item) -> tuple[int, float, int]:
    """Priority first; then the earliest deadline (so under overload the oldest requests finish in
    time instead of every request sharing the engine until all of them miss their deadlines);
    then first come, first served."""
    deadline = item.ticket.deadline if item.ticket.deadline is not None else math.inf
    return (item.priority, deadline, item.seq)


def wait_for(future: Future, ticket: Ticket, longest_s: float = 3600.0) -> Any:
    """The future's result, unless the ticket fires first: then its error, raised at once."""
    while True:
        ticket.check()
        try:
            return future.result(timeout=max(0.001, ticket.wait_s(longest_s)))
        except TimeoutError:
            continue


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
