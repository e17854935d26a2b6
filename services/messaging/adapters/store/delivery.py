"""What the dispatch worker writes: claims with a lease, submit results, receipts (ordered, idempotent
status transitions), with the receipt rows and webhook jobs they cause."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from services.messaging.adapters.store.rows import PoolSql, id_text, source_statuses, uuid_texts
from services.messaging.domain.delivery import ClaimedMessage, Receipt
from services.messaging.domain.statuses import MessageStatus
from services.messaging.service import pipeline_metrics
from svckit.telemetry import link_traces

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


# A receipt row and (when the account has a receipt webhook) a webhook job for every message that just
# reached a final state: appended to a data-modifying CTE named `changed` (id) that returns those ids.
_CHANGED_RETURNING = (
    " RETURNING m.id, m.account_id, m.user_id, m.status, m.error_code, m.custom_string, m.sent_time, m.create_time,"
    " m.is_test, m.price, m.traceparent"
)
# A receipt row and (when the account has a receipt webhook) a webhook job for every message that just
# reached a final state: appended to a data-modifying CTE named `changed` with `_CHANGED_RETURNING` (the
# statement's other parts see the table as it was before it, so the new values come from RETURNING).
_RECEIPTS_FOR_CHANGED = (
    ", r AS (INSERT INTO receipts (account_id, user_id, message_id, status, error_code, custom_string, send_time,"
    "  is_test)"
    "  SELECT account_id, user_id, id, status, error_code, custom_string, coalesce(sent_time, create_time), is_test"
    "  FROM changed ON CONFLICT (message_id) DO NOTHING RETURNING account_id, message_id),"
    " w AS (INSERT INTO webhook_outbox (account_id, event, ref, traceparent)"
    "  SELECT r.account_id, 'sms.receipt', upper(r.message_id::text), c.traceparent FROM r"
    "  JOIN changed c ON c.id = r.message_id"
    "  JOIN account_settings s ON s.account_id = r.account_id AND s.receipt_webhook_url <> '')"
)



# Our ids for carrier references. `carrier_ref <> ''` lets a generic plan (asyncpg's prepared statements) use
# the partial index messages_carrier_ref: without it PostgreSQL cannot prove the parameter non-empty and scans
# the whole table for every batch of receipts (seen in the peer benchmark).
BY_CARRIER_REF = "SELECT id, carrier_ref FROM messages WHERE carrier_ref = ANY($1::text[]) AND carrier_ref <> ''"


class DeliverySql(PoolSql):
    """What the dispatch worker writes: claims, submit results, receipts."""

    async def claim(self, message_ids: Sequence[str], lease_s: float = 30.0) -> list[ClaimedMessage]:
        """Move the due ones of `message_ids` to SENDING and count an attempt.

        A message another worker holds is taken only once that worker's lease has run out (it died
        mid-batch; the carrier deduplicates by our message id). Final messages, scheduled ones not yet due
        and ones waiting for a retry are left alone (the outbox brings those back when their time comes).
        """
        rows = await self._pool.fetch(_CLAIM, uuid_texts(message_ids), float(lease_s))
        return [
            ClaimedMessage(
                id=id_text(r["id"]), account_id=r["account_id"], body_ct=bytes(r["body_ct"] or b""),
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
        *,
        sent_by: Sequence[str] | None = None,
    ) -> list[str]:
        """Apply a batch's carrier answers in one transaction; returns the ids that became FAILED.

        sent: (id, carrier ref) -> SENT, recorded as sent by `carrier` or, when a router chose per message,
        by the name at the same position in `sent_by` ("" there = `carrier`); retry: (id, delay seconds) ->
        stays SENDING, published again by the outbox after the delay; failed: (id, error code) -> FAILED with
        a receipt, and refunded: no carrier ever accepted it. Each update only moves a message forward (a
        receipt that overtook the submit acknowledgement is never undone).
        """
        async with self._pool.acquire() as conn, conn.transaction():
            if sent:
                ids = uuid_texts([s[0] for s in sent])
                await conn.execute(
                    "WITH u AS (UPDATE messages m SET status = 'SENT', carrier = coalesce(nullif(r.by, ''), $3),"
                    " carrier_ref = r.ref,"
                    " sent_time = now(), status_time = now(), next_attempt_time = NULL, error_code = NULL"
                    " FROM unnest($1::uuid[], $2::text[], $5::text[]) AS r(id, ref, by)"
                    " WHERE m.id = r.id AND m.status = ANY($4::text[]) RETURNING m.id)"
                    " DELETE FROM outbox WHERE message_id = ANY($1::uuid[])",
                    ids, [s[1] for s in sent], carrier, source_statuses(MessageStatus.SENT),
                    list(sent_by) if sent_by is not None else [""] * len(sent),
                )
            if retry:
                ids, delays = uuid_texts([r[0] for r in retry]), [float(r[1]) for r in retry]
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
                    + _RECEIPTS_FOR_CHANGED + " SELECT id, " + _AGE + " FROM changed",
                    uuid_texts([f[0] for f in failed]), [f[1] for f in failed], source_statuses(MessageStatus.FAILED),
                )
                done = [id_text(r["id"]) for r in rows]
                _observe_final("FAILED", rows)
            return done

    async def resolve_refs(self, refs: Sequence[str]) -> dict[str, str]:
        """Our message ids for carrier references (those we know)."""
        if not refs:
            return {}
        rows = await self._pool.fetch(BY_CARRIER_REF, sorted(set(refs)))
        return {r["carrier_ref"]: id_text(r["id"]) for r in rows}

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
                rows = await conn.fetch(BY_CARRIER_REF, refs)
                by_ref = {r["carrier_ref"]: id_text(r["id"]) for r in rows}
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
                    + (_RECEIPTS_FOR_CHANGED if final else "") + " SELECT id, traceparent, " + _AGE + " FROM changed",
                    uuid_texts(list(items)), list(items.values()), status.value, final, source_statuses(status),
                )
                changed.extend(id_text(r["id"]) for r in rows)
                # The receipt's span (current) links to the trace of each send it settles.
                link_traces(r["traceparent"] for r in rows if r["traceparent"])
                if final:
                    _observe_final(status.value, rows)
        return changed


# Seconds from a message's acceptance to the final state it just reached (for the pipeline's histogram).
_AGE = "extract(epoch FROM clock_timestamp() - create_time)::float8 AS age"


def _observe_final(status: str, rows: Sequence[Any]) -> None:
    hist = pipeline_metrics.ACCEPT_TO_FINAL.labels(status)
    for r in rows:
        hist.observe(max(0.0, float(r["age"])))


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36
