"""When a call is tried again: the bounded, backed-off retry policy and the server's Retry-After.

Retried answers: 503 (loading, job backend away) and 429 (a limit), never a 503
`explanation_timeout` (the same work would run into the same deadline); a request that is not
replayable only after a 429, the one answer that surely did nothing (see `Transport`). A connection
failure is retried when the request never reached the server whole, and, when it did, only for a
replayable request. A timeout is never retried: the caller chose how long to wait.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

RETRIED_STATUSES = frozenset({429, 503})
NOT_RETRIED_CODES = frozenset({"explanation_timeout"})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a call is retried."""

    attempts: int = 5  # tries in all, the first included; 1 turns retries off
    backoff: float = 0.5  # seconds before the second try when the server names none; doubles each try
    max_backoff: float = 8.0
    # A Retry-After longer than this is not waited for: the error is raised at once, with its
    # retry_after, so that the caller decides (a notebook should not hang for an hour unasked).
    max_retry_after: float = 120.0

    def backoff_delay(self, retry: int) -> float:
        """Seconds before retry number `retry` (0 for the first): exponential, capped, with jitter so
        that many clients turned away at once do not come back at once."""
        ceiling = min(self.max_backoff, self.backoff * 2**retry)
        return ceiling / 2 + random.uniform(0, ceiling / 2)


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """The Retry-After header in seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3); None when
    absent or unreadable, 0 for a date already past."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT; parsedate leaves "-0000" naive
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
