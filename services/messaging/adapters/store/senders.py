"""Sender identities, the number inventory and number verifications (migration 0012), and the one query of an
account's active senders that the send path asks (`active_sender_ids`: numbers here UNION approved alpha tags)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from services.messaging.domain.senders import (
    ActiveSenders,
    InventoryNumber,
    SenderIdentity,
    SenderKind,
    SenderState,
    Verification,
)

_COLUMNS = ("id, account_id, user_id, kind, state, coalesce(value, value_masked) AS shown, country, label,"
            " create_time, activate_time, release_time")


def _ts(value: Any) -> float | None:
    return None if value is None else value.timestamp()


def _identity(r: asyncpg.Record) -> SenderIdentity:
    return SenderIdentity(
        id=str(r["id"]), account_id=r["account_id"], user_id=r["user_id"], kind=SenderKind(r["kind"]),
        state=SenderState(r["state"]), value=r["shown"], country=r["country"], label=r["label"],
        create_time=r["create_time"].timestamp(), activate_time=_ts(r["activate_time"]),
        release_time=_ts(r["release_time"]))


def _number(r: asyncpg.Record) -> InventoryNumber:
    return InventoryNumber(r["number"], r["country"], tuple(r["capabilities"]), r["price_setup"], r["price_monthly"],
                           r["holder_account_id"] or 0)


class PgSenderStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    # -- the send path and replies -----------------------------------------------------------------------------

    async def active_sender_ids(self, account_id: int) -> ActiveSenders:
        """The account's active sender identities in their compared forms, in ONE query: its numbers (platform
        hashes) UNION its approved alpha tags (normalised). Asked only by sends that name a `from`."""
        rows = await self._pool.fetch(
            "SELECT value_hash, NULL::text AS tag FROM sender_identities WHERE account_id = $1 AND state = 'active'"
            " UNION ALL SELECT NULL::bytea, normalized FROM alpha_tags WHERE account_id = $1 AND state = 'approved'",
            account_id)
        return ActiveSenders(frozenset(bytes(r["value_hash"]) for r in rows if r["value_hash"] is not None),
                             frozenset(r["tag"] for r in rows if r["tag"] is not None))

    async def sender_holder(self, value_hash: bytes) -> int | None:
        """The account holding a number (by its platform hash) as an active sender identity, if any."""
        found = await self._pool.fetchval(
            "SELECT account_id FROM sender_identities WHERE value_hash = $1 AND state = 'active'", value_hash)
        return None if found is None else int(found)

    async def sender_index_key(self) -> bytes:
        """The development sender index key (made once; MESSAGING_SENDER_INDEX_KEY replaces it in production)."""
        await self._pool.execute("INSERT INTO sender_index_key (key) VALUES ($1) ON CONFLICT DO NOTHING",
                                 os.urandom(32))
        return bytes(await self._pool.fetchval("SELECT key FROM sender_index_key"))

    # -- inventory ---------------------------------------------------------------------------------------------

    async def load_inventory(self, numbers: Sequence[InventoryNumber],
                             before_commit: Callable[[int, int], Awaitable[None]]) -> tuple[int, int]:
        """Add numbers or update their country, capabilities and prices (never their holder): (added, updated)."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "INSERT INTO number_inventory (number, country, capabilities, price_setup, price_monthly)"
                " SELECT n, c, string_to_array(caps, ','), s, m"
                " FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], $5::numeric[]) AS t(n, c, caps, s, m)"
                " ON CONFLICT (number) DO UPDATE SET country = EXCLUDED.country, capabilities = EXCLUDED.capabilities,"
                "  price_setup = EXCLUDED.price_setup, price_monthly = EXCLUDED.price_monthly, load_time = now()"
                " RETURNING (xmax = 0) AS added",
                [n.number for n in numbers], [n.country for n in numbers],
                [",".join(n.capabilities) for n in numbers], [n.price_setup for n in numbers],
                [n.price_monthly for n in numbers])
            added = sum(1 for r in rows if r["added"])
            await before_commit(added, len(rows) - added)
        return added, len(rows) - added

    async def available_numbers(self, country: str, offset: int, limit: int) -> tuple[int, list[InventoryNumber]]:
        total = await self._pool.fetchval(
            "SELECT count(*) FROM number_inventory WHERE country = $1 AND holder_account_id IS NULL", country)
        rows = await self._pool.fetch(
            "SELECT * FROM number_inventory WHERE country = $1 AND holder_account_id IS NULL"
            " ORDER BY number OFFSET $2 LIMIT $3", country, offset, limit)
        return int(total), [_number(r) for r in rows]

    async def inventory_number(self, number: str) -> InventoryNumber | None:
        r = await self._pool.fetchrow("SELECT * FROM number_inventory WHERE number = $1", number)
        return None if r is None else _number(r)

    async def buy_number(self, identity_id: str, account_id: int, user_id: int, number: str, value_hash: bytes,
                         before_commit: Callable[[SenderIdentity], Awaitable[None]]) -> SenderIdentity | None:
        """Assign a number for sale to the account and make it an active identity; None if it is not for sale."""
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                got = await conn.fetchrow(
                    "UPDATE number_inventory SET holder_account_id = $2, assign_time = now()"
                    " WHERE number = $1 AND holder_account_id IS NULL RETURNING country", number, account_id)
                if got is None:
                    return None
                row = await conn.fetchrow(
                    "INSERT INTO sender_identities (id, account_id, user_id, kind, state, value, value_hash,"
                    " value_masked, country, activate_time) VALUES ($1, $2, $3, 'dedicated_number', 'active', $4,"
                    f" $5, $4, $6, now()) RETURNING {_COLUMNS}",
                    uuid.UUID(identity_id), account_id, user_id, number, value_hash, got["country"])
                identity = _identity(row)
                await before_commit(identity)
        except asyncpg.UniqueViolationError:  # someone verified it as their own number: not for sale
            return None
        return identity

    # -- the account's identities ------------------------------------------------------------------------------

    async def identities(self, account_id: int, kind: SenderKind, states: Sequence[SenderState]
                         ) -> list[SenderIdentity]:
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM sender_identities WHERE account_id = $1 AND kind = $2"
            " AND state = ANY($3::text[]) ORDER BY seq LIMIT 1000", account_id, kind.value, [s.value for s in states])
        return [_identity(r) for r in rows]

    async def identity(self, account_id: int, identity_id: str) -> SenderIdentity | None:
        r = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM sender_identities WHERE id = $1 AND account_id = $2",
                                      uuid.UUID(identity_id), account_id)
        return None if r is None else _identity(r)

    async def active_number(self, account_id: int, value_hash: bytes) -> SenderIdentity | None:
        r = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM sender_identities WHERE account_id = $1 AND value_hash = $2 AND state = 'active'",
            account_id, value_hash)
        return None if r is None else _identity(r)

    async def release(self, account_id: int, identity_id: str,
                      before_commit: Callable[[SenderIdentity], Awaitable[None]]) -> SenderIdentity | None:
        """An active or pending identity of the account, RELEASED (a dedicated number goes back on sale)."""
        async with self._pool.acquire() as conn, conn.transaction():
            r = await conn.fetchrow(
                "UPDATE sender_identities SET state = 'released', release_time = now()"
                " WHERE id = $1 AND account_id = $2 AND state IN ('pending', 'active')"
                f" RETURNING {_COLUMNS}, value", uuid.UUID(identity_id), account_id)
            if r is None:
                return None
            if r["kind"] == SenderKind.DEDICATED_NUMBER.value:
                await conn.execute(
                    "UPDATE number_inventory SET holder_account_id = NULL, assign_time = NULL"
                    " WHERE number = $1 AND holder_account_id = $2", r["value"], account_id)
            identity = _identity(r)
            await before_commit(identity)
        return identity

    # -- verification ------------------------------------------------------------------------------------------

    async def start_verification(
        self, account_id: int, user_id: int, value_hash: bytes, new_identity: tuple[str, bytes, str, str, str],
        code_hash: Callable[[str], bytes], ttl_s: int, per_account: int, per_number: int,
    ) -> tuple[SenderIdentity, Verification] | str:
        """A new code for the number (its pending identity made if new; `new_identity` = (id, sealed value, masked,
        country, label)), or why not: "held" (this account has it active), "taken" (another account does),
        "account" / "number" (the hour's codes for the account / the number are used up)."""
        ident_id, value_ct, masked, country, label = new_identity
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('sender_codes'), $1::int)", account_id % 2**31)
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('sender_numbers'), $1::int)",
                               int.from_bytes(value_hash[:4], "big") % 2**31)
            holder = await conn.fetchval(
                "SELECT account_id FROM sender_identities WHERE value_hash = $1 AND state = 'active'", value_hash)
            if holder is not None:
                return "held" if holder == account_id else "taken"
            await conn.execute("DELETE FROM number_verifications WHERE create_time < now() - interval '1 hour'"
                               " AND account_id = $1", account_id)
            if await conn.fetchval("SELECT count(*) FROM number_verifications WHERE account_id = $1"
                                   " AND create_time > now() - interval '1 hour'", account_id) >= per_account:
                return "account"
            if await conn.fetchval("SELECT count(*) FROM number_verifications WHERE value_hash = $1"
                                   " AND create_time > now() - interval '1 hour'", value_hash) >= per_number:
                return "number"
            r = await conn.fetchrow(f"SELECT {_COLUMNS} FROM sender_identities WHERE account_id = $1"
                                    " AND value_hash = $2 AND state = 'pending'", account_id, value_hash)
            if r is None:
                r = await conn.fetchrow(
                    "INSERT INTO sender_identities (id, account_id, user_id, kind, state, value_ct, value_hash,"
                    " value_masked, country, label) VALUES ($1, $2, $3, 'verified_number', 'pending', $4, $5, $6,"
                    f" $7, $8) RETURNING {_COLUMNS}",
                    uuid.UUID(ident_id), account_id, user_id, value_ct, value_hash, masked, country, label)
            identity = _identity(r)
            vid = uuid.uuid4()
            v = await conn.fetchrow(
                "INSERT INTO number_verifications (id, identity_id, account_id, value_hash, code_hash, expire_time)"
                " VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6)) RETURNING expire_time, create_time",
                vid, uuid.UUID(identity.id), account_id, value_hash, code_hash(str(vid)), float(ttl_s))
        return identity, Verification(str(vid), identity.id, v["expire_time"].timestamp(), 0,
                                      v["create_time"].timestamp())

    async def forget_code(self, verification_id: str) -> None:
        await self._pool.execute("UPDATE number_verifications SET code_hash = NULL WHERE id = $1::uuid",
                                 verification_id)

    async def attempt(self, account_id: int, verification_id: str, max_attempts: int
                      ) -> tuple[Verification, bytes | None, bool, bool] | None:
        """Count one attempt at a code: (verification, code hash, expired, attempts left before this one)."""
        r = await self._pool.fetchrow(
            "WITH old AS (SELECT id, attempts, code_hash, expire_time FROM number_verifications"
            "  WHERE id = $1 AND account_id = $2 FOR UPDATE)"
            " UPDATE number_verifications v SET attempts = v.attempts + 1 FROM old WHERE v.id = old.id"
            " RETURNING v.id, v.identity_id, v.expire_time, v.create_time, v.attempts, v.verify_time, old.code_hash,"
            " old.expire_time <= now() AS expired, old.attempts < $3 AS allowed",
            uuid.UUID(verification_id), account_id, max_attempts)
        if r is None:
            return None
        v = Verification(str(r["id"]), str(r["identity_id"]), r["expire_time"].timestamp(),
                         max(0, max_attempts - r["attempts"]), r["create_time"].timestamp(),
                         r["verify_time"] is not None)
        return v, (None if r["code_hash"] is None else bytes(r["code_hash"])), r["expired"], r["allowed"]

    async def activate_verified(self, account_id: int, verification_id: str,
                                before_commit: Callable[[SenderIdentity], Awaitable[None]]
                                ) -> SenderIdentity | None:
        """The verification's number ACTIVE for the account (its code used up); None if another account holds
        the number now (a number has one holder at a time)."""
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                v = await conn.fetchrow(
                    "UPDATE number_verifications SET code_hash = NULL, verify_time = now()"
                    " WHERE id = $1 AND account_id = $2 RETURNING identity_id", uuid.UUID(verification_id),
                    account_id)
                r = await conn.fetchrow(
                    "UPDATE sender_identities SET state = 'active', activate_time = now()"
                    f" WHERE id = $1 AND state = 'pending' RETURNING {_COLUMNS}", v["identity_id"])
                if r is None:  # released meanwhile, or already active
                    r = await conn.fetchrow(f"SELECT {_COLUMNS} FROM sender_identities WHERE id = $1",
                                            v["identity_id"])
                    return _identity(r)
                identity = _identity(r)
                await before_commit(identity)
        except asyncpg.UniqueViolationError:  # another account made the number active first
            return None
        return identity
