"""Contact lists, contacts and CSV imports (migration 0014). Every value a customer wrote is a sealed blob here; the
store sees only ids, counts and keyed hashes. A change to a list's contacts locks the list's row first, so
duplicates are decided once (an import's commit and a single add never race). Each change runs its
`before_commit` (the audit event) inside its transaction."""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from services.messaging.domain.contacts import ContactImport, ImportProblem

Audit = Callable[[], Awaitable[None]]
ContactRow = tuple[int, bytes, bytes | None, bytes | None]  # contact_id, data_ct, phone_hash, email_hash

_LIST_COLUMNS = (
    "l.list_id, l.name_ct,"
    " (SELECT count(*) FROM contacts c WHERE c.list_id = l.list_id) AS contacts_count,"
    " EXISTS (SELECT 1 FROM contact_imports i WHERE i.list_id = l.list_id"
    "         AND i.state IN ('pending', 'running')) AS importing")
_IMPORT_COLUMNS = ("import_id, list_id, account_id, state, rows_read, imported, duplicates, invalid, problems, failure,"
                   " create_time, finish_time")


def _import(r: asyncpg.Record) -> ContactImport:
    problems = r["problems"]
    if isinstance(problems, str):
        problems = json.loads(problems)
    return ContactImport(
        import_id=r["import_id"], list_id=r["list_id"], account_id=r["account_id"], state=r["state"],
        rows_read=r["rows_read"], imported=r["imported"], duplicates=r["duplicates"], invalid=r["invalid"],
        problems=tuple(ImportProblem(int(p["line"]), str(p["reason"])) for p in problems), failure=r["failure"],
        create_time=int(r["create_time"].timestamp()),
        finish_time=0 if r["finish_time"] is None else int(r["finish_time"].timestamp()))


class PgContactStore:
    """The contact_lists, contacts and contact_imports tables."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def new_ids(self, kind: str, count: int) -> list[int]:
        """`count` fresh ids of lists, contacts or imports (the sealed values' associated data names them)."""
        seq = {"list": "contact_lists_list_id_seq", "contact": "contacts_contact_id_seq",
               "import": "contact_imports_import_id_seq"}[kind]
        rows = await self._pool.fetch(f"SELECT nextval('{seq}') AS id FROM generate_series(1, $1)", count)
        return [r["id"] for r in rows]

    # -- lists ---------------------------------------------------------------------------------------------------

    async def create_list(self, list_id: int, account_id: int, name_ct: bytes, before_commit: Audit) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO contact_lists (list_id, account_id, name_ct) VALUES ($1, $2, $3)",
                               list_id, account_id, name_ct)
            await before_commit()

    async def lists(self, account_id: int, offset: int, limit: int) -> tuple[int, list[asyncpg.Record]]:
        async with self._pool.acquire() as conn:
            total = await conn.fetchval("SELECT count(*) FROM contact_lists WHERE account_id = $1", account_id)
            rows = await conn.fetch(f"SELECT {_LIST_COLUMNS} FROM contact_lists l WHERE l.account_id = $1"
                                    " ORDER BY l.list_id OFFSET $2 LIMIT $3", account_id, offset, limit)
        return int(total), list(rows)

    async def contact_list(self, account_id: int, list_id: int) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self._pool.fetchrow(
            f"SELECT {_LIST_COLUMNS} FROM contact_lists l WHERE l.list_id = $1 AND l.account_id = $2",
            list_id, account_id)
        return row

    async def rename_list(self, account_id: int, list_id: int, name_ct: bytes, before_commit: Audit) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            done = await conn.execute("UPDATE contact_lists SET name_ct = $3, update_time = now()"
                                      " WHERE list_id = $1 AND account_id = $2", list_id, account_id, name_ct)
            if done.endswith(" 0"):
                return False
            await before_commit()
        return True

    async def delete_list(self, account_id: int, list_id: int, before_commit: Callable[[int], Awaitable[None]]
                          ) -> bool:
        """The list and its contacts and imports (the audit event gets how many contacts went)."""
        async with self._pool.acquire() as conn, conn.transaction():
            if await conn.fetchval("SELECT 1 FROM contact_lists WHERE list_id = $1 AND account_id = $2 FOR UPDATE",
                                   list_id, account_id) is None:
                return False
            count = await conn.fetchval("SELECT count(*) FROM contacts WHERE list_id = $1", list_id)
            await conn.execute("DELETE FROM contact_lists WHERE list_id = $1", list_id)
            await before_commit(int(count))
        return True

    # -- contacts ------------------------------------------------------------------------------------------------

    async def _lock_list(self, conn: Any, account_id: int, list_id: int) -> bool:
        return await conn.fetchval("SELECT 1 FROM contact_lists WHERE list_id = $1 AND account_id = $2 FOR UPDATE",
                                   list_id, account_id) is not None

    async def add_contact(self, account_id: int, list_id: int, row: ContactRow, before_commit: Audit) -> str:
        """"ok", "no_list" or "duplicate" (the list has this number, or this email without a number)."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await self._lock_list(conn, account_id, list_id):
                return "no_list"
            done = await conn.fetchval(
                "INSERT INTO contacts (contact_id, list_id, account_id, data_ct, phone_hash, email_hash)"
                " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING contact_id",
                row[0], list_id, account_id, row[1], row[2], row[3])
            if done is None:
                return "duplicate"
            await before_commit()
        return "ok"

    async def contacts(self, account_id: int, list_id: int, offset: int, limit: int
                       ) -> tuple[int, list[asyncpg.Record]]:
        async with self._pool.acquire() as conn:
            total = await conn.fetchval("SELECT count(*) FROM contacts WHERE list_id = $1 AND account_id = $2",
                                        list_id, account_id)
            rows = await conn.fetch(
                "SELECT contact_id, data_ct, create_time, update_time FROM contacts WHERE list_id = $1"
                " AND account_id = $2 ORDER BY contact_id OFFSET $3 LIMIT $4", list_id, account_id, offset, limit)
        return int(total), list(rows)

    async def contact(self, account_id: int, list_id: int, contact_id: int) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self._pool.fetchrow(
            "SELECT contact_id, data_ct, create_time, update_time FROM contacts"
            " WHERE contact_id = $1 AND list_id = $2 AND account_id = $3", contact_id, list_id, account_id)
        return row

    async def update_contact(self, account_id: int, list_id: int, row: ContactRow, before_commit: Audit) -> str:
        """"ok", "missing" or "duplicate" (another contact of the list has the number)."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await self._lock_list(conn, account_id, list_id):
                return "missing"
            try:
                async with conn.transaction():
                    done = await conn.execute(
                        "UPDATE contacts SET data_ct = $4, phone_hash = $5, email_hash = $6, update_time = now()"
                        " WHERE contact_id = $1 AND list_id = $2 AND account_id = $3",
                        row[0], list_id, account_id, row[1], row[2], row[3])
            except asyncpg.UniqueViolationError:
                return "duplicate"
            if done.endswith(" 0"):
                return "missing"
            await before_commit()
        return "ok"

    async def delete_contact(self, account_id: int, list_id: int, contact_id: int, before_commit: Audit) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            done = await conn.execute("DELETE FROM contacts WHERE contact_id = $1 AND list_id = $2 AND account_id = $3",
                                      contact_id, list_id, account_id)
            if done.endswith(" 0"):
                return False
            await before_commit()
        return True

    async def list_recipients(self, account_id: int, list_id: int) -> list[tuple[int, bytes]] | None:
        """Every contact with a number of the account's list (None: no such list of the account), in id order."""
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            if await conn.fetchval("SELECT 1 FROM contact_lists WHERE list_id = $1 AND account_id = $2",
                                   list_id, account_id) is None:
                return None
            rows = await conn.fetch("SELECT contact_id, data_ct FROM contacts WHERE list_id = $1"
                                    " AND phone_hash IS NOT NULL ORDER BY contact_id", list_id)
        return [(r["contact_id"], r["data_ct"]) for r in rows]

    # -- imports -------------------------------------------------------------------------------------------------

    async def create_import(self, import_id: int, account_id: int, user_id: int, list_id: int, file_ct: bytes,
                            order: Sequence[str], has_header: bool, before_commit: Audit) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            if await conn.fetchval("SELECT 1 FROM contact_lists WHERE list_id = $1 AND account_id = $2",
                                   list_id, account_id) is None:
                return False
            await conn.execute(
                "INSERT INTO contact_imports (import_id, list_id, account_id, user_id, file_ct, field_order,"
                " has_header) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                import_id, list_id, account_id, user_id, file_ct, list(order), has_header)
            await before_commit()
        return True

    async def contact_import(self, account_id: int, list_id: int, import_id: int) -> ContactImport | None:
        row = await self._pool.fetchrow(f"SELECT {_IMPORT_COLUMNS} FROM contact_imports WHERE import_id = $1"
                                        " AND list_id = $2 AND account_id = $3", import_id, list_id, account_id)
        return None if row is None else _import(row)

    async def claim_import(self, lease_s: float) -> tuple[asyncpg.Record, str] | None:
        """The oldest import waiting (or whose job's lease ran out), claimed with a fresh token."""
        token = secrets.token_hex(16)
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT import_id FROM contact_imports WHERE state = 'pending'"
                " OR (state = 'running' AND claim_until < now()) ORDER BY import_id LIMIT 1 FOR UPDATE SKIP LOCKED")
            if row is None:
                return None
            claimed = await conn.fetchrow(
                "UPDATE contact_imports SET state = 'running', claim_token = $2, attempts = attempts + 1,"
                " claim_until = now() + make_interval(secs => $3) WHERE import_id = $1"
                " RETURNING import_id, list_id, account_id, user_id, file_ct, field_order, has_header, attempts",
                row["import_id"], token, float(lease_s))
        return claimed, token

    async def import_progress(self, import_id: int, token: str, rows_read: int) -> None:
        await self._pool.execute("UPDATE contact_imports SET rows_read = $3 WHERE import_id = $1"
                                 " AND claim_token = $2", import_id, token, rows_read)

    async def existing_hashes(self, list_id: int, phones: list[bytes], emails: list[bytes]
                              ) -> tuple[set[bytes], set[bytes]]:
        async with self._pool.acquire() as conn:
            p = await conn.fetch("SELECT phone_hash FROM contacts WHERE list_id = $1 AND phone_hash = ANY($2)",
                                 list_id, phones)
            e = await conn.fetch("SELECT email_hash FROM contacts WHERE list_id = $1 AND phone_hash IS NULL"
                                 " AND email_hash = ANY($2)", list_id, emails)
        return {bytes(r[0]) for r in p}, {bytes(r[0]) for r in e}

    async def finish_import(self, claimed: asyncpg.Record, token: str, rows: Sequence[ContactRow],
                            counts: dict[str, int], problems: Sequence[ImportProblem], before_commit: Audit) -> str:
        """All of the import's contacts in one transaction with its final counts: "ok", "lost" (another job holds
        it now), "no_list" (the list went) or "duplicate" (contacts were added meanwhile: claim it again)."""
        import_id, list_id, account_id = claimed["import_id"], claimed["list_id"], claimed["account_id"]
        async with self._pool.acquire() as conn, conn.transaction():
            if await conn.fetchval("SELECT 1 FROM contact_imports WHERE import_id = $1 AND claim_token = $2"
                                   " FOR UPDATE", import_id, token) is None:
                return "lost"
            if not await self._lock_list(conn, account_id, list_id):
                return "no_list"
            try:
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        "contacts", columns=["contact_id", "list_id", "account_id", "data_ct", "phone_hash",
                                             "email_hash", "import_id"],
                        records=[(r[0], list_id, account_id, r[1], r[2], r[3], import_id) for r in rows])
            except asyncpg.UniqueViolationError:
                return "duplicate"
            await conn.execute(
                "UPDATE contact_imports SET state = 'done', file_ct = NULL, claim_token = NULL, claim_until = NULL,"
                " rows_read = $2, imported = $3, duplicates = $4, invalid = $5, problems = $6::jsonb,"
                " finish_time = now() WHERE import_id = $1",
                import_id, counts["rows_read"], counts["imported"], counts["duplicates"], counts["invalid"],
                json.dumps([{"line": p.line, "reason": p.reason} for p in problems]))
            await before_commit()
        return "ok"

    async def release_import(self, import_id: int, token: str) -> None:
        """Give a claimed import back (to be claimed again at once)."""
        await self._pool.execute("UPDATE contact_imports SET state = 'pending', claim_token = NULL, claim_until = NULL"
                                 " WHERE import_id = $1 AND claim_token = $2", import_id, token)

    async def fail_import(self, import_id: int, token: str, failure: str, before_commit: Audit) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            done = await conn.execute(
                "UPDATE contact_imports SET state = 'failed', failure = $3, file_ct = NULL, claim_token = NULL,"
                " claim_until = NULL, finish_time = now() WHERE import_id = $1 AND claim_token = $2",
                import_id, token, failure)
            if not done.endswith(" 0"):
                await before_commit()
