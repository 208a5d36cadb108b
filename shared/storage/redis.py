"""Redis connections that fail fast and reconnect by themselves."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def redis_client(url: str) -> redis.Redis:
    """A client that fails fast when Redis is down (a 503 now beats a hung request) and reconnects
    by itself on the next call once Redis is back."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=1.0,
        socket_timeout=5.0,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=15,
    )
