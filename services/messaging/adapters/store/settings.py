"""Per-account settings, body retention, and customer webhook jobs and their delivery log."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg

from services.messaging.adapters.store.rows import FINAL_STATUSES, PoolSql, bytes_or_none, unix_of
from services.messaging.domain.settings import MessagingSettings, SettingsUpdate
from services.messaging.domain.statuses import MessageStatus
from services.messaging.domain.webhooks import WebhookDelivery, WebhookEvent, WebhookJob


def _settings(account_id: int, r: asyncpg.Record | None) -> MessagingSettings:
    if r is None:
        return MessagingSettings(account_id=account_id)
    return MessagingSettings(
        account_id=account_id, receipt_webhook_url=r["receipt_webhook_url"],
        inbound_webhook_url=r["inbound_webhook_url"], body_retention_days=r["body_retention_days"],
        staff_content_access=r["staff_content_access"], webhook_secret_ct=bytes_or_none(r["webhook_secret_ct"]),
        update_time=unix_of(r["update_time"]),
    )


class SettingsSql(PoolSql):
    """Per-account settings, body retention, and customer webhook jobs and their log."""

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
        """Redact bodies (outbound and replies) older than their account's retention, and de-identify their
        numbers (recipient and sender gone with their keyed hashes; the message's country stays), keeping the
        other metadata. Messages not yet settled are never redacted."""
        async with self._pool.acquire() as conn, conn.transaction():
            n = await conn.fetchval(
                "WITH due AS (SELECT m.id FROM messages m JOIN account_settings s ON s.account_id = m.account_id"
                " WHERE s.body_retention_days > 0 AND m.body_ct IS NOT NULL AND m.status = ANY($2::text[])"
                " AND m.create_time < now() - make_interval(days => s.body_retention_days) LIMIT $1"
                " FOR UPDATE OF m SKIP LOCKED),"
                " u AS (UPDATE messages SET body_ct = NULL, to_ct = NULL, to_hash = NULL, redact_time = now()"
                " WHERE id IN (SELECT id FROM due)"
                " RETURNING 1) SELECT count(*) FROM u",
                limit, [MessageStatus.SENT.value, *FINAL_STATUSES],
            )
            k = await conn.fetchval(
                "WITH due AS (SELECT i.id FROM inbound_messages i"
                " JOIN account_settings s ON s.account_id = i.account_id"
                " WHERE s.body_retention_days > 0 AND i.body_ct IS NOT NULL"
                " AND i.create_time < now() - make_interval(days => s.body_retention_days) LIMIT $1"
                " FOR UPDATE OF i SKIP LOCKED),"
                " u AS (UPDATE inbound_messages SET body_ct = NULL, from_ct = NULL, from_hash = NULL,"
                " redact_time = now()"
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
            " RETURNING id, account_id, event, ref, attempts, url, traceparent",
            limit, float(lease_s),
        )
        return [WebhookJob(r["id"], r["account_id"], WebhookEvent(r["event"]), r["ref"], r["attempts"], r["url"],
                           r["traceparent"] or "") for r in rows]

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
                            r["error"], r["duration_ms"], unix_of(r["create_time"]))
            for r in rows
        ]
