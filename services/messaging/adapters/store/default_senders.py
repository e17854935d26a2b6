"""Default senders (issue 21): one row per account, user (0: all), country and product, its strategies sealed.
Every change runs its `before_commit` (the audit event) inside its transaction."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import asyncpg

from services.messaging.domain.default_senders import StoredDefault

_COLUMNS = "id, account_id, user_id, subaccount_id, country, product, strategies_ct, create_time, update_time"


def _row(r: asyncpg.Record) -> StoredDefault:
    return StoredDefault(id=str(r["id"]), account_id=r["account_id"], user_id=r["user_id"],
                         subaccount_id=r["subaccount_id"], country=r["country"], product=r["product"],
                         strategies_ct=bytes(r["strategies_ct"]), create_time=r["create_time"].timestamp(),
                         update_time=r["update_time"].timestamp())


class PgDefaultSenderStore:
    """The default_senders table."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create_default(self, new: StoredDefault, before_commit: Callable[[], Awaitable[None]]
                             ) -> StoredDefault | None:
        """The new default; None when the account already has one for this user, country and product."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO default_senders (id, account_id, user_id, subaccount_id, country, product, strategies_ct)"
                f" VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING {_COLUMNS}",
                uuid.UUID(new.id), new.account_id, new.user_id, new.subaccount_id, new.country, new.product,
                new.strategies_ct)
            if row is None:
                return None
            await before_commit()
        return _row(row)

    async def defaults(self, account_id: int, after_seq: int = 0, limit: int = 10_000
                       ) -> list[tuple[int, StoredDefault]]:
        """The account's defaults in the order they were set (the send path reads them all, in one query)."""
        rows = await self._pool.fetch(
            f"SELECT seq, {_COLUMNS} FROM default_senders WHERE account_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            account_id, after_seq, limit)
        return [(r["seq"], _row(r)) for r in rows]

    async def default(self, account_id: int, default_id: str) -> StoredDefault | None:
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM default_senders WHERE id = $1 AND account_id = $2", uuid.UUID(default_id),
            account_id)
        return None if row is None else _row(row)

    async def update_default(self, account_id: int, default_id: str, user_id: int, strategies_ct: bytes,
                             before_commit: Callable[[], Awaitable[None]]) -> StoredDefault | None:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE default_senders SET strategies_ct = $3, user_id = $4, update_time = now()"
                f" WHERE id = $1 AND account_id = $2 RETURNING {_COLUMNS}",
                uuid.UUID(default_id), account_id, strategies_ct, user_id)
            if row is None:
                return None
            await before_commit()
        return _row(row)

    async def delete_default(self, account_id: int, default_id: str,
                             before_commit: Callable[[], Awaitable[None]]) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            gone = await conn.fetchval("DELETE FROM default_senders WHERE id = $1 AND account_id = $2 RETURNING id",
                                       uuid.UUID(default_id), account_id)
            if gone is None:
                return False
            await before_commit()
        return True
