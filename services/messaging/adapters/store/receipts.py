"""Receipts as the customer reads them (and test receipts)."""

from __future__ import annotations

import uuid

import asyncpg

from services.messaging.adapters.store.rows import PoolSql, bytes_or_none, id_text, unix_of
from services.messaging.domain.receipts import ReceiptRecord
from services.messaging.domain.statuses import MessageStatus


def _receipt(r: asyncpg.Record) -> ReceiptRecord:
    return ReceiptRecord(
        id=r["id"], account_id=r["account_id"], user_id=r["user_id"], message_id=id_text(r["message_id"]),
        status=MessageStatus(r["status"]), error_code=r["error_code"], custom_string=r["custom_string"],
        timestamp_send=unix_of(r["send_time"]), timestamp=unix_of(r["receipt_time"]),
        custom_ct=bytes_or_none(r["custom_ct"]),
    )


# A receipt with its message's sealed custom string (the receipt row keeps none of its own).
_SELECT = "SELECT r.*, m.custom_ct FROM receipts r LEFT JOIN messages m ON m.id = r.message_id"


class ReceiptsSql(PoolSql):
    """Receipts as the customer reads them."""

    async def unread_receipts(self, account_id: int, offset: int, limit: int) -> tuple[int, list[ReceiptRecord]]:
        async with self._pool.acquire() as conn:
            total = await conn.fetchval(
                "SELECT count(*) FROM receipts WHERE account_id = $1 AND read_time IS NULL", account_id)
            rows = await conn.fetch(
                f"{_SELECT} WHERE r.account_id = $1 AND r.read_time IS NULL ORDER BY r.id DESC"
                " OFFSET $2 LIMIT $3",
                account_id, offset, limit,
            )
        return int(total), [_receipt(r) for r in rows]

    async def receipts_after(self, account_id: int, after_id: int, limit: int) -> list[ReceiptRecord]:
        """A keyset page of the account's receipts, read or not, oldest first (the export)."""
        rows = await self._pool.fetch(
            f"{_SELECT} WHERE r.account_id = $1 AND r.id > $2 ORDER BY r.id LIMIT $3", account_id, after_id, limit)
        return [_receipt(r) for r in rows]

    async def receipt(self, account_id: int, message_id: str) -> ReceiptRecord | None:
        row = await self._pool.fetchrow(
            f"{_SELECT} WHERE r.account_id = $1 AND r.message_id = $2", account_id, uuid.UUID(message_id))
        return None if row is None else _receipt(row)

    async def receipt_by_id(self, receipt_id: int) -> ReceiptRecord | None:
        row = await self._pool.fetchrow(f"{_SELECT} WHERE r.id = $1", receipt_id)
        return None if row is None else _receipt(row)

    async def receipt_for_message(self, message_id: str) -> ReceiptRecord | None:
        row = await self._pool.fetchrow(f"{_SELECT} WHERE r.message_id = $1", uuid.UUID(message_id))
        return None if row is None else _receipt(row)

    async def mark_receipts_read(self, account_id: int, before: int | None) -> int:
        result = await self._pool.execute(
            "UPDATE receipts SET read_time = now() WHERE account_id = $1 AND read_time IS NULL"
            " AND ($2::bigint IS NULL OR receipt_time < to_timestamp($2))",
            account_id, before,
        )
        return int(result.split()[-1])

    async def add_test_receipt(self, account_id: int, user_id: int, message_id: str, url: str) -> ReceiptRecord:
        """A delivered receipt for a made-up test message; with `url`, a webhook job to that URL."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO receipts (account_id, user_id, message_id, status, send_time, is_test)"
                " VALUES ($1, $2, $3, 'DELIVERED', now(), true) RETURNING *, NULL::bytea AS custom_ct",
                account_id, user_id, uuid.UUID(message_id),
            )
            if url:
                await conn.execute(
                    "INSERT INTO webhook_outbox (account_id, event, ref, url) VALUES ($1, 'sms.receipt', $2, $3)",
                    account_id, message_id, url,
                )
        return _receipt(row)
