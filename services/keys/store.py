"""All SQL (and the Redis write-back) of the keys service."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import asyncpg
import redis.asyncio as aioredis

from services.keys.domain import ApiKeyRecord, RootWrapped, StoredKek

_KEK_COLUMNS = "v.account_id, v.version, v.root_key_id, v.wrapped_kek"


def _kek(row: asyncpg.Record | None) -> StoredKek | None:
    if row is None:
        return None
    return StoredKek(row["account_id"], row["version"], RootWrapped(row["root_key_id"], bytes(row["wrapped_kek"])))


def _api_key(row: asyncpg.Record | None) -> ApiKeyRecord | None:
    if row is None:
        return None
    return ApiKeyRecord(
        key_id=row["key_id"],
        account_id=row["account_id"],
        user_id=row["user_id"],
        name=row["name"],
        test_mode=row["test_mode"],
        scopes=tuple(row["scopes"]),
        secret_hmac=bytes(row["secret_hmac"]),
        pepper_id=row["pepper_id"],
        create_time=row["create_time"],
        expire_time=row["expire_time"],
        revoke_time=row["revoke_time"],
        last_used_time=row["last_used_time"],
    )


class PgKeyStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    # -- account key-encryption keys --------------------------------------------------------------------

    async def current_kek(self, account_id: int) -> StoredKek | None:
        row = await self._pool.fetchrow(
            f"SELECT {_KEK_COLUMNS} FROM account_keys k"
            " JOIN account_kek_versions v ON v.account_id = k.account_id AND v.version = k.current_version"
            " WHERE k.account_id = $1",
            account_id,
        )
        return _kek(row)

    async def kek_version(self, account_id: int, version: int) -> StoredKek | None:
        row = await self._pool.fetchrow(
            f"SELECT {_KEK_COLUMNS} FROM account_kek_versions v WHERE v.account_id = $1 AND v.version = $2",
            account_id, version,
        )
        return _kek(row)

    async def create_first_kek(self, first: StoredKek) -> tuple[StoredKek, bool]:
        """Store `first` as the account's version-1 KEK unless another writer got there first.
        Returns the account's current KEK and whether it is the one given."""
        async with self._pool.acquire() as conn, conn.transaction():
            created = await conn.fetchval(
                "INSERT INTO account_keys (account_id, current_version) VALUES ($1, $2)"
                " ON CONFLICT (account_id) DO NOTHING RETURNING true",
                first.account_id, first.version,
            )
            if created:
                await conn.execute(
                    "INSERT INTO account_kek_versions (account_id, version, root_key_id, wrapped_kek)"
                    " VALUES ($1, $2, $3, $4)",
                    first.account_id, first.version, first.wrapped.key_id, first.wrapped.blob,
                )
                return first, True
            row = await conn.fetchrow(
                f"SELECT {_KEK_COLUMNS} FROM account_keys k"
                " JOIN account_kek_versions v ON v.account_id = k.account_id AND v.version = k.current_version"
                " WHERE k.account_id = $1",
                first.account_id,
            )
            current = _kek(row)
            assert current is not None
            return current, False

    # -- API keys -----------------------------------------------------------------------------------------

    async def insert_api_key(self, record: ApiKeyRecord, before_commit: Callable[[], Awaitable[None]]) -> None:
        """Insert `record`; `before_commit` runs inside the transaction (a failure there stores nothing)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO api_keys (key_id, account_id, user_id, name, test_mode, scopes, secret_hmac,"
                " pepper_id, create_time, expire_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                record.key_id, record.account_id, record.user_id, record.name, record.test_mode,
                list(record.scopes), record.secret_hmac, record.pepper_id, record.create_time, record.expire_time,
            )
            await before_commit()

    async def api_key(self, key_id: str) -> ApiKeyRecord | None:
        row = await self._pool.fetchrow(
            "SELECT key_id, account_id, user_id, name, test_mode, scopes, secret_hmac, pepper_id, create_time,"
            " expire_time, revoke_time, last_used_time FROM api_keys WHERE key_id = $1",
            key_id,
        )
        return _api_key(row)

    async def revoke_user_keys(self, account_id: int, user_id: int, keep_key_id: str, when: datetime) -> list[str]:
        """Revoke, as of `when`, every key of the user that is not already revoked by then (except
        `keep_key_id`). Returns the ids revoked by this call."""
        rows = await self._pool.fetch(
            "UPDATE api_keys SET revoke_time = $4"
            " WHERE account_id = $1 AND user_id = $2 AND key_id <> $3 AND (revoke_time IS NULL OR revoke_time > $4)"
            " RETURNING key_id",
            account_id, user_id, keep_key_id, when,
        )
        return sorted(r["key_id"] for r in rows)

    async def set_last_used(self, items: Sequence[tuple[str, datetime]]) -> int:
        """Move last_used_time forward (never back) for many keys in one statement."""
        if not items:
            return 0
        result = await self._pool.execute(
            "UPDATE api_keys a SET last_used_time = v.t"
            " FROM unnest($1::text[], $2::timestamptz[]) AS v(key_id, t)"
            " WHERE a.key_id = v.key_id AND (a.last_used_time IS NULL OR a.last_used_time < v.t)",
            [k for k, _ in items], [t for _, t in items],
        )
        return int(result.split()[-1])


class RedisLastUsed:
    """API-key last-used times in Redis, for a periodic batched write-back to PostgreSQL.

    `<prefix>apikey:lastused:<key_id>` holds the latest use (Unix seconds); `<prefix>apikey:lastused:pending`
    is the set of key ids not yet written back. SPOP hands each id to one flusher, so replicas share the work.
    """

    RETENTION_SECONDS = 7 * 24 * 3600

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self._redis = redis
        self._base = f"{prefix}apikey:lastused:"
        self._pending = f"{prefix}apikey:lastused:pending"

    async def touch(self, key_id: str, when: float | None = None) -> None:
        t = time.time() if when is None else when
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._base + key_id, f"{t:.3f}", ex=self.RETENTION_SECONDS)
            pipe.sadd(self._pending, key_id)
            await pipe.execute()

    async def take(self, limit: int) -> list[tuple[str, datetime]]:
        raw = await self._redis.spop(self._pending, limit)
        ids = [r.decode() if isinstance(r, bytes) else str(r) for r in (raw or [])]  # type: ignore[union-attr]
        if not ids:
            return []
        values = await self._redis.mget([self._base + k for k in ids])
        out = []
        for key_id, value in zip(ids, values, strict=True):
            if value is not None:
                out.append((key_id, datetime.fromtimestamp(float(value), UTC)))
        return out

    async def give_back(self, key_ids: Sequence[str]) -> None:
        if key_ids:
            await self._redis.sadd(self._pending, *key_ids)
