"""Alert use cases: alert rules (set as their owner), the alert history, the webhook secret, the alert engine
(every event once, in log order) and notification delivery."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from services.audit.domain.alerts import (
    ALERT_SUBJECT,
    DELIVERED,
    FAILED,
    MAX_DELIVERY_ATTEMPTS,
    PENDING,
    Alert,
    DeliveryJob,
    alert_cap_hit,
    alert_text,
    undeliverable,
)
from services.audit.domain.delivery import retry_delay, webhook_secret
from services.audit.domain.errors import DestinationNotVerified, RuleNotFound, TooManyRules, need_account
from services.audit.domain.evaluation import evaluate
from services.audit.domain.events import SERVICE
from services.audit.domain.paging import page_size_of, parse_page_token
from services.audit.domain.rule_index import RuleIndex
from services.audit.domain.rules import (
    MAX_RULES_PER_ACCOUNT,
    Rule,
    RuleOwner,
    RuleSpec,
    default_rules,
    normalize_rule,
    owned_spec,
)
from services.audit.service import formats
from services.audit.service.ports import AlertStore, DeliveryError, EventStore, Notifier, Record, WebhookPoster
from services.audit.service.security_notices import SecurityNotices
from svckit.audit import new_event
from svckit.webhooks import signed_headers

_LOG = logging.getLogger(__name__)


class AlertService:
    def __init__(
        self,
        store: AlertStore,
        events: EventStore,
        record: Record,
        *,
        secret_root: bytes,
        webhooks: WebhookPoster,
        notifier: Notifier | None,
        batch: int = 1000,
        retry_base: float = 5.0,
        messages_per_hour: int = 20,
        notices: SecurityNotices | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._events = events
        self._record = record
        self._secret_root = secret_root
        self._webhooks = webhooks
        self._notifier = notifier
        self._messages_per_hour = messages_per_hour
        self._notices = notices
        self._batch = batch
        self._retry_base = retry_base
        self._clock = clock
        self._index = RuleIndex()  # the accounts' rules by action, kept across passes
        self.fired = 0
        self.delivered = 0
        self.delivery_failures = 0

    @property
    def batch(self) -> int:
        """Events one `evaluate` takes at most."""
        return self._batch

    # -- rules ---------------------------------------------------------------------------------------------

    async def list_rules(self, account_id: int) -> list[Rule]:
        need_account(account_id)
        await self._store.ensure_account(account_id, default_rules())
        return await self._store.rules(account_id)

    async def create_rule(self, account_id: int, spec: RuleSpec, owner: RuleOwner | None = None) -> Rule:
        need_account(account_id)
        spec = await self._owned(account_id, await self._checked(normalize_rule(spec)), owner)
        await self._store.ensure_account(account_id, default_rules())
        # Privileged: each change's event is in the log before the change commits (fail closed).
        rule = await self._store.create_rule(
            account_id, spec, MAX_RULES_PER_ACCOUNT,
            before_commit=lambda r: self._audit("audit.alert_rule.created", r.rule_id, spec),
        )
        if rule is None:
            raise TooManyRules(f"an account has at most {MAX_RULES_PER_ACCOUNT} alert rules")
        return rule

    async def update_rule(self, account_id: int, rule_id: int, spec: RuleSpec, owner: RuleOwner | None = None
                          ) -> Rule:
        need_account(account_id)
        spec = await self._owned(account_id, await self._checked(normalize_rule(spec)), owner)
        rule = await self._store.update_rule(
            account_id, rule_id, spec, before_commit=lambda _: self._audit("audit.alert_rule.updated", rule_id, spec),
        )
        if rule is None:
            raise RuleNotFound("no such alert rule in this account")
        return rule

    async def delete_rule(self, account_id: int, rule_id: int) -> None:
        need_account(account_id)
        if not await self._store.delete_rule(account_id, rule_id):
            raise RuleNotFound("no such alert rule in this account")
        await self._audit("audit.alert_rule.deleted", rule_id, None)

    async def _owned(self, account_id: int, spec: RuleSpec, owner: RuleOwner | None) -> RuleSpec:
        """The rule as its owner sets it: SMS/email targets need the owner's sms.send and a destination the
        account verified (messaging keeps the verified destinations)."""
        spec = owned_spec(spec, owner or RuleOwner(0))
        for channel, target in spec.targets():
            if channel == "webhook":
                continue
            if self._notifier is None or not await self._notifier.verified(account_id, channel, target):
                raise DestinationNotVerified(
                    f"{channel}_to is not a verified destination of this account: verify it first"
                    " (POST /v1/messaging/notification-destinations, then enter the code sent to it)")
        return spec

    async def _checked(self, spec: RuleSpec) -> RuleSpec:
        """A webhook URL must pass the outbound-webhook policy now, not only when an alert fires."""
        return replace(spec, webhook_url=await self._webhooks.check(spec.webhook_url)) if spec.webhook_url else spec

    async def _audit(self, action: str, rule_id: int, spec: RuleSpec | None) -> None:
        details = {}
        if spec is not None:
            details = {"name": spec.name, "disabled": str(spec.disabled).lower(),
                       "channels": ",".join(ch for ch, _ in spec.targets()) or "none"}
        await self._record([new_event(SERVICE, action, resource_type="alert_rule", resource_id=str(rule_id),
                                      details=details)])

    async def list_alerts(self, account_id: int, page_size: int, page_token: str) -> tuple[list[Alert], str]:
        need_account(account_id)
        limit = page_size_of(page_size)
        alerts = await self._store.alerts(account_id, parse_page_token(page_token), limit)
        token = str(alerts[-1].alert_id) if len(alerts) == limit else ""
        return alerts, token

    async def webhook_secret(self, account_id: int, *, rotate: bool) -> tuple[str, int]:
        need_account(account_id)
        await self._store.ensure_account(account_id, default_rules())
        action = "audit.webhook_secret.rotated" if rotate else "audit.webhook_secret.revealed"

        async def evidence(version: int) -> None:  # before the rotation commits, and before the secret is shown
            await self._record([new_event(SERVICE, action, resource_type="webhook_secret", resource_id=str(version))])

        version = await self._store.secret_version(account_id, rotate=rotate, before_commit=evidence)
        return webhook_secret(self._secret_root, account_id, version), version

    # -- the engine ----------------------------------------------------------------------------------------

    async def evaluate(self) -> int:
        """Run the next batch of the log through the rules; returns how many events it took (0: nothing
        new, or another process holds the engine). Events, hits, alerts, deliveries, security notices and the
        cursor move in one transaction, so every event is evaluated exactly once."""
        async with self._store.tx() as tx:
            cursor = await tx.claim_cursor()
            if cursor is None:
                return 0
            rows = await tx.events_after(cursor, self._batch)
            if not rows:
                return 0
            facts = [formats.facts(s, leaf) for s, leaf in rows]
            accounts = sorted({f.account_id for f in facts if f.account_id > 0})
            if accounts:
                for account_id in await tx.new_accounts(accounts):
                    await tx.insert_rules(account_id, default_rules(), default=True)
                rules = await tx.rules_for(accounts)
                self._index.update(accounts, rules)  # rebuilds only the accounts whose rules changed
                thresholds = [r for r in rules if r.spec.is_threshold]
                earliest = min(f.event_time for f in facts)
                hits = await tx.window_hits([r.rule_id for r in thresholds],
                                            [r.spec.window_seconds for r in thresholds],
                                            earliest, max(f.event_time for f in facts)) if thresholds else {}
                result = evaluate(rules, facts, hits, self._index)
                await tx.insert_hits(result.hits)
                await tx.record_fires(result.fires)
                await tx.set_last_fire(result.last_fire)
                if thresholds:
                    latest = max(f.event_time for f in facts)
                    await tx.prune_hits([r.rule_id for r in thresholds],
                                        [r.spec.window_seconds for r in thresholds], latest)
                self.fired += len(result.fires)
                if self._notices is not None:
                    await self._notices.record(tx, rows, facts)
            await tx.advance_cursor(rows[-1][0])
            return len(rows)

    async def deliver_due(self, limit: int = 50, lease_seconds: float = 120.0) -> int:
        """Send the notifications that are due (each one leased, so replicas never send it twice at once)."""
        jobs = await self._store.claim_deliveries(limit, lease_seconds)
        if jobs:
            await asyncio.gather(*(self._deliver(job) for job in jobs))
        return len(jobs)

    async def _deliver(self, job: DeliveryJob) -> None:
        attempts = job.attempts + 1
        try:
            await self._send(job)
        except DeliveryError as err:
            self.delivery_failures += 1
            final = not err.retryable or attempts >= MAX_DELIVERY_ATTEMPTS
            await self._store.finish_delivery(job.delivery_id, FAILED if final else PENDING, attempts, err.reason,
                                              0.0 if final else retry_delay(attempts, self._retry_base))
            _LOG.info("alert delivery %d (%s) failed: %s", job.delivery_id, job.channel, err.reason)
        except Exception:
            _LOG.exception("alert delivery %d crashed", job.delivery_id)
            await self._store.finish_delivery(job.delivery_id, PENDING, attempts, "INTERNAL",
                                              retry_delay(attempts, self._retry_base))
        else:
            self.delivered += 1
            await self._store.finish_delivery(job.delivery_id, DELIVERED, attempts, "", 0.0)

    async def _send(self, job: DeliveryJob) -> None:
        alert = job.alert
        if job.channel == "webhook":
            leaf = (await self._events.bodies([alert.event_sequence])).get(alert.event_sequence)
            body = formats.alert_payload(job.delivery_id, job.account_id, alert, leaf)
            version = await self._store.secret_version(job.account_id)
            secret = webhook_secret(self._secret_root, job.account_id, version)
            await self._webhooks.post(job.target, body, {
                "Content-Type": "application/json",
                # The same webhook-id on every retry of this delivery: the receiver's idempotency key.
                **signed_headers([secret], f"alert_{job.delivery_id}", int(self._clock().timestamp()), body),
            })
            return
        if self._notifier is None:
            raise DeliveryError("MESSAGING_NOT_CONFIGURED", retryable=False)
        refused = undeliverable(job.rule, job.channel, job.target)
        if refused:
            raise DeliveryError(refused, retryable=False)
        assert job.rule is not None
        if job.attempts == 0:  # a retry was counted when it first went
            suppressed, first = alert_cap_hit(await self._store.count_alert_message(job.account_id),
                                              self._messages_per_hour)
            if first:
                await self._record([new_event(
                    SERVICE, "audit.alert.messages_capped", resource_type="alert_rule", resource_id=str(alert.rule_id),
                    account_id=job.account_id, details={"cap_per_hour": str(self._messages_per_hour)})])
            if suppressed:
                raise DeliveryError("ALERT_MESSAGE_CAP_REACHED", retryable=False)
        text = alert_text(alert.rule_id, alert.match_count, alert.action, alert.fire_time)
        await self._notifier.notify(job.account_id, job.channel, job.target, ALERT_SUBJECT, text,
                                    f"alert-delivery-{job.delivery_id}", job.rule)
