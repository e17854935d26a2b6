"""Messages: the send transaction, the outbox relay, idempotency answers, balance, history, cancelling,
index keys."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Any

import asyncpg

from services.messaging.adapters.store.rows import (
    UNSETTLED_STATUSES,
    PoolSql,
    bytes_or_none,
    id_text,
    source_statuses,
)
from services.messaging.adapters.store.sending import PgSendTx
from services.messaging.domain.history import STATUS_SORT_NAME, HistoryFilter, HistorySort
from services.messaging.domain.records import StoredMessage
from services.messaging.domain.statuses import MessageStatus

_HISTORY_COLUMNS = (
    "id, account_id, user_id, api_username, status, body_ct, to_ct, sender, country, parts,"
    " price, custom_string, from_email, list_id, contact_id,"
    " extract(epoch FROM schedule_time)::bigint AS schedule,"
    " extract(epoch FROM create_time)::bigint AS date, error_code, carrier, cause, custom_ct"
)
_STATUS_NAME_SQL = "CASE status " + " ".join(
    f"WHEN '{s.value}' THEN '{name}'" for s, name in STATUS_SORT_NAME.items()
) + " END"


def _history_where(
    account_id: int, date_from: int | None, date_to: int | None, f: HistoryFilter, to_hash: bytes | None,
    custom_hash: bytes | None = None,
) -> tuple[str, list[Any]]:
    args: list[Any] = [account_id, date_from, date_to]
    where = [
        "account_id = $1",
        "($2::bigint IS NULL OR create_time >= to_timestamp($2))",
        "($3::bigint IS NULL OR create_time < to_timestamp($3 + 1))",
    ]

    def add(sql: str, value: Any) -> None:
        args.append(value)
        where.append(sql.replace("?", f"${len(args)}"))

    if f.statuses is not None:
        add("status = ANY(?::text[])", sorted(s.value for s in f.statuses))
    if f.to is not None:
        add("to_hash = ?", to_hash or b"")
    if f.sender is not None:
        add("sender = ?", f.sender)
    if f.custom_string is not None:
        args.extend((f.custom_string, custom_hash or b""))
        where.append(_custom_match(len(args) - 1, len(args)))
    if f.message_id is not None:
        add("id = ?::uuid", uuid.UUID(f.message_id))
    if f.username is not None:
        add("api_username = ?", f.username)
    if f.country is not None:
        add("country = ?", f.country)
    return " WHERE " + " AND ".join(where), args


def _custom_match(text: int, digest: int) -> str:
    """A custom string matches by its keyed hash (sealed, from migration 0008) or, in older rows, as the text
    itself; "" matches messages without one. `text` and `digest` are parameter numbers."""
    return (f"(CASE WHEN ${text}::text = '' THEN custom_hash IS NULL AND custom_string = ''"
            f" ELSE custom_hash = ${digest}::bytea OR custom_string = ${text}::text END)")


def _order_by(sort: HistorySort) -> str:
    d = "DESC" if sort.descending else "ASC"
    column = {"username": "api_username", "from": "sender", "status": _STATUS_NAME_SQL}.get(sort.field)
    if column is None:  # date, and the content sorts (done in memory over the newest rows)
        return f" ORDER BY seq {d if sort.field == 'date' else 'DESC'}"
    return f" ORDER BY {column} {d}, seq DESC"


def _stored(r: asyncpg.Record) -> StoredMessage:
    return StoredMessage(
        id=id_text(r["id"]), account_id=r["account_id"], user_id=r["user_id"], api_username=r["api_username"],
        status=MessageStatus(r["status"]), body_ct=bytes_or_none(r["body_ct"]), to_ct=bytes_or_none(r["to_ct"]),
        sender=r["sender"], country=r["country"], parts=r["parts"], price=Decimal(r["price"]),
        custom_string=r["custom_string"], from_email=r["from_email"], list_id=r["list_id"],
        contact_id=r["contact_id"], schedule=r["schedule"], date=r["date"], error_code=r["error_code"],
        carrier=r["carrier"], cause=r["cause"], custom_ct=bytes_or_none(r["custom_ct"]),
    )


class MessagesSql(PoolSql):
    """Messages: the send transaction, the outbox relay, idempotency answers, balance, history, cancelling,
    index keys."""

    @contextlib.asynccontextmanager
    async def send_tx(self, *, atomic: bool = True) -> AsyncIterator[PgSendTx]:
        """A connection for one send. `atomic=False` (nothing to lock or debit) skips BEGIN/COMMIT: the
        insert is a single statement and so already all-or-nothing."""
        async with self._pool.acquire() as conn:
            if not atomic:
                yield PgSendTx(conn)
                return
            async with conn.transaction():
                yield PgSendTx(conn)

    async def messages_after(self, account_id: int, after_seq: int, limit: int) -> list[tuple[int, StoredMessage]]:
        """A keyset page of the account's messages, oldest first: (seq, message) after `after_seq` (the export)."""
        rows = await self._pool.fetch(
            f"SELECT seq, {_HISTORY_COLUMNS} FROM messages WHERE account_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            account_id, after_seq, limit,
        )
        return [(int(r["seq"]), _stored(r)) for r in rows]

    async def mark_published(self, batches: Sequence[int], redeliver_s: float) -> None:
        """Outbox batches just published: they wait `redeliver_s` more before the relay publishes what is
        left of them again. A batch the relay already republished meanwhile keeps the relay's time."""
        if batches:
            await self._pool.execute(
                "UPDATE outbox_batches SET available_time = now() + make_interval(secs => $2), publish_count = 1"
                " WHERE id = ANY($1::bigint[]) AND publish_count = 0",
                list(batches), float(redeliver_s),
            )

    async def relay_due(self, limit: int, publish: Callable[..., Awaitable[None]], redeliver_s: float) -> int:
        """Publish the messages whose outbox time has come and move that time on by `redeliver_s`, doubled
        for every earlier republication (capped at 32x), in one transaction (SKIP LOCKED, so several relays
        share the work; a failed publish rolls back). Rows of messages that have settled are deleted.
        `publish(ids, traceparents)` (the Queue's) gets each message's stored send traceparent, so a retry or a
        redelivery continues (or links to) the send's trace rather than starting an unrelated one.
        Returns how many outbox rows and batches it looked at (up to `limit` of each)."""
        return await self._relay_messages(limit, publish, redeliver_s) + await self._relay_batches(
            limit, publish, redeliver_s)

    async def _relay_batches(
        self, limit: int, publish: Callable[..., Awaitable[None]], redeliver_s: float
    ) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT b.id, ARRAY(SELECT m.id FROM messages m WHERE m.id = ANY(b.message_ids)"
                " AND m.status = ANY($2::text[]) ORDER BY m.id) AS live,"
                " ARRAY(SELECT coalesce(m.traceparent, '') FROM messages m WHERE m.id = ANY(b.message_ids)"
                " AND m.status = ANY($2::text[]) ORDER BY m.id) AS traces"
                " FROM outbox_batches b WHERE b.available_time <= now() ORDER BY b.available_time LIMIT $1"
                " FOR UPDATE OF b SKIP LOCKED",
                limit, UNSETTLED_STATUSES,
            )
            if not rows:
                return 0
            live = [r for r in rows if r["live"]]
            if live:
                traces = {id_text(i): t for r in live for i, t in zip(r["live"], r["traces"], strict=True)}
                await publish(list(traces), traces)
                await conn.execute(
                    "UPDATE outbox_batches SET publish_count = publish_count + 1,"
                    " available_time = now() + make_interval(secs => $2 * 2 ^ least(publish_count, 5))"
                    " WHERE id = ANY($1::bigint[])",
                    [r["id"] for r in live], float(redeliver_s),
                )
            dead = [r["id"] for r in rows if not r["live"]]
            if dead:
                await conn.execute("DELETE FROM outbox_batches WHERE id = ANY($1::bigint[])", dead)
            return len(rows)

    async def _relay_messages(
        self, limit: int, publish: Callable[..., Awaitable[None]], redeliver_s: float
    ) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT o.id, o.message_id, m.status, m.traceparent"
                " FROM outbox o LEFT JOIN messages m ON m.id = o.message_id"
                " WHERE o.available_time <= now() ORDER BY o.available_time LIMIT $1 FOR UPDATE OF o SKIP LOCKED",
                limit,
            )
            if not rows:
                return 0
            live = [r for r in rows if r["status"] in UNSETTLED_STATUSES]
            dead = [r["id"] for r in rows if r["status"] not in UNSETTLED_STATUSES]
            if live:
                traces = {id_text(r["message_id"]): r["traceparent"] or "" for r in live}
                await publish(list(traces), traces)
                await conn.execute(
                    "UPDATE outbox SET publish_count = publish_count + 1,"
                    " available_time = now() + make_interval(secs => $2 * 2 ^ least(publish_count, 5))"
                    " WHERE id = ANY($1::bigint[])",
                    [r["id"] for r in live], float(redeliver_s),
                )
            if dead:
                await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", dead)
            return len(rows)

    async def index_key_ct(self, account_id: int) -> bytes | None:
        return bytes_or_none(await self._pool.fetchval(
            "SELECT index_key_ct FROM account_keys WHERE account_id = $1", account_id))

    async def add_index_key_ct(self, account_id: int, blob: bytes) -> bytes:
        """Store the account's index key unless one exists; returns the one that won."""
        return bytes(await self._pool.fetchval(
            "WITH ins AS (INSERT INTO account_keys (account_id, index_key_ct) VALUES ($1, $2)"
            " ON CONFLICT (account_id) DO NOTHING RETURNING index_key_ct)"
            " SELECT index_key_ct FROM ins UNION ALL"
            " SELECT index_key_ct FROM account_keys WHERE account_id = $1 LIMIT 1",
            account_id, blob,
        ))

    async def idempotent_result(self, account_id: int, key_hash: bytes) -> tuple[bytes, bytes | None] | None:
        """(request hash, encrypted answer) stored under the key, if it was used within the last day."""
        row = await self._pool.fetchrow(
            "SELECT request_hash, result_ct FROM idempotency_keys WHERE account_id = $1 AND key_hash = $2"
            " AND create_time > now() - interval '24 hours'",
            account_id, key_hash,
        )
        return None if row is None else (bytes(row["request_hash"]), bytes_or_none(row["result_ct"]))

    async def forget_idempotency_keys(self, older_than_s: int) -> int:
        result = await self._pool.execute(
            "DELETE FROM idempotency_keys WHERE create_time < now() - make_interval(secs => $1)", float(older_than_s)
        )
        return int(result.split()[-1])

    async def balance(self, account_id: int) -> Decimal | None:
        value = await self._pool.fetchval("SELECT balance FROM balances WHERE account_id = $1", account_id)
        return None if value is None else Decimal(value)

    async def history(
        self, account_id: int, date_from: int | None, date_to: int | None, offset: int, limit: int,
        f: HistoryFilter | None = None, sort: HistorySort | None = None, to_hash: bytes | None = None,
        custom_hash: bytes | None = None,
    ) -> tuple[int, list[StoredMessage]]:
        """A page of an account's messages matching the database-side filters, and their count."""
        where, args = _history_where(account_id, date_from, date_to, f or HistoryFilter(), to_hash, custom_hash)
        n = len(args)
        async with self._pool.acquire() as conn:
            total = await conn.fetchval("SELECT count(*) FROM messages" + where, *args)
            rows = await conn.fetch(
                f"SELECT {_HISTORY_COLUMNS} FROM messages{where}{_order_by(sort or HistorySort())}"
                f" OFFSET ${n + 1} LIMIT ${n + 2}",
                *args, offset, limit,
            )
        return int(total), [_stored(r) for r in rows]

    async def cancel(self, account_id: int, message_id: str) -> MessageStatus | None:
        """Cancel one message of the account if it has not been dispatched; refund its price. Returns the
        status it had (CANCELLED now if it was cancellable), None if the account has no such message."""
        async with self._pool.acquire() as conn, conn.transaction():
            before = await conn.fetchval(
                "SELECT status FROM messages WHERE id = $1 AND account_id = $2 FOR UPDATE",
                uuid.UUID(message_id), account_id,
            )
            if before is None:
                return None
            n = await self._cancel(conn, account_id, "id = $2::uuid", uuid.UUID(message_id))
            return MessageStatus.CANCELLED if n else MessageStatus(before)

    async def cancel_scheduled(
        self, account_id: int, custom_string: str | None, custom_hash: bytes | None = None
    ) -> int:
        """Cancel the account's scheduled messages (only those with `custom_string`, matched by its keyed
        hash `custom_hash`, when given)."""
        async with self._pool.acquire() as conn, conn.transaction():
            if custom_string is None:
                return await self._cancel(conn, account_id, "status = 'SCHEDULED' AND $2::text IS NULL", None)
            return await self._cancel(conn, account_id, f"status = 'SCHEDULED' AND {_custom_match(2, 4)}",
                                      custom_string, custom_hash or b"")

    @staticmethod
    async def _cancel(conn: asyncpg.Connection, account_id: int, which: str, arg: Any, *more: Any) -> int:
        row = await conn.fetchrow(
            "WITH c AS (UPDATE messages SET status = 'CANCELLED', status_time = now(), final_time = now()"
            f" WHERE account_id = $1 AND {which} AND status = ANY($3::text[]) RETURNING id, price),"
            " o AS (DELETE FROM outbox WHERE message_id IN (SELECT id FROM c)),"
            " b AS (UPDATE balances SET balance = balance + (SELECT coalesce(sum(price), 0) FROM c),"
            " update_time = now() WHERE account_id = $1 AND (SELECT count(*) FROM c) > 0)"
            " SELECT count(*) AS n FROM c",
            account_id, arg, source_statuses(MessageStatus.CANCELLED), *more,
        )
        return int(row["n"]) if row else 0
