"""Replies (from carriers and the test hook) and the opt-outs they change."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg

from services.messaging.adapters.store.rows import PoolSql, bytes_or_none, id_text, unix_of
from services.messaging.adapters.store.sending import PgSendTx
from services.messaging.domain.optouts import OptAction
from services.messaging.domain.receipts import InboundRecord, NewInbound, OriginalMessage

_INBOUND_COLUMNS = (
    "i.id, i.account_id, i.original_message_id, i.from_ct, i.to_number, i.body_ct, i.custom_string,"
    " i.create_time, m.body_ct AS original_body_ct, m.custom_ct, m.country AS original_country"
)
_INBOUND_FROM = " FROM inbound_messages i LEFT JOIN messages m ON m.id = i.original_message_id"


def _inbound(r: asyncpg.Record) -> InboundRecord:
    return InboundRecord(
        id=id_text(r["id"]), account_id=r["account_id"], original_message_id=id_text(r["original_message_id"]),
        from_ct=bytes_or_none(r["from_ct"]), to=r["to_number"], body_ct=bytes_or_none(r["body_ct"]),
        custom_string=r["custom_string"], timestamp=unix_of(r["create_time"]),
        original_body_ct=bytes_or_none(r["original_body_ct"]), original_account_id=r["account_id"],
        custom_ct=bytes_or_none(r["custom_ct"]), original_country=r["original_country"] or "",
    )


class InboundSql(PoolSql):
    """Replies and the opt-outs they change."""

    async def inbound_after(self, account_id: int, after_seq: int, limit: int) -> list[tuple[int, InboundRecord]]:
        """A keyset page of the account's replies, read or not, oldest first: (seq, reply) (the export)."""
        rows = await self._pool.fetch(
            f"SELECT i.seq, {_INBOUND_COLUMNS}{_INBOUND_FROM} WHERE i.account_id = $1 AND i.seq > $2"
            " ORDER BY i.seq LIMIT $3", account_id, after_seq, limit)
        return [(int(r["seq"]), _inbound(r)) for r in rows]

    async def original(self, ref: str) -> OriginalMessage | None:
        """The outbound message a reply answers: `ref` is our message id or the carrier's reference."""
        try:
            mid: uuid.UUID | None = uuid.UUID(ref)
        except ValueError:
            mid = None
        row = await self._pool.fetchrow(
            "SELECT id, account_id, user_id, custom_string, sender FROM messages"
            " WHERE ($1::uuid IS NOT NULL AND id = $1) OR (carrier_ref <> '' AND carrier_ref = $2) LIMIT 1",
            mid, ref,
        )
        if row is None:
            return None
        return OriginalMessage(id_text(row["id"]), row["account_id"], row["user_id"], row["custom_string"],
                               row["sender"])

    async def reply_candidates(self, senders: Sequence[str], days: int = 7, limit: int = 50) -> list[int]:
        """Accounts that sent from one of `senders` (our number as the reply names it; "" = the shared
        number) in the last `days`, most recent first: where an MO that names no message may belong."""
        rows = await self._pool.fetch(
            "SELECT account_id FROM messages WHERE sender = ANY($1::text[])"
            " AND create_time > now() - make_interval(days => $2)"
            " GROUP BY account_id ORDER BY max(create_time) DESC LIMIT $3",
            list(senders), days, limit,
        )
        return [r["account_id"] for r in rows]

    async def latest_sent_to(self, pairs: Sequence[tuple[int, bytes]], senders: Sequence[str],
                             days: int = 7) -> OriginalMessage | None:
        """The newest message from one of `senders` to a number, given as (account, keyed hash) pairs."""
        row = await self._pool.fetchrow(
            "SELECT m.id, m.account_id, m.user_id, m.custom_string, m.sender FROM messages m"
            " JOIN unnest($1::bigint[], $2::bytea[]) AS p(account_id, to_hash)"
            "  ON m.account_id = p.account_id AND m.to_hash = p.to_hash"
            " WHERE m.sender = ANY($3::text[]) AND m.create_time > now() - make_interval(days => $4)"
            " ORDER BY m.create_time DESC LIMIT 1",
            [a for a, _ in pairs], [h for _, h in pairs], list(senders), days,
        )
        if row is None:
            return None
        return OriginalMessage(id_text(row["id"]), row["account_id"], row["user_id"], row["custom_string"],
                               row["sender"])

    async def message_to_ct(self, account_id: int, message_id: str) -> tuple[bytes | None, str, str] | None:
        """(encrypted recipient, sender, custom_string) of one of the account's messages."""
        row = await self._pool.fetchrow(
            "SELECT to_ct, sender, custom_string FROM messages WHERE id = $1 AND account_id = $2",
            uuid.UUID(message_id), account_id,
        )
        return None if row is None else (bytes_or_none(row["to_ct"]), row["sender"], row["custom_string"])

    async def add_inbound(self, items: Sequence[NewInbound], test_url: str = "") -> list[str]:
        """Store replies with their opt-out changes and webhook jobs, in one transaction. A reply the
        carrier reported before (same carrier and reference) is ignored. Returns the ids stored."""
        stored: list[str] = []
        async with self._pool.acquire() as conn, conn.transaction():
            for m in items:
                row = await conn.fetchrow(
                    "INSERT INTO inbound_messages (id, account_id, original_message_id, from_ct, from_hash, to_number,"
                    " body_ct, custom_string, carrier, carrier_ref, opt_action, is_test)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
                    " ON CONFLICT (carrier, carrier_ref) WHERE carrier_ref <> '' DO NOTHING RETURNING id",
                    uuid.UUID(m.id), m.account_id, uuid.UUID(m.original_message_id) if m.original_message_id else None,
                    m.from_ct, m.from_hash, m.to, m.body_ct, m.custom_string, m.carrier, m.carrier_ref,
                    m.action.value, m.is_test,
                )
                if row is None:
                    continue
                stored.append(m.id)
                if m.action is OptAction.OPT_OUT:
                    await conn.execute(
                        "INSERT INTO opt_outs (account_id, number_hash) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                        m.account_id, m.from_hash,
                    )
                elif m.action is OptAction.OPT_IN:
                    await conn.execute(
                        "DELETE FROM opt_outs WHERE account_id = $1 AND number_hash = $2", m.account_id, m.from_hash)
                if test_url:
                    await conn.execute(
                        "INSERT INTO webhook_outbox (account_id, event, ref, url) VALUES ($1, 'sms.inbound', $2, $3)",
                        m.account_id, m.id, test_url,
                    )
                else:
                    await conn.execute(
                        "INSERT INTO webhook_outbox (account_id, event, ref)"
                        " SELECT account_id, 'sms.inbound', $2 FROM account_settings"
                        " WHERE account_id = $1 AND inbound_webhook_url <> ''",
                        m.account_id, m.id,
                    )
        return stored

    async def is_opted_out(self, account_id: int, number_hash: bytes) -> bool:
        return bool(await self._pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM opt_outs WHERE account_id = $1 AND number_hash = $2)",
            account_id, number_hash,
        ))

    async def opted_out(self, pairs: Sequence[tuple[int, bytes]]) -> set[tuple[int, bytes]]:
        async with self._pool.acquire() as conn:
            return await PgSendTx(conn).opted_out(pairs)

    async def unread_inbound(self, account_id: int, offset: int, limit: int) -> tuple[int, list[InboundRecord]]:
        async with self._pool.acquire() as conn:
            total = await conn.fetchval(
                "SELECT count(*) FROM inbound_messages WHERE account_id = $1 AND read_time IS NULL", account_id)
            rows = await conn.fetch(
                f"SELECT {_INBOUND_COLUMNS}{_INBOUND_FROM} WHERE i.account_id = $1 AND i.read_time IS NULL"
                " ORDER BY i.seq DESC OFFSET $2 LIMIT $3",
                account_id, offset, limit,
            )
        return int(total), [_inbound(r) for r in rows]

    async def inbound_for_original(self, account_id: int, original_message_id: str) -> InboundRecord | None:
        row = await self._pool.fetchrow(
            f"SELECT {_INBOUND_COLUMNS}{_INBOUND_FROM} WHERE i.account_id = $1 AND i.original_message_id = $2"
            " ORDER BY i.seq LIMIT 1",
            account_id, uuid.UUID(original_message_id),
        )
        return None if row is None else _inbound(row)

    async def inbound_by_id(self, inbound_id: str) -> InboundRecord | None:
        row = await self._pool.fetchrow(f"SELECT {_INBOUND_COLUMNS}{_INBOUND_FROM} WHERE i.id = $1",
                                        uuid.UUID(inbound_id))
        return None if row is None else _inbound(row)

    async def mark_inbound_read(self, account_id: int, before: int | None) -> int:
        result = await self._pool.execute(
            "UPDATE inbound_messages SET read_time = now() WHERE account_id = $1 AND read_time IS NULL"
            " AND ($2::bigint IS NULL OR create_time < to_timestamp($2))",
            account_id, before,
        )
        return int(result.split()[-1])

    async def mark_inbound_read_by_id(self, account_id: int, inbound_id: str) -> int:
        result = await self._pool.execute(
            "UPDATE inbound_messages SET read_time = now() WHERE account_id = $1 AND id = $2 AND read_time IS NULL",
            account_id, uuid.UUID(inbound_id),
        )
        return int(result.split()[-1])
