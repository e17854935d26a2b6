"""Notification destinations and their verification codes."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import asyncpg

from services.messaging.domain.destinations import Destination


class PgDestinationStore:
    """Verified notification destinations and the verification codes sent."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @staticmethod
    def _destination(r: asyncpg.Record) -> Destination:
        verified = r["verify_time"]
        return Destination(
            destination_id=str(r["id"]), account_id=r["account_id"], channel=r["channel"], to_masked=r["to_masked"],
            verified=verified is not None, create_time=int(r["create_time"].timestamp()),
            verify_time=None if verified is None else int(verified.timestamp()),
        )

    async def start(self, account_id: int, channel: int, to_hash: bytes, to_masked: str, user_id: int,
                    code_hash: Callable[[str], bytes], ttl_s: int, per_hour: int) -> Destination | None:
        """Record a new code for the destination (created if new; a verified one stays verified until the
        new code is entered) unless the account sent `per_hour` codes in the last hour (None then)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('destination_codes'), $1::int)",
                               account_id % 2**31)
            sent = await conn.fetchval(
                "SELECT count(*) FROM destination_codes WHERE account_id = $1"
                " AND send_time > now() - interval '1 hour'", account_id)
            if sent >= per_hour:
                return None
            await conn.execute("INSERT INTO destination_codes (account_id) VALUES ($1)", account_id)
            new_id = uuid.uuid4()
            r = await conn.fetchrow(
                "INSERT INTO notification_destinations (id, account_id, channel, to_hash, to_masked, create_user_id)"
                " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (account_id, channel, to_hash)"
                " DO UPDATE SET to_masked = EXCLUDED.to_masked RETURNING id",
                new_id, account_id, channel, to_hash, to_masked, user_id)
            dest_id = r["id"]
            r = await conn.fetchrow(
                "UPDATE notification_destinations SET code_hash = $2, attempts = 0,"
                " code_expire_time = now() + make_interval(secs => $3) WHERE id = $1"
                " RETURNING id, account_id, channel, to_masked, verify_time, create_time",
                dest_id, code_hash(str(dest_id)), float(ttl_s))
            return self._destination(r)

    async def forget_code(self, destination_id: str) -> None:
        """The code could not be sent: it is not valid."""
        await self._pool.execute(
            "UPDATE notification_destinations SET code_hash = NULL, code_expire_time = NULL WHERE id = $1::uuid",
            destination_id)

    async def attempt(self, account_id: int, destination_id: str, max_attempts: int
                      ) -> tuple[Destination, bytes | None, bool, bool] | None:
        """Count one attempt at the destination's code: (destination, code hash, expired, attempts left
        before this one); None if the account has no such destination."""
        try:
            dest_uuid = uuid.UUID(destination_id)
        except ValueError:
            return None
        r = await self._pool.fetchrow(
            "WITH old AS (SELECT id, attempts, code_hash, code_expire_time FROM notification_destinations"
            "  WHERE id = $1 AND account_id = $2 FOR UPDATE)"
            " UPDATE notification_destinations d SET attempts = d.attempts + 1 FROM old WHERE d.id = old.id"
            " RETURNING d.id, d.account_id, d.channel, d.to_masked, d.verify_time, d.create_time, old.code_hash,"
            " old.code_expire_time IS NULL OR old.code_expire_time <= now() AS expired,"
            " old.attempts < $3 AS allowed",
            dest_uuid, account_id, max_attempts)
        if r is None:
            return None
        code = None if r["code_hash"] is None else bytes(r["code_hash"])
        return self._destination(r), code, r["expired"], r["allowed"]

    async def verified(self, destination_id: str) -> Destination:
        r = await self._pool.fetchrow(
            "UPDATE notification_destinations SET verify_time = now(), code_hash = NULL, code_expire_time = NULL"
            " WHERE id = $1::uuid RETURNING id, account_id, channel, to_masked, verify_time, create_time",
            destination_id)
        return self._destination(r)

    async def is_verified(self, account_id: int, channel: int, to_hash: bytes) -> bool:
        return bool(await self._pool.fetchval(
            "SELECT verify_time IS NOT NULL FROM notification_destinations"
            " WHERE account_id = $1 AND channel = $2 AND to_hash = $3", account_id, channel, to_hash))

    async def destinations(self, account_id: int) -> list[Destination]:
        rows = await self._pool.fetch(
            "SELECT id, account_id, channel, to_masked, verify_time, create_time FROM notification_destinations"
            " WHERE account_id = $1 ORDER BY create_time DESC, id LIMIT 100", account_id)
        return [self._destination(r) for r in rows]
