"""All SQL of the keys service (PostgreSQL through asyncpg): key rings, KEK versions, receipt signing keys, API keys."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

import asyncpg

from services.keys.domain.api_keys import ApiKeyRecord
from services.keys.domain.errors import ApiKeyAlreadyRolled
from services.keys.domain.key_rings import AccountRing, RingState, StoredKek
from services.keys.domain.restrictions import SendLimits
from services.keys.domain.root_key import RootWrapped

_KEY_COLUMNS = (
    "key_id, account_id, user_id, name, test_mode, scopes, secret_hmac, pepper_id, create_time, expire_time,"
    " revoke_time, last_used_time, last_used_address, allowed_cidrs, send_per_minute, send_per_day,"
    " send_countries, rolled_from, rolled_to, created_by, limits_root_key_id, send_senders, send_sender_numbers_ct"
)
_RING_COLUMNS = (
    "k.account_id, k.current_version, k.min_decryption_version, k.state, k.rotation_period_seconds,"
    " k.destroy_time, v.create_time AS current_create_time"
)
_RING_FROM = (
    "account_keys k JOIN account_kek_versions v ON v.account_id = k.account_id AND v.version = k.current_version"
)


def _kek(row: asyncpg.Record | None) -> StoredKek | None:
    if row is None:
        return None
    blob = row["wrapped_kek"]
    wrapped = None if blob is None else RootWrapped(row["root_key_id"], bytes(blob))
    return StoredKek(row["account_id"], row["version"], wrapped, row["create_time"])


def _ring(row: asyncpg.Record | None) -> AccountRing | None:
    if row is None:
        return None
    return AccountRing(
        account_id=row["account_id"],
        current_version=row["current_version"],
        min_decryption_version=row["min_decryption_version"],
        state=RingState(row["state"]),
        rotation_period_seconds=row["rotation_period_seconds"],
        destroy_time=row["destroy_time"],
        current_create_time=row["current_create_time"],
    )


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
        last_used_address=row["last_used_address"] or "",
        allowed_cidrs=tuple(row["allowed_cidrs"]),
        send_limits=SendLimits(row["send_per_minute"], row["send_per_day"], tuple(row["send_countries"]),
                               tuple(row["send_senders"])),
        rolled_from=row["rolled_from"] or "",
        rolled_to=row["rolled_to"] or "",
        created_by=row["created_by"] or "",
        limits_root=row["limits_root_key_id"] or "",
        sealed_numbers=bytes(row["send_sender_numbers_ct"]) if row["send_sender_numbers_ct"] is not None else None,
    )


async def _insert_key(conn: asyncpg.Connection, r: ApiKeyRecord) -> None:
    await conn.execute(
        f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES"
        " ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)",
        r.key_id, r.account_id, r.user_id, r.name, r.test_mode, list(r.scopes), r.secret_hmac, r.pepper_id,
        r.create_time, r.expire_time, r.revoke_time, r.last_used_time, r.last_used_address or None,
        list(r.allowed_cidrs), r.send_limits.per_minute, r.send_limits.per_day, list(r.send_limits.countries),
        r.rolled_from or None, r.rolled_to or None, r.created_by or None, r.limits_root or None,
        list(r.send_limits.senders), r.sealed_numbers,
    )


class PgKeyStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    # -- account key rings ---------------------------------------------------------------------------------

    async def ring(self, account_id: int) -> AccountRing | None:
        row = await self._pool.fetchrow(f"SELECT {_RING_COLUMNS} FROM {_RING_FROM} WHERE k.account_id = $1", account_id)
        return _ring(row)

    async def kek_version(self, account_id: int, version: int) -> StoredKek | None:
        row = await self._pool.fetchrow(
            "SELECT account_id, version, root_key_id, wrapped_kek, create_time FROM account_kek_versions"
            " WHERE account_id = $1 AND version = $2",
            account_id, version,
        )
        return _kek(row)

    async def kek_versions(self, account_id: int) -> list[StoredKek]:
        rows = await self._pool.fetch(
            "SELECT account_id, version, root_key_id, wrapped_kek, create_time FROM account_kek_versions"
            " WHERE account_id = $1 ORDER BY version",
            account_id,
        )
        return [k for k in map(_kek, rows) if k is not None]

    async def create_first_kek(self, first: StoredKek) -> tuple[AccountRing, bool]:
        """Store `first` as the account's version-1 KEK unless another writer got there first.
        Returns the account's ring and whether `first` was stored."""
        assert first.wrapped is not None
        async with self._pool.acquire() as conn, conn.transaction():
            created = await conn.fetchval(
                "INSERT INTO account_keys (account_id, current_version, create_time) VALUES ($1, $2, $3)"
                " ON CONFLICT (account_id) DO NOTHING RETURNING true",
                first.account_id, first.version, first.create_time,
            )
            if created:
                await conn.execute(
                    "INSERT INTO account_kek_versions (account_id, version, root_key_id, wrapped_kek, create_time)"
                    " VALUES ($1, $2, $3, $4, $5)",
                    first.account_id, first.version, first.wrapped.key_id, first.wrapped.blob, first.create_time,
                )
            ring = _ring(
                await conn.fetchrow(f"SELECT {_RING_COLUMNS} FROM {_RING_FROM} WHERE k.account_id = $1",
                                    first.account_id)
            )
        assert ring is not None
        return ring, bool(created)

    async def add_kek_version(
        self, new: StoredKek, expected_current: int, before_commit: Callable[[], Awaitable[None]]
    ) -> AccountRing | None:
        """Make `new` the account's current version if the ring is enabled and still at `expected_current`
        (None otherwise: someone else rotated or the ring changed state)."""
        assert new.wrapped is not None
        async with self._pool.acquire() as conn, conn.transaction():
            moved = await conn.fetchval(
                "UPDATE account_keys SET current_version = $2"
                " WHERE account_id = $1 AND current_version = $3 AND state = 'enabled' RETURNING true",
                new.account_id, new.version, expected_current,
            )
            if not moved:
                return None
            await conn.execute(
                "INSERT INTO account_kek_versions (account_id, version, root_key_id, wrapped_kek, create_time)"
                " VALUES ($1, $2, $3, $4, $5)",
                new.account_id, new.version, new.wrapped.key_id, new.wrapped.blob, new.create_time,
            )
            await before_commit()
            return _ring(
                await conn.fetchrow(f"SELECT {_RING_COLUMNS} FROM {_RING_FROM} WHERE k.account_id = $1",
                                    new.account_id)
            )

    async def set_policy(
        self, account_id: int, rotation_period_seconds: int, min_decryption_version: int,
        before_commit: Callable[[], Awaitable[None]],
    ) -> AccountRing | None:
        async with self._pool.acquire() as conn, conn.transaction():
            done = await conn.fetchval(
                "UPDATE account_keys SET rotation_period_seconds = $2, min_decryption_version = $3"
                " WHERE account_id = $1 AND state = 'enabled' AND current_version >= $3 RETURNING true",
                account_id, rotation_period_seconds, min_decryption_version,
            )
            if not done:
                return None
            await before_commit()
            return _ring(
                await conn.fetchrow(f"SELECT {_RING_COLUMNS} FROM {_RING_FROM} WHERE k.account_id = $1", account_id)
            )

    async def schedule_destruction(
        self, account_id: int, destroy_time: datetime, now: datetime, requested_by: str,
        before_commit: Callable[[], Awaitable[None]],
    ) -> AccountRing | None:
        async with self._pool.acquire() as conn, conn.transaction():
            done = await conn.fetchval(
                "UPDATE account_keys SET state = 'pending_destruction', destroy_time = $2,"
                " destruction_scheduled_time = $3, destruction_requested_by = $4"
                " WHERE account_id = $1 AND state = 'enabled' RETURNING true",
                account_id, destroy_time, now, requested_by,
            )
            if not done:
                return None
            await before_commit()
            return _ring(
                await conn.fetchrow(f"SELECT {_RING_COLUMNS} FROM {_RING_FROM} WHERE k.account_id = $1", account_id)
            )

    async def cancel_destruction(
        self, account_id: int, before_commit: Callable[[], Awaitable[None]]
    ) -> AccountRing | None:
        async with self._pool.acquire() as conn, conn.transaction():
            done = await conn.fetchval(
                "UPDATE account_keys SET state = 'enabled', destroy_time = NULL, destruction_scheduled_time = NULL,"
                " destruction_requested_by = NULL WHERE account_id = $1 AND state = 'pending_destruction'"
                " RETURNING true",
                account_id,
            )
            if not done:
                return None
            await before_commit()
            return _ring(
                await conn.fetchrow(f"SELECT {_RING_COLUMNS} FROM {_RING_FROM} WHERE k.account_id = $1", account_id)
            )

    async def due_rotations(self, now: datetime, default_period_seconds: int, limit: int) -> list[AccountRing]:
        """Enabled rings whose current version is older than their rotation period (0 = the default)."""
        rows = await self._pool.fetch(
            f"SELECT {_RING_COLUMNS} FROM {_RING_FROM}"
            " CROSS JOIN LATERAL (SELECT CASE WHEN k.rotation_period_seconds > 0 THEN k.rotation_period_seconds"
            "   ELSE $2::bigint END AS period) p"
            " WHERE k.state = 'enabled' AND p.period > 0"
            " AND v.create_time <= $1::timestamptz - make_interval(secs => p.period::double precision)"
            " ORDER BY v.create_time LIMIT $3",
            now, default_period_seconds, limit,
        )
        return [r for r in map(_ring, rows) if r is not None]

    async def due_destructions(self, now: datetime, limit: int) -> list[int]:
        rows = await self._pool.fetch(
            "SELECT account_id FROM account_keys WHERE state = 'pending_destruction' AND destroy_time <= $1"
            " ORDER BY destroy_time LIMIT $2",
            now, limit,
        )
        return [r["account_id"] for r in rows]

    async def destroy(
        self,
        account_id: int,
        now: datetime,
        before_commit: Callable[[list[tuple[int, bytes]], datetime | None, str], Awaitable[tuple[bytes, bytes, str]]],
    ) -> bool:
        """Destroy every KEK version of a ring whose destruction is due. `before_commit(destroyed, scheduled,
        requested_by)` runs with the wrapped keys about to go and returns the signed receipt (body, signature,
        signing key id), kept with the ring's tombstone; raising there destroys nothing."""
        async with self._pool.acquire() as conn, conn.transaction():
            ring = await conn.fetchrow(
                "SELECT destruction_scheduled_time, destruction_requested_by FROM account_keys"
                " WHERE account_id = $1 AND state = 'pending_destruction' AND destroy_time <= $2 FOR UPDATE",
                account_id, now,
            )
            if ring is None:
                return False
            rows = await conn.fetch(
                "SELECT version, wrapped_kek FROM account_kek_versions WHERE account_id = $1"
                " AND wrapped_kek IS NOT NULL ORDER BY version",
                account_id,
            )
            receipt = await before_commit(
                [(r["version"], bytes(r["wrapped_kek"])) for r in rows],
                ring["destruction_scheduled_time"],
                ring["destruction_requested_by"] or "",
            )
            await conn.execute(
                "UPDATE account_kek_versions SET wrapped_kek = NULL, destroy_time = $2"
                " WHERE account_id = $1 AND wrapped_kek IS NOT NULL",
                account_id, now,
            )
            await conn.execute(
                "UPDATE account_keys SET state = 'destroyed', destroy_time = $2, receipt = $3, receipt_signature = $4,"
                " receipt_signing_key_id = $5 WHERE account_id = $1", account_id, now, *receipt)
            return True

    async def purge_account(self, account_id: int) -> tuple[tuple[bytes, bytes, str] | None, int]:
        """Delete a destroyed ring's API keys and usage reports (its tombstone stays); (receipt, keys deleted)."""
        async with self._pool.acquire() as conn, conn.transaction():
            r = await conn.fetchrow("SELECT receipt, receipt_signature, receipt_signing_key_id FROM account_keys"
                                    " WHERE account_id = $1 AND state = 'destroyed'", account_id)
            deleted = await conn.execute("DELETE FROM api_keys WHERE account_id = $1", account_id)
            await conn.execute("DELETE FROM key_usage WHERE account_id = $1", account_id)
        receipt = (bytes(r[0]), bytes(r[1]), r[2]) if r is not None and r[0] is not None else None
        return receipt, int(deleted.split()[-1])

    # -- root-key rewrap ----------------------------------------------------------------------------------

    async def newest_kek(self) -> StoredKek | None:
        """The most recently written KEK that is not destroyed (any account), or None."""
        row = await self._pool.fetchrow(
            "SELECT account_id, version, root_key_id, wrapped_kek, create_time FROM account_kek_versions"
            " WHERE wrapped_kek IS NOT NULL ORDER BY create_time DESC LIMIT 1"
        )
        return _kek(row)

    async def keks_to_rewrap(self, current_root_key_id: str, limit: int) -> list[StoredKek]:
        # Two index range scans (below and above the current id), both empty in the steady state; "<>" would
        # walk the whole index on every maintenance run.
        cols = "account_id, version, root_key_id, wrapped_kek, create_time"
        rows = await self._pool.fetch(
            f"(SELECT {cols} FROM account_kek_versions WHERE wrapped_kek IS NOT NULL AND root_key_id < $1"
            "  ORDER BY root_key_id, account_id, version LIMIT $2)"
            f" UNION ALL (SELECT {cols} FROM account_kek_versions WHERE wrapped_kek IS NOT NULL AND root_key_id > $1"
            "  ORDER BY root_key_id, account_id, version LIMIT $2) LIMIT $2",
            current_root_key_id, limit,
        )
        return [k for k in map(_kek, rows) if k is not None]

    async def replace_wrapped(self, account_id: int, version: int, old_root_key_id: str, new: RootWrapped) -> bool:
        """Swap in the rewrapped KEK unless the row changed meanwhile (destroyed, or rewrapped by another)."""
        result = await self._pool.execute(
            "UPDATE account_kek_versions SET root_key_id = $4, wrapped_kek = $5"
            " WHERE account_id = $1 AND version = $2 AND root_key_id = $3 AND wrapped_kek IS NOT NULL",
            account_id, version, old_root_key_id, new.key_id, new.blob,
        )
        return result.endswith(" 1")

    async def root_key_usage(self) -> tuple[dict[str, int], dict[str, int]]:
        """(KEK versions per root key id, API-key hashes per pepper id)."""
        keks = await self._pool.fetch(
            "SELECT root_key_id, count(*) AS n FROM account_kek_versions WHERE wrapped_kek IS NOT NULL"
            " GROUP BY root_key_id"
        )
        peppers = await self._pool.fetch("SELECT pepper_id, count(*) AS n FROM api_keys GROUP BY pepper_id")
        return {r["root_key_id"]: r["n"] for r in keks}, {r["pepper_id"]: r["n"] for r in peppers}

    # -- receipt signing keys -----------------------------------------------------------------------------

    async def add_signing_key(self, key_id: str, public_key: bytes, when: datetime) -> None:
        await self._pool.execute(
            "INSERT INTO receipt_signing_keys (key_id, public_key, create_time) VALUES ($1, $2, $3)"
            " ON CONFLICT (key_id) DO NOTHING",
            key_id, public_key, when,
        )

    async def signing_keys(self) -> list[tuple[str, bytes, datetime]]:
        rows = await self._pool.fetch(
            "SELECT key_id, public_key, create_time FROM receipt_signing_keys ORDER BY create_time DESC, key_id"
        )
        return [(r["key_id"], bytes(r["public_key"]), r["create_time"]) for r in rows]

    # -- API keys -----------------------------------------------------------------------------------------

    async def insert_api_key(self, record: ApiKeyRecord, before_commit: Callable[[], Awaitable[None]]) -> None:
        """Insert `record`; `before_commit` runs inside the transaction (a failure there stores nothing)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await _insert_key(conn, record)
            await before_commit()

    async def api_key(self, key_id: str) -> ApiKeyRecord | None:
        row = await self._pool.fetchrow(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = $1", key_id)
        return _api_key(row)

    async def api_key_lineage(self, key_id: str, limit: int) -> list[ApiKeyRecord]:
        """`key_id` and the keys it was rolled to, in order (at most `limit`)."""
        rows = await self._pool.fetch(
            f"WITH RECURSIVE chain AS (SELECT {_KEY_COLUMNS}, 1 AS hop FROM api_keys WHERE key_id = $1"
            f" UNION ALL SELECT {', '.join('k.' + c.strip() for c in _KEY_COLUMNS.split(','))}, chain.hop + 1"
            " FROM api_keys k JOIN chain ON k.key_id = chain.rolled_to WHERE chain.hop < $2)"
            f" SELECT {_KEY_COLUMNS} FROM chain ORDER BY hop",
            key_id, limit,
        )
        return [r for r in map(_api_key, rows) if r is not None]

    async def list_api_keys(
        self, account_id: int, user_id: int | None, *, show_inactive: bool, now: datetime,
        after: tuple[datetime, str] | None, limit: int,
    ) -> list[ApiKeyRecord]:
        """One user's keys, or (user_id None) every key of the account, newest first (keyset paged)."""
        after_time, after_id = after if after is not None else (None, "")
        rows = await self._pool.fetch(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE account_id = $1 AND ($2::bigint IS NULL OR user_id = $2)"
            " AND ($3 OR ((revoke_time IS NULL OR revoke_time > $4) AND (expire_time IS NULL OR expire_time > $4)))"
            " AND ($5::timestamptz IS NULL OR (create_time, key_id) < ($5, $6))"
            " ORDER BY create_time DESC, key_id DESC LIMIT $7",
            account_id, user_id, show_inactive, now, after_time, after_id, limit,
        )
        return [r for r in map(_api_key, rows) if r is not None]

    async def revoke_api_key(self, key_id: str, when: datetime) -> bool:
        """Revoke one key as of `when`; False when it already was by then."""
        result = await self._pool.execute(
            "UPDATE api_keys SET revoke_time = $2 WHERE key_id = $1 AND (revoke_time IS NULL OR revoke_time > $2)",
            key_id, when,
        )
        return result.endswith(" 1")

    async def roll_api_key(
        self, old: ApiKeyRecord, old_expire_time: datetime, new: ApiKeyRecord,
        before_commit: Callable[[], Awaitable[None]],
    ) -> None:
        """Insert `new` and shorten `old` to `old_expire_time`, linking both; ApiKeyAlreadyRolled on a race."""
        async with self._pool.acquire() as conn, conn.transaction():
            moved = await conn.fetchval(
                "UPDATE api_keys SET expire_time = $2, rolled_to = $3 WHERE key_id = $1 AND rolled_to IS NULL"
                " RETURNING true",
                old.key_id, old_expire_time, new.key_id,
            )
            if not moved:
                raise ApiKeyAlreadyRolled("the key was rolled by another request")
            await _insert_key(conn, new)
            await before_commit()

    async def revoke_user_keys(
        self, account_id: int, user_id: int | None, keep_key_id: str, when: datetime
    ) -> list[str]:
        """Revoke, as of `when`, every key of the user (None: of every user of the account) that is not already
        revoked by then (except `keep_key_id`). Returns the ids revoked by this call."""
        rows = await self._pool.fetch(
            "UPDATE api_keys SET revoke_time = $4 WHERE account_id = $1 AND ($2::bigint IS NULL OR user_id = $2)"
            " AND key_id <> $3 AND (revoke_time IS NULL OR revoke_time > $4)"
            " RETURNING key_id",
            account_id, user_id, keep_key_id, when,
        )
        return sorted(r["key_id"] for r in rows)

    async def rehash_api_key(self, key_id: str, old_pepper_id: str, new_hmac: bytes, new_pepper_id: str) -> bool:
        """Move a key's hash to the current pepper (after a root-key rotation), once."""
        result = await self._pool.execute(
            "UPDATE api_keys SET secret_hmac = $3, pepper_id = $4 WHERE key_id = $1 AND pepper_id = $2",
            key_id, old_pepper_id, new_hmac, new_pepper_id,
        )
        return result.endswith(" 1")

    async def set_last_used(self, items: Sequence[tuple[str, datetime, str]]) -> int:
        """Move last use (time and address) forward, never back, for many keys in one statement."""
        if not items:
            return 0
        result = await self._pool.execute(
            "UPDATE api_keys a SET last_used_time = v.t, last_used_address = NULLIF(v.addr, '')"
            " FROM unnest($1::text[], $2::timestamptz[], $3::text[]) AS v(key_id, t, addr)"
            " WHERE a.key_id = v.key_id AND (a.last_used_time IS NULL OR a.last_used_time < v.t)",
            [k for k, _, _ in items], [t for _, t, _ in items], [a for _, _, a in items],
        )
        return int(result.split()[-1])

    # -- key usage reported by the data owners (rewrap progress) --------------------------------------------

    async def replace_key_usage(
        self, service: str, pass_start: datetime, now: datetime, usage: Sequence[tuple[int, int, int]]
    ) -> bool:
        """Replace `service`'s counts (account, version, items) unless a later pass is stored; not destroyed rings'."""
        async with self._pool.acquire() as conn, conn.transaction():
            kept = await conn.fetchval(
                "INSERT INTO key_usage_passes (service, pass_start_time, report_time) VALUES ($1, $2, $3)"
                " ON CONFLICT (service) DO UPDATE SET pass_start_time = $2, report_time = $3"
                " WHERE key_usage_passes.pass_start_time <= $2 RETURNING true",
                service, pass_start, now,
            )
            if not kept:
                return False
            await conn.execute("DELETE FROM key_usage WHERE service = $1", service)
            await conn.execute(
                "INSERT INTO key_usage (service, account_id, version, items)"
                " SELECT $1, a, v, n FROM unnest($2::bigint[], $3::int[], $4::bigint[]) AS u(a, v, n) WHERE n > 0"
                " AND NOT EXISTS (SELECT 1 FROM account_keys k WHERE k.account_id = a AND k.state = 'destroyed')",
                service, [a for a, _, _ in usage], [v for _, v, _ in usage], [n for _, _, n in usage],
            )
            return True

    async def key_usage_below(
        self, account_id: int, minimum: int, services: Sequence[str]
    ) -> list[tuple[str, datetime | None, int]]:
        """Per data owner: (service, start of its last reported pass or None, items of the account below
        `minimum` as that pass counted them)."""
        rows = await self._pool.fetch(
            "SELECT s.service, p.pass_start_time,"
            " (SELECT coalesce(sum(items), 0) FROM key_usage u"
            "   WHERE u.account_id = $1 AND u.service = s.service AND u.version < $2) AS below"
            " FROM unnest($3::text[]) AS s(service) LEFT JOIN key_usage_passes p ON p.service = s.service"
            " ORDER BY s.service",
            account_id, minimum, list(services),
        )
        return [(r["service"], r["pass_start_time"], int(r["below"])) for r in rows]

    async def rewrap_backlog(self) -> dict[str, int]:
        """Per data owner: items its last pass counted under a version older than the account's current one
        (what its next rewrap passes still have to move)."""
        rows = await self._pool.fetch(
            "SELECT u.service, sum(u.items) AS items FROM key_usage u"
            " JOIN account_keys a ON a.account_id = u.account_id"
            " WHERE u.version < a.current_version GROUP BY u.service")
        return {r["service"]: int(r["items"]) for r in rows}

    async def key_usage_of(
        self, account_id: int, services: Sequence[str]
    ) -> list[tuple[str, datetime | None, dict[int, int]]]:
        """Per data owner: (service, start of its last pass or None, {version: items} of the account)."""
        rows = await self._pool.fetch(
            "SELECT s.service, p.pass_start_time, u.version, u.items FROM unnest($2::text[]) AS s(service)"
            " LEFT JOIN key_usage_passes p ON p.service = s.service"
            " LEFT JOIN key_usage u ON u.service = s.service AND u.account_id = $1 ORDER BY s.service, u.version",
            account_id, list(services),
        )
        out: dict[str, tuple[datetime | None, dict[int, int]]] = {}
        for r in rows:
            _, versions = out.setdefault(r["service"], (r["pass_start_time"], {}))
            if r["version"] is not None:
                versions[r["version"]] = int(r["items"])
        return [(service, start, versions) for service, (start, versions) in out.items()]
