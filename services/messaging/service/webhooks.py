"""`WebhookService` delivers receipts and replies to the customers' HTTPS webhooks."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from services.messaging.domain.settings import WEBHOOK_SECRET_RECORD
from services.messaging.domain.webhooks import (
    WEBHOOK_MAX_ATTEMPTS,
    WebhookEvent,
    WebhookJob,
    inbound_payload,
    receipt_payload,
    webhook_backoff,
)
from services.messaging.service.custom_strings import with_custom_string
from services.messaging.service.ports import Cipher, WebhookSender, WebhookStore
from services.messaging.service.replies import Replies
from svckit.envelope import aad_for
from svckit.telemetry import set_span_attributes, span
from svckit.webhooks import signed_headers


class WebhookService:
    """Delivers receipts and replies to the customers' HTTPS webhooks: JSON, signed with the account's
    secret the Standard Webhooks way (`webhook-id` = the delivery, the same on every retry;
    `webhook-timestamp` of the attempt; `webhook-signature: v1,<base64 HMAC-SHA256>`), retried with
    backoff up to WEBHOOK_MAX_ATTEMPTS, every attempt logged."""

    def __init__(self, store: WebhookStore, cipher: Cipher, replies: Replies, sender: WebhookSender, *,
                 max_attempts: int = WEBHOOK_MAX_ATTEMPTS, backoff_base_s: float = 5.0, backoff_cap_s: float = 3600.0,
                 lease_s: float = 60.0, concurrency: int = 16, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._cipher = cipher
        self._replies = replies
        self._sender = sender
        self._max_attempts = max_attempts
        self._base = backoff_base_s
        self._cap = backoff_cap_s
        self._lease = lease_s
        self._concurrency = concurrency
        self._clock = clock

    async def deliver_due(self, limit: int = 100) -> int:
        jobs = await self._store.claim_webhooks(limit, self._lease)
        if jobs:
            sem = asyncio.Semaphore(self._concurrency)

            async def one(job: WebhookJob) -> None:
                async with sem:
                    await self._deliver(job)

            await asyncio.gather(*(one(j) for j in jobs))
        return len(jobs)

    async def _deliver(self, job: WebhookJob) -> None:
        attributes: dict[str, object] = {"sendsafe.webhook.event": job.event.value, "sendsafe.webhook.id": job.id}
        if job.event is WebhookEvent.RECEIPT:
            attributes["sendsafe.message_id"] = job.ref  # an id, never the URL, the payload or a number
        # Internal (a root CLIENT span is not sampled); linked to the send's trace, which it may outlive by hours.
        with span("webhook.deliver", attributes=attributes, links=[job.traceparent]):
            await self._deliver_one(job)

    async def _deliver_one(self, job: WebhookJob) -> None:
        settings = await self._store.settings(job.account_id)
        url = job.url or (settings.receipt_webhook_url if job.event is WebhookEvent.RECEIPT
                          else settings.inbound_webhook_url)
        payload = await self._payload(job)
        if not url or payload is None or (settings.webhook_secret_ct is None and not job.url):
            await self._store.finish_webhook(job, outcome="ABANDONED", host="", http_status=0,
                                             error="no webhook configured", duration_ms=0, retry_in_s=None)
            return
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "SendSafe-Webhooks/1",
                   "X-SendSafe-Event": job.event.value}
        if settings.webhook_secret_ct is not None:
            acct = job.account_id
            secret = await self._cipher.decrypt(
                acct, aad_for(acct, WEBHOOK_SECRET_RECORD, str(acct)), settings.webhook_secret_ct)
            headers.update(signed_headers([secret], f"msg_{job.id}", int(self._clock()), body))
        attempt = await self._sender.post(url, body, headers)
        if 200 <= attempt.status < 300:
            outcome, retry = "DELIVERED", None
        elif attempt.refused:
            outcome, retry = "REFUSED", None
        elif job.attempts >= self._max_attempts:
            outcome, retry = "ABANDONED", None
        else:
            outcome, retry = "RETRYING", webhook_backoff(job.attempts, self._base, self._cap)
        set_span_attributes(**{"sendsafe.outcome": outcome, "http.response.status_code": attempt.status})
        await self._store.finish_webhook(job, outcome=outcome, host=attempt.host, http_status=attempt.status,
                                         error=attempt.error, duration_ms=attempt.duration_ms, retry_in_s=retry)

    async def _payload(self, job: WebhookJob) -> dict[str, object] | None:
        if job.event is WebhookEvent.RECEIPT:
            r = await self._store.receipt_for_message(job.ref)
            return None if r is None else receipt_payload(await with_custom_string(self._cipher, r))
        inbound = await self._store.inbound_by_id(job.ref)
        return None if inbound is None else inbound_payload(await self._replies.view(inbound))
