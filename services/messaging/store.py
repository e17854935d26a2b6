"""All SQL of the messaging service (and of its built-in carrier simulator's ledger)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg

from services.messaging.domain import (
    ClaimedMessage,
    MessageStatus,
    NewMessage,
    Receipt,
    StoredMessage,
    sources_of,
)

_MESSAGE_COLUMNS = (
    "id", "account_id", "user_id", "api_username", "status", "body_ct", "to_ct", "sender", "country",
    "encoding", "parts", "price", "is_test", "custom_string", "source", "from_email", "list_id", "contact_id",
    "schedule_time",
)
# Messages and their outbox rows in ONE statement (a data-modifying CTE): a single round trip, atomic
# on its own, so a send that debits nothing needs no explicit transaction.
_INSERT_MESSAGES = (
    "WITH inserted AS (INSERT INTO messages (" + ", ".join(_MESSAGE_COLUMNS) + ")"
    " SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::bytea[],"
    " $7::bytea[], $8::text[], $9::text[], $10::text[], $11::int[], $12::numeric[], $13::bool[], $14::text[],"
    " $15::text[], $16::text[], $17::text[], $18::text[], $19::timestamptz[]) RETURNING id)"
    " INSERT INTO outbox (message_id, available_time) SELECT * FROM unnest($1::uuid[], $20::timestamptz[])"
)
_CLAIMABLE = [s.value for s in sources_of(MessageStatus.SENDING)] + [MessageStatus.SENDING.value]


def _uuids(ids: Sequence[str]) -> list[uuid.UUID]:
    return [uuid.UUID(i) for i in ids]


def _mid(value: uuid.UUID) -> str:
    return str(value).upper()


def _ts(unix: int | None) -> datetime | None:
    return None if unix is None else datetime.fromtimestamp(unix, UTC)


def _sources(status: MessageStatus) -> list[str]:
    return sorted(s.value for s in sources_of(status))


class PgSendTx:
    """The writes of one send request, inside one transaction."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def lock_balance(self, account_id: int, initial: Decimal) -> Decimal:
        """The account's balance, row-locked until commit; created with `initial` on first use."""
        value = await self._conn.fetchval(
            "INSERT INTO balances (account_id, balance) VALUES ($1, $2)"
            " ON CONFLICT (account_id) DO UPDATE SET account_id = EXCLUDED.account_id"
            " RETURNING balance",
            account_id, initial,
        )
        return Decimal(value)

    async def debit(self, account_id: int, amount: Decimal) -> None:
        if amount:
            await self._conn.execute(
                "UPDATE balances SET balance = balance - $2, update_time = now() WHERE account_id = $1",
                account_id, amount,
            )

    async def insert_messages(self, messages: Sequence[NewMessage]) -> None:
        """Bulk-insert message rows and their outbox rows (arrays unnested server-side: one prepared
        statement per table, no per-call table introspection as COPY needs)."""
        if not messages:
            return
        cols = list(zip(*(
            (uuid.UUID(m.id), m.account_id, m.user_id, m.api_username, m.status.value, m.body_ct, m.to_ct,
             m.sender, m.country, m.encoding, m.parts, m.price, m.is_test, m.custom_string, m.source,
             m.from_email, m.list_id, m.contact_id, _ts(m.schedule), _ts(m.publish_at))
            for m in messages
        ), strict=True))
        await self._conn.execute(_INSERT_MESSAGES, *cols)


class PgMessageStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    # -- sending ------------------------------------------------------------------------------------------

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

    async def delete_outbox(self, published: Sequence[tuple[str, int]]) -> None:
        """Delete the outbox rows of published messages: (message id, the row's publish-at time), so a
        retry row added meanwhile for the same message survives."""
        if published:
            await self._pool.execute(
                "DELETE FROM outbox o USING unnest($1::uuid[], $2::timestamptz[]) AS r(id, at)"
                " WHERE o.message_id = r.id AND o.available_time = r.at",
                _uuids([p[0] for p in published]), [_ts(p[1]) for p in published],
            )

    async def relay_due(self, limit: int, publish: Callable[[list[str]], Awaitable[None]]) -> int:
        """Publish outbox rows whose time has come and delete them, in one transaction.

        Rows are locked with SKIP LOCKED so several relays share the work; if publishing fails the
        transaction rolls back and the rows stay for the next round.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, message_id FROM outbox WHERE available_time <= now()"
                " ORDER BY available_time LIMIT $1 FOR UPDATE SKIP LOCKED",
                limit,
            )
            if not rows:
                return 0
            await publish(list(dict.fromkeys(_mid(r["message_id"]) for r in rows)))
            await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in rows])
            return len(rows)

    async def outbox_ids(self) -> list[str]:
        return [_mid(r["message_id"]) for r in await self._pool.fetch("SELECT message_id FROM outbox ORDER BY id")]

    # -- reading ------------------------------------------------------------------------------------------

    async def balance(self, account_id: int) -> Decimal | None:
        value = await self._pool.fetchval("SELECT balance FROM balances WHERE account_id = $1", account_id)
        return None if value is None else Decimal(value)

    async def history(
        self, account_id: int, date_from: int | None, date_to: int | None, offset: int, limit: int
    ) -> tuple[int, list[StoredMessage]]:
        where = (
            " WHERE account_id = $1"
            " AND ($2::bigint IS NULL OR create_time >= to_timestamp($2))"
            " AND ($3::bigint IS NULL OR create_time < to_timestamp($3 + 1))"
        )
        async with self._pool.acquire() as conn:
            total = await conn.fetchval("SELECT count(*) FROM messages" + where, account_id, date_from, date_to)
            rows = await conn.fetch(
                "SELECT id, account_id, user_id, api_username, status, body_ct, to_ct, sender, country, parts,"
                " price, custom_string, from_email, list_id, contact_id,"
                " extract(epoch FROM schedule_time)::bigint AS schedule,"
                " extract(epoch FROM create_time)::bigint AS date, error_code, carrier"
                " FROM messages" + where + " ORDER BY seq DESC OFFSET $4 LIMIT $5",
                account_id, date_from, date_to, offset, limit,
            )
        return int(total), [
            StoredMessage(
                id=_mid(r["id"]), account_id=r["account_id"], user_id=r["user_id"], api_username=r["api_username"],
                status=MessageStatus(r["status"]), body_ct=bytes(r["body_ct"]), to_ct=bytes(r["to_ct"]),
                sender=r["sender"], country=r["country"], parts=r["parts"], price=Decimal(r["price"]),
                custom_string=r["custom_string"], from_email=r["from_email"], list_id=r["list_id"],
                contact_id=r["contact_id"], schedule=r["schedule"], date=r["date"], error_code=r["error_code"],
                carrier=r["carrier"],
            )
            for r in rows
        ]

    # -- delivering ---------------------------------------------------------------------------------------

    async def claim(self, message_ids: Sequence[str]) -> list[ClaimedMessage]:
        """Move the due ones of `message_ids` to SENDING and count an attempt.

        A message already SENDING is taken again: its worker died mid-batch (the carrier deduplicates by
        our message id). Final messages, scheduled ones not yet due and ones waiting for a retry are left
        alone (the outbox brings those back when their time comes).
        """
        rows = await self._pool.fetch(
            "UPDATE messages SET status = 'SENDING', attempts = attempts + 1, status_time = now()"
            " WHERE id = ANY($1::uuid[]) AND status = ANY($2::text[])"
            " AND (schedule_time IS NULL OR schedule_time <= now())"
            " AND (next_attempt_time IS NULL OR next_attempt_time <= now())"
            " RETURNING id, account_id, body_ct, to_ct, sender, attempts, is_test",
            _uuids(message_ids), _CLAIMABLE,
        )
        return [
            ClaimedMessage(
                id=_mid(r["id"]), account_id=r["account_id"], body_ct=bytes(r["body_ct"]), to_ct=bytes(r["to_ct"]),
                sender=r["sender"], attempts=r["attempts"], is_test=r["is_test"],
            )
            for r in rows
        ]

    async def record_results(
        self,
        carrier: str,
        sent: Sequence[tuple[str, str]],
        retry: Sequence[tuple[str, float]],
        failed: Sequence[tuple[str, int]],
    ) -> list[str]:
        """Apply a batch's carrier answers in one transaction; returns the ids that became FAILED.

        sent: (id, carrier ref) -> SENT; retry: (id, delay seconds) -> stays SENDING, republished by the
        outbox after the delay; failed: (id, error code) -> FAILED. Each update only moves a message
        forward (a receipt that overtook the submit acknowledgement is never undone).
        """
        async with self._pool.acquire() as conn, conn.transaction():
            if sent:
                await conn.execute(
                    "UPDATE messages m SET status = 'SENT', carrier = $3, carrier_ref = r.ref, sent_time = now(),"
                    " status_time = now(), next_attempt_time = NULL, error_code = NULL"
                    " FROM unnest($1::uuid[], $2::text[]) AS r(id, ref)"
                    " WHERE m.id = r.id AND m.status = ANY($4::text[])",
                    _uuids([s[0] for s in sent]), [s[1] for s in sent], carrier, _sources(MessageStatus.SENT),
                )
            if retry:
                ids, delays = _uuids([r[0] for r in retry]), [float(r[1]) for r in retry]
                await conn.execute(
                    "UPDATE messages m SET next_attempt_time = now() + make_interval(secs => r.delay),"
                    " error_code = 16, status_time = now()"
                    " FROM unnest($1::uuid[], $2::float8[]) AS r(id, delay)"
                    " WHERE m.id = r.id AND m.status = 'SENDING'",
                    ids, delays,
                )
                await conn.execute(
                    "INSERT INTO outbox (message_id, available_time)"
                    " SELECT r.id, now() + make_interval(secs => r.delay)"
                    " FROM unnest($1::uuid[], $2::float8[]) AS r(id, delay)",
                    ids, delays,
                )
            done: list[str] = []
            if failed:
                rows = await conn.fetch(
                    "UPDATE messages m SET status = 'FAILED', error_code = r.code, final_time = now(),"
                    " status_time = now(), next_attempt_time = NULL"
                    " FROM unnest($1::uuid[], $2::int[]) AS r(id, code)"
                    " WHERE m.id = r.id AND m.status = ANY($3::text[]) RETURNING m.id",
                    _uuids([f[0] for f in failed]), [f[1] for f in failed], _sources(MessageStatus.FAILED),
                )
                done = [_mid(r["id"]) for r in rows]
            return done

    async def apply_receipts(self, receipts: Sequence[Receipt]) -> list[str]:
        """Move messages to the receipts' final states where that is a forward move; returns ids changed.

        Repeated or late receipts change nothing (idempotent), and a message never moves backwards.
        """
        changed: list[str] = []
        by_status: dict[MessageStatus, list[Receipt]] = {}
        for r in receipts:
            by_status.setdefault(r.status, []).append(r)
        async with self._pool.acquire() as conn, conn.transaction():
            for status, items in by_status.items():
                rows = await conn.fetch(
                    "UPDATE messages m SET status = $3, error_code = r.code, status_time = now(),"
                    " final_time = CASE WHEN $4 THEN now() ELSE m.final_time END"
                    " FROM unnest($1::uuid[], $2::int[]) AS r(id, code)"
                    " WHERE m.id = r.id AND m.status = ANY($5::text[]) RETURNING m.id",
                    _uuids([i.message_id for i in items]), [i.error_code for i in items], status.value,
                    status in (MessageStatus.DELIVERED, MessageStatus.FAILED), _sources(status),
                )
                changed.extend(_mid(r["id"]) for r in rows)
        return changed


class PgSimulatorStore:
    """The carrier simulator's ledger: `carrier_sim_submissions`, one row per message it ever accepted."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record_submissions(
        self, accepted: Sequence[tuple[str, str]], receipt_delay_s: float
    ) -> dict[str, str]:
        """Record accepted (id, proposed ref); a message seen before keeps its first ref and counts again.
        Returns id -> carrier ref."""
        if not accepted:
            return {}
        rows = await self._pool.fetch(
            "INSERT INTO carrier_sim_submissions (message_id, carrier_ref, receipt_due_time)"
            " SELECT r.id, r.ref, now() + make_interval(secs => $3)"
            " FROM unnest($1::uuid[], $2::text[]) AS r(id, ref)"
            " ON CONFLICT (message_id) DO UPDATE SET"
            " submit_count = carrier_sim_submissions.submit_count + 1, last_submit_time = now()"
            " RETURNING message_id, carrier_ref",
            _uuids([a[0] for a in accepted]), [a[1] for a in accepted], float(receipt_delay_s),
        )
        return {_mid(r["message_id"]): r["carrier_ref"] for r in rows}

    async def pump_due_receipts(self, limit: int, handle: Callable[[list[str]], Awaitable[None]]) -> int:
        """Hand due, unsent receipts to `handle` and mark them sent, in one transaction (SKIP LOCKED);
        if `handle` fails they stay due. At-least-once: `handle` must be idempotent."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT message_id FROM carrier_sim_submissions"
                " WHERE receipt_time IS NULL AND receipt_due_time <= now()"
                " ORDER BY receipt_due_time LIMIT $1 FOR UPDATE SKIP LOCKED",
                limit,
            )
            if not rows:
                return 0
            ids = [r["message_id"] for r in rows]
            await handle([_mid(i) for i in ids])
            await conn.execute(
                "UPDATE carrier_sim_submissions SET receipt_time = now() WHERE message_id = ANY($1::uuid[])", ids
            )
            return len(ids)
