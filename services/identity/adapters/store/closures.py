"""SQL of account closure: the closure row and its steps, the account's state, ending its sessions, moving the main
user's second factor under the platform's key for the window, the per-account lock, and the final purge."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime

import asyncpg

from services.identity.adapters.store.rows import Queries
from services.identity.domain.closure import Closure, ClosureState

_LOCK_SPACE = 0x636C6F73  # "clos": advisory locks of account closures (one per account)
# Rows deleted by subject (they name no account, or name the platform's: a closing main user's second factor).
_BY_SUBJECT = (
    "DELETE FROM recovery_codes WHERE subject_kind = 'user' AND subject_id = ANY($1::bigint[])",
    "DELETE FROM totp_factors WHERE subject_kind = 'user' AND subject_id = ANY($1::bigint[])",
    "DELETE FROM sessions WHERE subject_kind = 'user' AND subject_id = ANY($1::bigint[])",
)
_KEPT = ("accounts", "account_closures", "users")  # users go last, after whatever refers to them
_USER_REFERENCES = (
    "SELECT c.conrelid::regclass::text AS tbl, a.attname AS col FROM pg_constraint c"
    " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]"
    " WHERE c.contype = 'f' AND c.confrelid = 'users'::regclass AND cardinality(c.conkey) = 1"
    " AND c.conrelid <> 'users'::regclass"
)
_ACCOUNT_TABLES = (
    "SELECT format('%I', c.table_name) AS tbl FROM information_schema.columns c JOIN information_schema.tables t"
    " ON t.table_schema = c.table_schema AND t.table_name = c.table_name AND t.table_type = 'BASE TABLE'"
    " WHERE c.table_schema = current_schema() AND c.column_name = 'account_id'"
    " AND c.table_name <> ALL($1::text[]) ORDER BY c.table_name"
)


def _closure(r: asyncpg.Record) -> Closure:
    return Closure(r["account_id"], ClosureState(r["state"]), r["request_time"], r["destroy_time"],
                   tuple(r["steps_done"] or ()), r["requested_by"] or "")


_SELECT = ("SELECT a.id AS account_id, a.state, c.request_time, c.destroy_time, c.steps_done, c.requested_by"
           " FROM accounts a LEFT JOIN account_closures c ON c.account_id = a.id")


class ClosureQueries(Queries):
    async def closure(self, account_id: int) -> Closure | None:
        row = await self._pool.fetchrow(f"{_SELECT} WHERE a.id = $1 AND NOT a.platform", account_id)
        return _closure(row) if row else None

    async def closing_accounts(self, limit: int) -> list[int]:
        rows = await self._pool.fetch(
            "SELECT account_id FROM account_closures ORDER BY update_time LIMIT $1", limit)
        return [r["account_id"] for r in rows]

    @contextlib.asynccontextmanager
    async def closure_lock(self, account_id: int, *, wait: bool) -> AsyncIterator[bool]:
        """Hold the account's closure lock (session advisory lock on a connection of its own) for the block;
        yields False without waiting when another process holds it and `wait` is false."""
        async with self._pool.acquire() as conn:
            if wait:
                await conn.execute("SELECT pg_advisory_lock($1, $2)", _LOCK_SPACE, account_id)
                got = True
            else:
                got = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", _LOCK_SPACE, account_id))
            try:
                yield got
            finally:
                if got:
                    await conn.execute("SELECT pg_advisory_unlock($1, $2)", _LOCK_SPACE, account_id)

    async def start_closure(
        self, account_id: int, requested_by: str, destroy_time: datetime, owner_email_ct: bytes,
        totp: tuple[int, int, bytes] | None, before_commit: Callable[[], Awaitable[None]],
    ) -> bool:
        """open -> closing in one transaction: the closure row, every session of the account ended, the main
        user's second factor (user id, platform account id, blob) re-sealed under the platform's key. False when
        the account is not open."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(
                    "UPDATE accounts SET state = 'closing' WHERE id = $1 AND state = 'open' AND NOT platform"
                    " RETURNING true", account_id):
                return False
            await conn.execute(
                "INSERT INTO account_closures (account_id, requested_by, destroy_time, owner_email_ct, steps_done)"
                " VALUES ($1, $2, $3, $4, '{sessions_ended}')", account_id, requested_by, destroy_time, owner_email_ct)
            await self._end_sessions(conn, account_id)
            if totp is not None:
                await conn.execute("UPDATE totp_factors SET account_id = $2, secret_blob = $3"
                                   " WHERE subject_kind = 'user' AND subject_id = $1", *totp)
            await before_commit()
        return True

    @staticmethod
    async def _end_sessions(conn: asyncpg.Connection, account_id: int) -> int:
        done = await conn.execute(
            "UPDATE sessions SET revoke_time = now(), revoke_reason = 'account_closing'"
            " WHERE account_id = $1 AND subject_kind = 'user' AND revoke_time IS NULL", account_id)
        return int(done.split()[-1])

    async def end_sessions(self, account_id: int) -> int:
        async with self._pool.acquire() as conn:
            return await self._end_sessions(conn, account_id)

    async def step_done(self, account_id: int, step: str, destroy_time: datetime | None = None) -> None:
        await self._pool.execute(
            "UPDATE account_closures SET steps_done = array_append(steps_done, $2), update_time = now(),"
            " destroy_time = coalesce($3, destroy_time) WHERE account_id = $1 AND NOT $2 = ANY(steps_done)",
            account_id, step, destroy_time)

    async def owner_email_ct(self, account_id: int) -> bytes | None:
        value = await self._pool.fetchval(
            "SELECT owner_email_ct FROM account_closures WHERE account_id = $1", account_id)
        return bytes(value) if value is not None else None

    async def main_totp(self, account_id: int) -> tuple[int, int, bytes] | None:
        """(user id, account id it is sealed under, blob) of the main user's second factor, if any."""
        row = await self._pool.fetchrow(
            "SELECT f.subject_id, f.account_id, f.secret_blob FROM totp_factors f JOIN users u ON u.id = f.subject_id"
            " WHERE f.subject_kind = 'user' AND u.account_id = $1 AND u.is_main", account_id)
        return (row[0], row[1], bytes(row[2])) if row else None

    async def cancel_closure(
        self, account_id: int, totp: tuple[int, int, bytes] | None, before_commit: Callable[[], Awaitable[None]]
    ) -> bool:
        """closing -> open: the closure row (and the sealed owner address) goes; the main user's second factor
        back under the account's key. False when the account is not closing."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("UPDATE accounts SET state = 'open' WHERE id = $1 AND state = 'closing'"
                                       " RETURNING true", account_id):
                return False
            await conn.execute("DELETE FROM account_closures WHERE account_id = $1", account_id)
            if totp is not None:
                await conn.execute("UPDATE totp_factors SET account_id = $2, secret_blob = $3"
                                   " WHERE subject_kind = 'user' AND subject_id = $1", *totp)
            await before_commit()
        return True

    async def purge_account(self, account_id: int, receipt_sha256: str) -> int:
        """closing -> closed: every row of the account in every table goes (users last); the account row keeps
        its id, state, times and the receipt's hash. Returns the rows deleted."""
        async with self._pool.acquire() as conn, conn.transaction():
            users = [r["id"] for r in await conn.fetch("SELECT id FROM users WHERE account_id = $1", account_id)]
            deleted = 0
            for sql in _BY_SUBJECT:
                deleted += int((await conn.execute(sql, users)).split()[-1])
            # Rows that refer to the users by a foreign key (whatever their table is called), then every table with
            # an account_id column, users last. Tables added later are found in the catalog, and one that refers to
            # another is retried after it (a savepoint per attempt), so the order needs no list kept by hand.
            for r in await conn.fetch(_USER_REFERENCES):
                done = await conn.execute(f'DELETE FROM {r["tbl"]} WHERE "{r["col"]}" = ANY($1::bigint[])', users)
                deleted += int(done.split()[-1])
            tables = [r["tbl"] for r in await conn.fetch(_ACCOUNT_TABLES, list(_KEPT))]
            for _ in range(len(tables) + 1):
                if not tables:
                    break
                left = []
                for name in tables:
                    try:
                        async with conn.transaction():  # a savepoint
                            done = await conn.execute(f"DELETE FROM {name} WHERE account_id = $1", account_id)
                        deleted += int(done.split()[-1])
                    except asyncpg.ForeignKeyViolationError:
                        left.append(name)
                tables = left
            deleted += int((await conn.execute("DELETE FROM users WHERE account_id = $1", account_id)).split()[-1])
            await conn.execute("DELETE FROM account_closures WHERE account_id = $1", account_id)
            await conn.execute(
                "UPDATE accounts SET state = 'closed', close_time = now(), destruction_receipt_sha256 = $2,"
                " name = NULL, country = NULL, timezone = NULL WHERE id = $1", account_id, receipt_sha256)
        return deleted
