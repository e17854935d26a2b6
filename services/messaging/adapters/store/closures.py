"""SQL of account closure: the closure marker, stopping an account's sends, and deleting its rows."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from services.messaging.adapters.store.messages import MessagesSql

# Rows that name no account themselves, deleted through the rows that do (before them).
_THROUGH = (
    "DELETE FROM outbox WHERE message_id IN (SELECT id FROM messages WHERE account_id = $1)",
    "DELETE FROM carrier_sim_submissions WHERE message_id IN (SELECT id FROM messages WHERE account_id = $1)",
    "DELETE FROM account_export_chunks WHERE export_id IN (SELECT id FROM account_exports WHERE account_id = $1)",
    # Dedicated numbers go back on sale (the inventory is the platform's; its rows are never the account's).
    "UPDATE number_inventory SET holder_account_id = NULL, assign_time = NULL WHERE holder_account_id = $1",
)
_KEPT = ("account_closures",)


async def account_tables(conn: asyncpg.Connection, kept: tuple[str, ...]) -> list[str]:
    """Every table of this database with an account_id column (but `kept`), quoted: a table added later is
    purged too without anyone remembering to list it here."""
    rows = await conn.fetch(
        "SELECT c.table_name FROM information_schema.columns c JOIN information_schema.tables t"
        " ON t.table_schema = c.table_schema AND t.table_name = c.table_name AND t.table_type = 'BASE TABLE'"
        " WHERE c.table_schema = current_schema() AND c.column_name = 'account_id'"
        " AND c.table_name <> ALL($1::text[]) ORDER BY c.table_name", list(kept))
    return ['"' + r["table_name"].replace('"', '""') + '"' for r in rows]


class ClosuresSql:
    _pool: asyncpg.Pool

    async def closing_accounts(self, account_ids: Sequence[int]) -> set[int]:
        rows = await self._pool.fetch(
            "SELECT account_id FROM account_closures WHERE account_id = ANY($1::bigint[])", list(account_ids))
        return {int(r["account_id"]) for r in rows}

    async def stop_sends(self, account_id: int) -> int:
        """Mark the account closing, then cancel (and refund) its scheduled and queued messages, as CancelSms."""
        await self._pool.execute(
            "INSERT INTO account_closures (account_id) VALUES ($1) ON CONFLICT (account_id) DO NOTHING", account_id)
        async with self._pool.acquire() as conn, conn.transaction():
            return await MessagesSql._cancel(conn, account_id, "$2::text IS NULL", None)

    async def resume_sends(self, account_id: int) -> bool:
        """Lift the marker unless the account's data was already deleted; False then."""
        status = await self._pool.fetchval(
            "WITH d AS (DELETE FROM account_closures WHERE account_id = $1 AND purge_time IS NULL RETURNING 1)"
            " SELECT EXISTS (SELECT 1 FROM account_closures WHERE account_id = $1 AND purge_time IS NOT NULL)",
            account_id)
        return not status

    async def purge_account(self, account_id: int) -> int | None:
        """Delete every row of a closing account in every table that holds one (the marker stays, with the
        purge time); None when the account is not closing."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(
                    "SELECT true FROM account_closures WHERE account_id = $1 FOR UPDATE", account_id):
                return None
            deleted = 0
            for sql in _THROUGH:
                deleted += int((await conn.execute(sql, account_id)).split()[-1])
            for name in await account_tables(conn, _KEPT):
                done = await conn.execute(f"DELETE FROM {name} WHERE account_id = $1", account_id)
                deleted += int(done.split()[-1])
            await conn.execute("UPDATE account_closures SET purge_time = now() WHERE account_id = $1", account_id)
        return deleted
