"""All SQL of the messaging service (and of its built-in carrier simulator's ledger)."""

from __future__ import annotations

import binascii
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import orjson

from services.messaging.domain.delivery import ClaimedMessage, Receipt
from services.messaging.domain.destinations import Destination
from services.messaging.domain.history import STATUS_SORT_NAME, HistoryFilter, HistorySort
from services.messaging.domain.optouts import OptAction
from services.messaging.domain.receipts import InboundRecord, NewInbound, OriginalMessage, ReceiptRecord
from services.messaging.domain.records import NewMessage, StoredMessage
from services.messaging.domain.settings import MessagingSettings, SettingsUpdate
from services.messaging.domain.statuses import MessageStatus, sources_of
from services.messaging.domain.webhooks import WebhookDelivery, WebhookEvent, WebhookJob

_MESSAGE_COLUMNS = (
    "id", "account_id", "user_id", "api_username", "status", "body_ct", "to_ct", "sender", "country",
    "encoding", "parts", "price", "is_test", "custom_string", "source", "from_email", "list_id", "contact_id",
    "schedule_time", "to_hash", "cause",
)
# Messages and their outbox rows in ONE statement (a data-modifying CTE): a single round trip, atomic
# on its own, so a send that debits nothing needs no explicit transaction. Messages due now share one
# `outbox_batches` row (its id is returned); scheduled ones get an `outbox` row each, due at their time.
# The rows travel as ONE JSON parameter (json_to_recordset): encoding 20 typed arrays of 100 values
# parameter by parameter was the largest single cost of a 100-message send in this process; orjson
# writes the whole batch in microseconds and PostgreSQL parses it in C. Binary values go as base64
# (shorter than hex, so less JSON for PostgreSQL to parse: ~10% less CPU for the insert in all).
def _insert_sql(funded: bool) -> str:
    """The bulk insert; `funded`: also debit $4 from account $5's balance, and insert only if the balance
    covered it (a conditional UPDATE first, every insert guarded by its result)."""
    guard = " AND EXISTS (SELECT 1 FROM d)" if funded else ""
    debit = (
        "d AS (UPDATE balances SET balance = balance - $4::numeric, update_time = now()"
        " WHERE account_id = $5 AND balance >= $4::numeric RETURNING 1),"
        if funded else ""
    )
    return (
        "WITH " + debit + "r AS (SELECT * FROM json_to_recordset($1::json) AS r(id uuid, account_id bigint,"
        " user_id bigint, api_username text, status text, body_ct text, to_ct text, sender text, country text,"
        " encoding text, parts int, price numeric, is_test bool, custom_string text, source text, from_email text,"
        " list_id text, contact_id text, schedule bigint, to_hash text, at bigint, cause text)),"
        " m AS (INSERT INTO messages (" + ", ".join(_MESSAGE_COLUMNS) + ")"
        " SELECT id, account_id, user_id, api_username, status, decode(body_ct, 'base64'),"
        " decode(to_ct, 'base64'), sender, country, encoding, parts, price, is_test, custom_string, source,"
        " from_email, list_id, contact_id, to_timestamp(schedule), decode(to_hash, 'base64'), cause FROM r"
        " WHERE true" + guard + "),"
        " o AS (INSERT INTO outbox (message_id, available_time) SELECT id, to_timestamp(at) FROM r"
        " WHERE at IS NOT NULL" + guard + "),"
        " b AS (INSERT INTO outbox_batches (message_ids, available_time)"
        " SELECT $2::uuid[], to_timestamp($3::bigint) WHERE cardinality($2::uuid[]) > 0" + guard + " RETURNING id)"
        " SELECT " + ("EXISTS (SELECT 1 FROM d)" if funded else "true") + " AS done, (SELECT id FROM b) AS batch"
    )


_INSERT_MESSAGES = _insert_sql(funded=False)
_INSERT_FUNDED = _insert_sql(funded=True)


# Who may be claimed for sending: due queued/scheduled messages, a retry whose time has come, and a message
# another worker claimed longer than the lease ago without settling it (that worker died).
_CLAIM = (
    "WITH c AS (UPDATE messages SET status = 'SENDING', attempts = attempts + 1, status_time = now(),"
    " next_attempt_time = NULL"
    " WHERE id = ANY($1::uuid[]) AND ("
    "  (status IN ('QUEUED', 'SCHEDULED') AND (schedule_time IS NULL OR schedule_time <= now()))"
    "  OR (status = 'SENDING' AND next_attempt_time IS NOT NULL AND next_attempt_time <= now())"
    "  OR (status = 'SENDING' AND next_attempt_time IS NULL AND status_time < now() - make_interval(secs => $2)))"
    " RETURNING id, account_id, body_ct, to_ct, sender, attempts, is_test, cause)"
    # The message's outbox row stays until it settles: should this worker die with the stream entry
    # lost too, the relay publishes it again when the row's time comes (after the lease: see above).
    " SELECT * FROM c"
)
_FINAL = [MessageStatus.DELIVERED.value, MessageStatus.FAILED.value, MessageStatus.CANCELLED.value]
_NOT_SETTLED = [MessageStatus.QUEUED.value, MessageStatus.SCHEDULED.value, MessageStatus.SENDING.value]
# A receipt row and (when the account has a receipt webhook) a webhook job for every message that just
# reached a final state: appended to a data-modifying CTE named `changed` (id) that returns those ids.
_CHANGED_RETURNING = (
    " RETURNING m.id, m.account_id, m.user_id, m.status, m.error_code, m.custom_string, m.sent_time, m.create_time,"
    " m.is_test, m.price"
)
# A receipt row and (when the account has a receipt webhook) a webhook job for every message that just
# reached a final state: appended to a data-modifying CTE named `changed` with `_CHANGED_RETURNING` (the
# statement's other parts see the table as it was before it, so the new values come from RETURNING).
_RECEIPTS_FOR_CHANGED = (
    ", r AS (INSERT INTO receipts (account_id, user_id, message_id, status, error_code, custom_string, send_time,"
    "  is_test)"
    "  SELECT account_id, user_id, id, status, error_code, custom_string, coalesce(sent_time, create_time), is_test"
    "  FROM changed ON CONFLICT (message_id) DO NOTHING RETURNING account_id, message_id),"
    " w AS (INSERT INTO webhook_outbox (account_id, event, ref)"
    "  SELECT r.account_id, 'sms.receipt', upper(r.message_id::text) FROM r"
    "  JOIN account_settings s ON s.account_id = r.account_id AND s.receipt_webhook_url <> '')"
)


def _uuids(ids: Sequence[str]) -> list[str]:
    """Message ids for a uuid[] parameter: asyncpg parses the text itself (no uuid.UUID objects)."""
    return list(ids)


def _b64(value: bytes) -> str:
    return binascii.b2a_base64(value, newline=False).decode()


def _mid(value: uuid.UUID | None) -> str:
    return "" if value is None else str(value).upper()


def _unix(value: datetime | None) -> int:
    return 0 if value is None else int(value.timestamp())


def _sources(status: MessageStatus) -> list[str]:
    return sorted(s.value for s in sources_of(status))


def _bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


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

    async def opted_out(self, pairs: Sequence[tuple[int, bytes]]) -> set[tuple[int, bytes]]:
        """Which (account, number hash) pairs are on their account's opt-out list."""
        if not pairs:
            return set()
        rows = await self._conn.fetch(
            "SELECT o.account_id, o.number_hash FROM opt_outs o"
            " JOIN unnest($1::bigint[], $2::bytea[]) AS p(account_id, h)"
            " ON o.account_id = p.account_id AND o.number_hash = p.h",
            [p[0] for p in pairs], [p[1] for p in pairs],
        )
        return {(r["account_id"], bytes(r["number_hash"])) for r in rows}

    async def claim_idempotency(self, keys: Sequence[tuple[int, bytes, bytes]]) -> set[tuple[int, bytes]]:
        """Insert (account, key hash, request hash) rows; returns the (account, key hash) this transaction
        won. A key another transaction holds makes this wait for it, then lose (its answer is replayed)."""
        if not keys:
            return set()
        rows = await self._conn.fetch(
            "INSERT INTO idempotency_keys (account_id, key_hash, request_hash)"
            " SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bytea[])"
            " ON CONFLICT (account_id, key_hash) DO NOTHING RETURNING account_id, key_hash",
            [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
        )
        return {(r["account_id"], bytes(r["key_hash"])) for r in rows}

    async def save_idempotent_results(self, results: Sequence[tuple[int, bytes, bytes]]) -> None:
        """(account, key hash, encrypted answer) for the keys this transaction won."""
        if results:
            await self._conn.execute(
                "UPDATE idempotency_keys k SET result_ct = r.ct"
                " FROM unnest($1::bigint[], $2::bytea[], $3::bytea[]) AS r(account_id, key_hash, ct)"
                " WHERE k.account_id = r.account_id AND k.key_hash = r.key_hash",
                [r[0] for r in results], [r[1] for r in results], [r[2] for r in results],
            )

    async def _insert(
        self, messages: Sequence[NewMessage], funded: tuple[int, Decimal] | None
    ) -> tuple[bool, int | None]:
        """One statement, the rows as one JSON document; `funded`: (account, amount) to debit first."""
        queued = MessageStatus.QUEUED
        rows = orjson.dumps([
            {"id": m.id, "account_id": m.account_id, "user_id": m.user_id, "api_username": m.api_username,
             "status": m.status.value, "body_ct": _b64(m.body_ct), "to_ct": _b64(m.to_ct), "sender": m.sender,
             "country": m.country, "encoding": m.encoding, "parts": m.parts, "price": str(m.price),
             "is_test": m.is_test, "custom_string": m.custom_string, "source": m.source,
             "from_email": m.from_email, "list_id": m.list_id, "contact_id": m.contact_id,
             "schedule": m.schedule, "to_hash": None if m.to_hash is None else _b64(m.to_hash),
             "at": None if m.status is queued else m.publish_at, "cause": m.cause}
            for m in messages
        ]).decode()
        due = [m for m in messages if m.status is queued]
        args = (rows, [m.id for m in due], max((m.publish_at for m in due), default=0))
        if funded is None:
            row = await self._conn.fetchrow(_INSERT_MESSAGES, *args)
        else:
            row = await self._conn.fetchrow(_INSERT_FUNDED, *args, str(funded[1]), funded[0])
        assert row is not None
        return bool(row["done"]), row["batch"]

    async def insert_messages(self, messages: Sequence[NewMessage]) -> int | None:
        """Bulk-insert message rows and their outbox rows. Returns the id of the outbox batch holding the
        messages due now (None when there are none), for `mark_published`."""
        if not messages:
            return None
        return (await self._insert(messages, None))[1]

    async def insert_funded(
        self, messages: Sequence[NewMessage], account_id: int, amount: Decimal
    ) -> tuple[bool, int | None]:
        """Debit `amount` from the account and insert the messages, in one statement, only if the balance
        covers it (an account without a balance row yet is not covered). Returns (done, outbox batch id);
        when not done, nothing was written."""
        return await self._insert(messages, (account_id, amount))


_HISTORY_COLUMNS = (
    "id, account_id, user_id, api_username, status, body_ct, to_ct, sender, country, parts,"
    " price, custom_string, from_email, list_id, contact_id,"
    " extract(epoch FROM schedule_time)::bigint AS schedule,"
    " extract(epoch FROM create_time)::bigint AS date, error_code, carrier, cause"
)
_STATUS_NAME_SQL = "CASE status " + " ".join(
    f"WHEN '{s.value}' THEN '{name}'" for s, name in STATUS_SORT_NAME.items()
) + " END"


def _history_where(
    account_id: int, date_from: int | None, date_to: int | None, f: HistoryFilter, to_hash: bytes | None
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
        add("custom_string = ?", f.custom_string)
    if f.message_id is not None:
        add("id = ?::uuid", uuid.UUID(f.message_id))
    if f.username is not None:
        add("api_username = ?", f.username)
    if f.country is not None:
        add("country = ?", f.country)
    return " WHERE " + " AND ".join(where), args


def _order_by(sort: HistorySort) -> str:
    d = "DESC" if sort.descending else "ASC"
    column = {"username": "api_username", "from": "sender", "status": _STATUS_NAME_SQL}.get(sort.field)
    if column is None:  # date, and the content sorts (done in memory over the newest rows)
        return f" ORDER BY seq {d if sort.field == 'date' else 'DESC'}"
    return f" ORDER BY {column} {d}, seq DESC"


def _stored(r: asyncpg.Record) -> StoredMessage:
    return StoredMessage(
        id=_mid(r["id"]), account_id=r["account_id"], user_id=r["user_id"], api_username=r["api_username"],
        status=MessageStatus(r["status"]), body_ct=_bytes(r["body_ct"]), to_ct=bytes(r["to_ct"]),
        sender=r["sender"], country=r["country"], parts=r["parts"], price=Decimal(r["price"]),
        custom_string=r["custom_string"], from_email=r["from_email"], list_id=r["list_id"],
        contact_id=r["contact_id"], schedule=r["schedule"], date=r["date"], error_code=r["error_code"],
        carrier=r["carrier"], cause=r["cause"],
    )


def _receipt(r: asyncpg.Record) -> ReceiptRecord:
    return ReceiptRecord(
        id=r["id"], account_id=r["account_id"], user_id=r["user_id"], message_id=_mid(r["message_id"]),
        status=MessageStatus(r["status"]), error_code=r["error_code"], custom_string=r["custom_string"],
        timestamp_send=_unix(r["send_time"]), timestamp=_unix(r["receipt_time"]),
    )


_INBOUND_COLUMNS = (
    "i.id, i.account_id, i.original_message_id, i.from_ct, i.to_number, i.body_ct, i.custom_string,"
    " i.create_time, m.body_ct AS original_body_ct"
)
_INBOUND_FROM = " FROM inbound_messages i LEFT JOIN messages m ON m.id = i.original_message_id"


def _inbound(r: asyncpg.Record) -> InboundRecord:
    return InboundRecord(
        id=_mid(r["id"]), account_id=r["account_id"], original_message_id=_mid(r["original_message_id"]),
        from_ct=bytes(r["from_ct"]), to=r["to_number"], body_ct=_bytes(r["body_ct"]),
        custom_string=r["custom_string"], timestamp=_unix(r["create_time"]),
        original_body_ct=_bytes(r["original_body_ct"]), original_account_id=r["account_id"],
    )


def _settings(account_id: int, r: asyncpg.Record | None) -> MessagingSettings:
    if r is None:
        return MessagingSettings(account_id=account_id)
    return MessagingSettings(
        account_id=account_id, receipt_webhook_url=r["receipt_webhook_url"],
        inbound_webhook_url=r["inbound_webhook_url"], body_retention_days=r["body_retention_days"],
        staff_content_access=r["staff_content_access"], webhook_secret_ct=_bytes(r["webhook_secret_ct"]),
        update_time=_unix(r["update_time"]),
    )


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

    async def mark_published(self, batches: Sequence[int], redeliver_s: float) -> None:
        """Outbox batches just published: they wait `redeliver_s` more before the relay publishes what is
        left of them again. A batch the relay already republished meanwhile keeps the relay's time."""
        if batches:
            await self._pool.execute(
                "UPDATE outbox_batches SET available_time = now() + make_interval(secs => $2), publish_count = 1"
                " WHERE id = ANY($1::bigint[]) AND publish_count = 0",
                list(batches), float(redeliver_s),
            )

    async def relay_due(self, limit: int, publish: Callable[[list[str]], Awaitable[None]], redeliver_s: float) -> int:
        """Publish the messages whose outbox time has come and move that time on by `redeliver_s`, doubled
        for every earlier republication (capped at 32x), in one transaction (SKIP LOCKED, so several relays
        share the work; a failed publish rolls back). Rows of messages that have settled are deleted.
        Returns how many outbox rows and batches it looked at (up to `limit` of each)."""
        return await self._relay_messages(limit, publish, redeliver_s) + await self._relay_batches(
            limit, publish, redeliver_s)

    async def _relay_batches(
        self, limit: int, publish: Callable[[list[str]], Awaitable[None]], redeliver_s: float
    ) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT b.id, ARRAY(SELECT m.id FROM messages m WHERE m.id = ANY(b.message_ids)"
                " AND m.status = ANY($2::text[])) AS live"
                " FROM outbox_batches b WHERE b.available_time <= now() ORDER BY b.available_time LIMIT $1"
                " FOR UPDATE OF b SKIP LOCKED",
                limit, _NOT_SETTLED,
            )
            if not rows:
                return 0
            live = [r for r in rows if r["live"]]
            if live:
                await publish(list(dict.fromkeys(_mid(i) for r in live for i in r["live"])))
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
        self, limit: int, publish: Callable[[list[str]], Awaitable[None]], redeliver_s: float
    ) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT o.id, o.message_id, m.status FROM outbox o LEFT JOIN messages m ON m.id = o.message_id"
                " WHERE o.available_time <= now() ORDER BY o.available_time LIMIT $1 FOR UPDATE OF o SKIP LOCKED",
                limit,
            )
            if not rows:
                return 0
            live = [r for r in rows if r["status"] in _NOT_SETTLED]
            dead = [r["id"] for r in rows if r["status"] not in _NOT_SETTLED]
            if live:
                await publish(list(dict.fromkeys(_mid(r["message_id"]) for r in live)))
                await conn.execute(
                    "UPDATE outbox SET publish_count = publish_count + 1,"
                    " available_time = now() + make_interval(secs => $2 * 2 ^ least(publish_count, 5))"
                    " WHERE id = ANY($1::bigint[])",
                    [r["id"] for r in live], float(redeliver_s),
                )
            if dead:
                await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", dead)
            return len(rows)

    # -- account keys, idempotency ------------------------------------------------------------------------

    async def index_key_ct(self, account_id: int) -> bytes | None:
        return _bytes(await self._pool.fetchval(
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
        return None if row is None else (bytes(row["request_hash"]), _bytes(row["result_ct"]))

    async def forget_idempotency_keys(self, older_than_s: int) -> int:
        result = await self._pool.execute(
            "DELETE FROM idempotency_keys WHERE create_time < now() - make_interval(secs => $1)", float(older_than_s)
        )
        return int(result.split()[-1])

    # -- reading ------------------------------------------------------------------------------------------

    async def balance(self, account_id: int) -> Decimal | None:
        value = await self._pool.fetchval("SELECT balance FROM balances WHERE account_id = $1", account_id)
        return None if value is None else Decimal(value)

    async def history(
        self, account_id: int, date_from: int | None, date_to: int | None, offset: int, limit: int,
        f: HistoryFilter | None = None, sort: HistorySort | None = None, to_hash: bytes | None = None,
    ) -> tuple[int, list[StoredMessage]]:
        """A page of an account's messages matching the database-side filters, and their count."""
        where, args = _history_where(account_id, date_from, date_to, f or HistoryFilter(), to_hash)
        n = len(args)
        async with self._pool.acquire() as conn:
            total = await conn.fetchval("SELECT count(*) FROM messages" + where, *args)
            rows = await conn.fetch(
                f"SELECT {_HISTORY_COLUMNS} FROM messages{where}{_order_by(sort or HistorySort())}"
                f" OFFSET ${n + 1} LIMIT ${n + 2}",
                *args, offset, limit,
            )
        return int(total), [_stored(r) for r in rows]

    # -- cancelling ---------------------------------------------------------------------------------------

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

    async def cancel_scheduled(self, account_id: int, custom_string: str | None) -> int:
        """Cancel the account's scheduled messages (only those with `custom_string` when given)."""
        async with self._pool.acquire() as conn, conn.transaction():
            if custom_string is None:
                return await self._cancel(conn, account_id, "status = 'SCHEDULED' AND $2::text IS NULL", None)
            return await self._cancel(conn, account_id, "status = 'SCHEDULED' AND custom_string = $2", custom_string)

    @staticmethod
    async def _cancel(conn: asyncpg.Connection, account_id: int, which: str, arg: Any) -> int:
        row = await conn.fetchrow(
            "WITH c AS (UPDATE messages SET status = 'CANCELLED', status_time = now(), final_time = now()"
            f" WHERE account_id = $1 AND {which} AND status = ANY($3::text[]) RETURNING id, price),"
            " o AS (DELETE FROM outbox WHERE message_id IN (SELECT id FROM c)),"
            " b AS (UPDATE balances SET balance = balance + (SELECT coalesce(sum(price), 0) FROM c),"
            " update_time = now() WHERE account_id = $1 AND (SELECT count(*) FROM c) > 0)"
            " SELECT count(*) AS n FROM c",
            account_id, arg, _sources(MessageStatus.CANCELLED),
        )
        return int(row["n"]) if row else 0

    # -- receipts -----------------------------------------------------------------------------------------

    async def unread_receipts(self, account_id: int, offset: int, limit: int) -> tuple[int, list[ReceiptRecord]]:
        async with self._pool.acquire() as conn:
            total = await conn.fetchval(
                "SELECT count(*) FROM receipts WHERE account_id = $1 AND read_time IS NULL", account_id)
            rows = await conn.fetch(
                "SELECT * FROM receipts WHERE account_id = $1 AND read_time IS NULL ORDER BY id DESC"
                " OFFSET $2 LIMIT $3",
                account_id, offset, limit,
            )
        return int(total), [_receipt(r) for r in rows]

    async def receipt(self, account_id: int, message_id: str) -> ReceiptRecord | None:
        row = await self._pool.fetchrow(
            "SELECT * FROM receipts WHERE account_id = $1 AND message_id = $2", account_id, uuid.UUID(message_id))
        return None if row is None else _receipt(row)

    async def receipt_by_id(self, receipt_id: int) -> ReceiptRecord | None:
        row = await self._pool.fetchrow("SELECT * FROM receipts WHERE id = $1", receipt_id)
        return None if row is None else _receipt(row)

    async def receipt_for_message(self, message_id: str) -> ReceiptRecord | None:
        row = await self._pool.fetchrow("SELECT * FROM receipts WHERE message_id = $1", uuid.UUID(message_id))
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
                " VALUES ($1, $2, $3, 'DELIVERED', now(), true) RETURNING *",
                account_id, user_id, uuid.UUID(message_id),
            )
            if url:
                await conn.execute(
                    "INSERT INTO webhook_outbox (account_id, event, ref, url) VALUES ($1, 'sms.receipt', $2, $3)",
                    account_id, message_id, url,
                )
        return _receipt(row)

    # -- replies and opt-outs -----------------------------------------------------------------------------

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
        return OriginalMessage(_mid(row["id"]), row["account_id"], row["user_id"], row["custom_string"],
                               row["sender"])

    async def message_to_ct(self, account_id: int, message_id: str) -> tuple[bytes, str, str] | None:
        """(encrypted recipient, sender, custom_string) of one of the account's messages."""
        row = await self._pool.fetchrow(
            "SELECT to_ct, sender, custom_string FROM messages WHERE id = $1 AND account_id = $2",
            uuid.UUID(message_id), account_id,
        )
        return None if row is None else (bytes(row["to_ct"]), row["sender"], row["custom_string"])

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

    # -- settings, retention, webhooks --------------------------------------------------------------------

    async def settings(self, account_id: int) -> MessagingSettings:
        row = await self._pool.fetchrow("SELECT * FROM account_settings WHERE account_id = $1", account_id)
        return _settings(account_id, row)

    async def update_settings(self, account_id: int, update: SettingsUpdate, new_secret_ct: bytes | None = None,
                              before_commit: Callable[[MessagingSettings], Awaitable[None]] | None = None,
                              ) -> MessagingSettings:
        """Apply the set fields; `new_secret_ct` replaces the webhook secret (None keeps it). `before_commit`
        (the change's audit event) runs inside the transaction: if it raises, nothing changes."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO account_settings AS s (account_id, receipt_webhook_url, inbound_webhook_url,"
                " body_retention_days, staff_content_access, webhook_secret_ct)"
                " VALUES ($1, coalesce($2, ''), coalesce($3, ''), coalesce($4, 0), coalesce($5, false), $6)"
                " ON CONFLICT (account_id) DO UPDATE SET"
                " receipt_webhook_url = coalesce($2, s.receipt_webhook_url),"
                " inbound_webhook_url = coalesce($3, s.inbound_webhook_url),"
                " body_retention_days = coalesce($4, s.body_retention_days),"
                " staff_content_access = coalesce($5, s.staff_content_access),"
                " webhook_secret_ct = coalesce($6, s.webhook_secret_ct), update_time = now()"
                " RETURNING *",
                account_id, update.receipt_webhook_url, update.inbound_webhook_url, update.body_retention_days,
                update.staff_content_access, new_secret_ct,
            )
            saved = _settings(account_id, row)
            if before_commit is not None:
                await before_commit(saved)
            return saved

    async def redact_expired(self, limit: int) -> int:
        """Redact bodies (outbound and replies) older than their account's retention, keeping metadata.
        Messages not yet settled are never redacted."""
        async with self._pool.acquire() as conn, conn.transaction():
            n = await conn.fetchval(
                "WITH due AS (SELECT m.id FROM messages m JOIN account_settings s ON s.account_id = m.account_id"
                " WHERE s.body_retention_days > 0 AND m.body_ct IS NOT NULL AND m.status = ANY($2::text[])"
                " AND m.create_time < now() - make_interval(days => s.body_retention_days) LIMIT $1"
                " FOR UPDATE OF m SKIP LOCKED),"
                " u AS (UPDATE messages SET body_ct = NULL, redact_time = now() WHERE id IN (SELECT id FROM due)"
                " RETURNING 1) SELECT count(*) FROM u",
                limit, [MessageStatus.SENT.value, *_FINAL],
            )
            k = await conn.fetchval(
                "WITH due AS (SELECT i.id FROM inbound_messages i"
                " JOIN account_settings s ON s.account_id = i.account_id"
                " WHERE s.body_retention_days > 0 AND i.body_ct IS NOT NULL"
                " AND i.create_time < now() - make_interval(days => s.body_retention_days) LIMIT $1"
                " FOR UPDATE OF i SKIP LOCKED),"
                " u AS (UPDATE inbound_messages SET body_ct = NULL, redact_time = now()"
                " WHERE id IN (SELECT id FROM due) RETURNING 1) SELECT count(*) FROM u",
                limit,
            )
        return int(n) + int(k)

    async def claim_webhooks(self, limit: int, lease_s: float) -> list[WebhookJob]:
        """Take due webhook jobs for `lease_s` (another notifier takes them over after that) and count the
        attempt."""
        rows = await self._pool.fetch(
            "UPDATE webhook_outbox SET attempts = attempts + 1, available_time = now() + make_interval(secs => $2)"
            " WHERE id IN (SELECT id FROM webhook_outbox WHERE available_time <= now() ORDER BY available_time"
            " LIMIT $1 FOR UPDATE SKIP LOCKED)"
            " RETURNING id, account_id, event, ref, attempts, url",
            limit, float(lease_s),
        )
        return [WebhookJob(r["id"], r["account_id"], WebhookEvent(r["event"]), r["ref"], r["attempts"], r["url"])
                for r in rows]

    async def finish_webhook(self, job: WebhookJob, *, outcome: str, host: str, http_status: int, error: str,
                             duration_ms: int, retry_in_s: float | None) -> None:
        """Log the attempt; then retry the job after `retry_in_s`, or drop it (delivered or given up)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO webhook_deliveries (account_id, event, ref, host, attempt, outcome, http_status, error,"
                " duration_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                job.account_id, job.event.value, job.ref, host, job.attempts, outcome, http_status, error[:200],
                duration_ms,
            )
            if retry_in_s is None:
                await conn.execute("DELETE FROM webhook_outbox WHERE id = $1", job.id)
            else:
                await conn.execute(
                    "UPDATE webhook_outbox SET available_time = now() + make_interval(secs => $2) WHERE id = $1",
                    job.id, float(retry_in_s),
                )

    async def webhook_deliveries(self, account_id: int, limit: int, before_id: int) -> list[WebhookDelivery]:
        rows = await self._pool.fetch(
            "SELECT * FROM webhook_deliveries WHERE account_id = $1 AND ($2 = 0 OR id < $2) ORDER BY id DESC"
            " LIMIT $3",
            account_id, before_id, limit,
        )
        return [
            WebhookDelivery(r["id"], r["event"], r["ref"], r["host"], r["attempt"], r["outcome"], r["http_status"],
                            r["error"], r["duration_ms"], _unix(r["create_time"]))
            for r in rows
        ]

    # -- delivering ---------------------------------------------------------------------------------------

    async def claim(self, message_ids: Sequence[str], lease_s: float = 30.0) -> list[ClaimedMessage]:
        """Move the due ones of `message_ids` to SENDING and count an attempt.

        A message another worker holds is taken only once that worker's lease has run out (it died
        mid-batch; the carrier deduplicates by our message id). Final messages, scheduled ones not yet due
        and ones waiting for a retry are left alone (the outbox brings those back when their time comes).
        """
        rows = await self._pool.fetch(_CLAIM, _uuids(message_ids), float(lease_s))
        return [
            ClaimedMessage(
                id=_mid(r["id"]), account_id=r["account_id"], body_ct=bytes(r["body_ct"] or b""),
                to_ct=bytes(r["to_ct"]), sender=r["sender"], attempts=r["attempts"], is_test=r["is_test"],
                cause=r["cause"],
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

        sent: (id, carrier ref) -> SENT; retry: (id, delay seconds) -> stays SENDING, published again by the
        outbox after the delay; failed: (id, error code) -> FAILED with a receipt, and refunded: no carrier
        ever accepted it. Each update only moves a message forward (a receipt that overtook the submit
        acknowledgement is never undone).
        """
        async with self._pool.acquire() as conn, conn.transaction():
            if sent:
                ids = _uuids([s[0] for s in sent])
                await conn.execute(
                    "WITH u AS (UPDATE messages m SET status = 'SENT', carrier = $3, carrier_ref = r.ref,"
                    " sent_time = now(), status_time = now(), next_attempt_time = NULL, error_code = NULL"
                    " FROM unnest($1::uuid[], $2::text[]) AS r(id, ref)"
                    " WHERE m.id = r.id AND m.status = ANY($4::text[]) RETURNING m.id)"
                    " DELETE FROM outbox WHERE message_id = ANY($1::uuid[])",
                    ids, [s[1] for s in sent], carrier, _sources(MessageStatus.SENT),
                )
            if retry:
                ids, delays = _uuids([r[0] for r in retry]), [float(r[1]) for r in retry]
                await conn.execute(
                    "WITH u AS (UPDATE messages m SET next_attempt_time = now() + make_interval(secs => r.delay),"
                    " error_code = 16, status_time = now()"
                    " FROM unnest($1::uuid[], $2::float8[]) AS r(id, delay)"
                    " WHERE m.id = r.id AND m.status = 'SENDING' RETURNING m.id, r.delay)"
                    " INSERT INTO outbox (message_id, available_time)"
                    " SELECT id, now() + make_interval(secs => delay) FROM u"
                    " ON CONFLICT (message_id) DO UPDATE SET available_time = EXCLUDED.available_time,"
                    " publish_count = 0",
                    ids, delays,
                )
            done: list[str] = []
            if failed:
                rows = await conn.fetch(
                    "WITH changed AS (UPDATE messages m SET status = 'FAILED', error_code = r.code,"
                    " final_time = now(), status_time = now(), next_attempt_time = NULL"
                    " FROM unnest($1::uuid[], $2::int[]) AS r(id, code)"
                    " WHERE m.id = r.id AND m.status = ANY($3::text[])" + _CHANGED_RETURNING + "),"
                    " refund AS (UPDATE balances b SET balance = b.balance + s.total, update_time = now()"
                    " FROM (SELECT account_id, sum(price) AS total FROM changed GROUP BY account_id) s"
                    " WHERE b.account_id = s.account_id),"
                    " o AS (DELETE FROM outbox WHERE message_id = ANY($1::uuid[]))"
                    + _RECEIPTS_FOR_CHANGED + " SELECT id FROM changed",
                    _uuids([f[0] for f in failed]), [f[1] for f in failed], _sources(MessageStatus.FAILED),
                )
                done = [_mid(r["id"]) for r in rows]
            return done

    async def resolve_refs(self, refs: Sequence[str]) -> dict[str, str]:
        """Our message ids for carrier references (those we know)."""
        if not refs:
            return {}
        rows = await self._pool.fetch(
            "SELECT id, carrier_ref FROM messages WHERE carrier_ref = ANY($1::text[])", sorted(set(refs)))
        return {r["carrier_ref"]: _mid(r["id"]) for r in rows}

    async def apply_receipts(self, receipts: Sequence[Receipt]) -> list[str]:
        """Move messages to the receipts' final states where that is a forward move, with one receipt row
        (and webhook job) each; returns the ids changed. A receipt names our message id or, failing that,
        the carrier's reference. Repeated or late receipts change nothing, a message never moves backwards.
        """
        changed: list[str] = []
        async with self._pool.acquire() as conn, conn.transaction():
            # Receipts that name only the carrier's reference: find our ids first (an indexed lookup).
            refs = sorted({r.carrier_ref for r in receipts if r.carrier_ref and not _is_uuid(r.message_id)})
            by_ref: dict[str, str] = {}
            if refs:
                rows = await conn.fetch(
                    "SELECT id, carrier_ref FROM messages WHERE carrier_ref = ANY($1::text[])", refs)
                by_ref = {r["carrier_ref"]: _mid(r["id"]) for r in rows}
            by_status: dict[MessageStatus, dict[str, int | None]] = {}
            for r in receipts:
                mid = r.message_id.upper() if _is_uuid(r.message_id) else by_ref.get(r.carrier_ref, "")
                if mid:
                    by_status.setdefault(r.status, {}).setdefault(mid, r.error_code)
            for status, items in by_status.items():
                final = status in (MessageStatus.DELIVERED, MessageStatus.FAILED)
                rows = await conn.fetch(
                    "WITH changed AS (UPDATE messages m SET status = $3, error_code = r.code, status_time = now(),"
                    " final_time = CASE WHEN $4 THEN now() ELSE m.final_time END"
                    " FROM unnest($1::uuid[], $2::int[]) AS r(id, code)"
                    " WHERE m.id = r.id AND m.status = ANY($5::text[])" + _CHANGED_RETURNING + "),"
                    " o AS (DELETE FROM outbox WHERE message_id IN (SELECT id FROM changed))"
                    + (_RECEIPTS_FOR_CHANGED if final else "") + " SELECT id FROM changed",
                    _uuids(list(items)), list(items.values()), status.value, final, _sources(status),
                )
                changed.extend(_mid(r["id"]) for r in rows)
        return changed


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


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
