"""Redis client with bounded calls.

redis-py retries by default and a frozen server can hold a call for many seconds despite
`socket_timeout`; every client here has explicit timeouts and a single bounded retry, and callers on
hot paths wrap calls in `asyncio.timeout`.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff


def make_redis(url: str, *, timeout: float = 2.0) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=1),
        health_check_interval=30,
        decode_responses=False,
    )
