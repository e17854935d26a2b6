"""SIEM forwarding use cases: each account's destination, and pushing its events there from a persisted
cursor."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from services.audit.domain.delivery import retry_delay, webhook_secret
from services.audit.domain.errors import need_account
from services.audit.domain.events import SERVICE
from services.audit.domain.forwarding import ForwardingSpec, ForwardingState, normalize_forwarding
from services.audit.domain.rules import default_rules
from services.audit.domain.siem import FORMAT_CEF, FORMAT_JSONL
from services.audit.service import formats
from services.audit.service.ports import AlertStore, DeliveryError, EventStore, Record, WebhookPoster
from svckit.audit import new_event
from svckit.webhooks import signed_headers


class ForwardingService:
    def __init__(
        self,
        store: AlertStore,
        events: EventStore,
        record: Record,
        *,
        secret_root: bytes,
        webhooks: WebhookPoster,
        batch: int = 500,
        retry_base: float = 2.0,
        trace_url_template: str = "",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._events = events
        self._record = record
        self._secret_root = secret_root
        self._webhooks = webhooks
        self._batch = batch
        self._retry_base = retry_base
        self._trace_url_template = trace_url_template
        self._clock = clock
        self.forwarded = 0
        self.failures = 0

    async def get(self, account_id: int) -> ForwardingState | None:
        need_account(account_id)
        return await self._store.forwarding(account_id)

    async def set(self, account_id: int, spec: ForwardingSpec) -> ForwardingState:
        need_account(account_id)
        spec = normalize_forwarding(spec)
        if spec.enabled:  # the outbound-webhook policy now, not only at the first delivery
            spec = replace(spec, url=await self._webhooks.check(spec.url))
        await self._store.ensure_account(account_id, default_rules())
        event = new_event(
            SERVICE, "audit.forwarding.updated", resource_type="forwarding", resource_id=str(account_id),
            details={"enabled": str(spec.enabled).lower(), "format": "cef" if spec.format == FORMAT_CEF else "jsonl",
                     "backfill": str(spec.backfill).lower()},
        )
        # Privileged: the event is in the log before the new destination commits (fail closed).
        return await self._store.set_forwarding(account_id, spec, before_commit=lambda _: self._record([event]))

    async def forward_due(self, limit: int = 20, lease_seconds: float = 60.0) -> int:
        """One batch for each destination that has undelivered events; returns how many were delivered."""
        total = 0
        for dest in await self._store.claim_forwardings(limit, lease_seconds):
            total += await self._forward(dest)
        return total

    async def _forward(self, dest: ForwardingState) -> int:
        rows = await self._events.account_events(dest.account_id, dest.delivered_sequence, None, self._batch)
        if not rows:
            return 0
        body, content_type = formats.forward_body(rows, dest.spec.format or FORMAT_JSONL,
                                                     self._trace_url_template)
        version = await self._store.secret_version(dest.account_id)
        secret = webhook_secret(self._secret_root, dest.account_id, version)
        first, last = rows[0][0], rows[-1][0]
        try:  # the webhook-id names the batch's events, so retrying the same batch repeats it
            await self._webhooks.post(dest.spec.url, body, {
                "Content-Type": content_type,
                **signed_headers([secret], f"fwd_{dest.account_id}_{first}_{last}", int(self._clock().timestamp()),
                                 body),
                "X-SendSafe-Events": f"{first}-{last}",
            })
        except DeliveryError as err:
            self.failures += 1
            await self._store.forwarding_failed(dest.account_id, err.reason,
                                                retry_delay(dest.consecutive_failures + 1, self._retry_base, 600.0))
            return 0
        await self._store.forwarded(dest.account_id, dest.delivered_sequence, rows[-1][0])
        self.forwarded += len(rows)
        return len(rows)
