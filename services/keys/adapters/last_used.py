"""API-key last use buffered in Redis (the write-back to PostgreSQL runs periodically, see ApiKeyService)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime

import redis.asyncio as aioredis


class RedisLastUsed:
    """API-key last use (time and client address) in Redis, for a periodic batched write-back to PostgreSQL:
    no database write per request.

    `<prefix>apikey:lastused:<key_id>` holds ``<unix seconds>|<address>`` of the latest use;
    `<prefix>apikey:lastused:pending` is the set of key ids not yet written back. SPOP hands each id to one
    flusher, so replicas share the work.
    """

    RETENTION_SECONDS = 7 * 24 * 3600
    MAX_ADDRESS = 64

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self._redis = redis
        self._base = f"{prefix}apikey:lastused:"
        self._pending = f"{prefix}apikey:lastused:pending"

    async def touch(self, key_id: str, address: str = "", when: float | None = None) -> None:
        t = time.time() if when is None else when
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._base + key_id, f"{t:.3f}|{address[: self.MAX_ADDRESS]}", ex=self.RETENTION_SECONDS)
            pipe.sadd(self._pending, key_id)
            await pipe.execute()

    async def take(self, limit: int) -> list[tuple[str, datetime, str]]:
        raw = await self._redis.spop(self._pending, limit)
        ids = [r.decode() if isinstance(r, bytes) else str(r) for r in (raw or [])]  # type: ignore[union-attr]
        if not ids:
            return []
        values = await self._redis.mget([self._base + k for k in ids])
        out = []
        for key_id, value in zip(ids, values, strict=True):
            if value is None:
                continue
            text = value.decode() if isinstance(value, bytes) else str(value)
            stamp, _, address = text.partition("|")
            out.append((key_id, datetime.fromtimestamp(float(stamp), UTC), address))
        return out

    async def give_back(self, key_ids: Sequence[str]) -> None:
        if key_ids:
            await self._redis.sadd(self._pending, *key_ids)
