"""`DeliveryService`: what the dispatch worker does (deliver a batch, apply receipts, take replies from
the carrier)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any

from sendsafe.audit.v1 import event_pb2
from services.messaging.domain.delivery import ClaimedMessage, Receipt, Submission, plan_results, retry_delay
from services.messaging.domain.destinations import ALERT_DELIVERY
from services.messaging.domain.receipts import InboundInput
from services.messaging.domain.records import BODY_RECORD, TO_RECORD
from services.messaging.service import pipeline_metrics
from services.messaging.service.index_keys import IndexKeys
from services.messaging.service.ports import SERVICE, Carrier, Cipher, DeliveryStore, Queue, Record
from services.messaging.service.replies import Replies
from services.messaging.service.sender_index import SenderIndex
from svckit.audit import new_event
from svckit.envelope import DecryptFailed, aad_for
from svckit.telemetry import span

_LOG = logging.getLogger(__name__)


class DeliveryService:
    def __init__(
        self,
        store: DeliveryStore,
        queue: Queue,
        cipher: Cipher,
        carrier: Carrier,
        *,
        max_attempts: int = 5,
        retry_base_seconds: float = 1.0,
        retry_cap_seconds: float = 60.0,
        lease_seconds: float = 30.0,
        record: Record | None = None,
        senders: SenderIndex | None = None,
    ) -> None:
        self._store = store
        self._queue = queue
        self._cipher = cipher
        self._carrier = carrier
        self._max_attempts = max_attempts
        self._retry_base = retry_base_seconds
        self._retry_cap = retry_cap_seconds
        self._lease = lease_seconds
        self._record = record
        self.keys = IndexKeys(store, cipher)
        self.replies = Replies(store, cipher, self.keys, senders)  # replies to a sender identity: its account

    async def deliver(self, message_ids: Sequence[str]) -> int:
        """Claim, decrypt, submit and record one batch; returns how many were claimed.

        Raises when the outcome is unknown (database, keys service): the caller leaves the stream entries
        pending so they are delivered again. Idempotent: re-delivering a batch re-claims only what is not
        final (and not held by a live worker), and the carrier deduplicates by message id.
        """
        with span("dispatch.claim", attributes={"sendsafe.messages.requested": len(message_ids)}) as claiming:
            claimed = await self._store.claim(list(dict.fromkeys(message_ids)), self._lease)
            claiming.set_attribute("sendsafe.messages.claimed", len(claimed))
        if not claimed:
            return 0
        submissions: list[Submission] = []
        unreadable: list[tuple[str, int]] = []
        with span("dispatch.decrypt", attributes={"sendsafe.messages.count": len(claimed)}) as decrypting:
            for m in claimed:
                try:
                    body = await self._cipher.decrypt(m.account_id, aad_for(m.account_id, BODY_RECORD, m.id),
                                                      m.body_ct)
                    to = await self._cipher.decrypt(m.account_id, aad_for(m.account_id, TO_RECORD, m.id), m.to_ct)
                except DecryptFailed:  # keys destroyed or data tampered with: it can never be sent
                    unreadable.append((m.id, 7))
                    continue
                submissions.append(Submission(m.id, to.decode(), body.decode(), m.sender, m.attempts))
            decrypting.set_attribute("sendsafe.messages.unreadable", len(unreadable))
        started = time.perf_counter()
        with span("carrier.submit", kind="client", attributes={
                "sendsafe.carrier": self._carrier.name, "sendsafe.messages.count": len(submissions)}) as submitting:
            try:
                results = await self._carrier.submit(submissions) if submissions else []
                outcome = "ok"
            except Exception as exc:
                _LOG.warning("carrier %s submit failed (%s); %d messages will be retried",
                             self._carrier.name, type(exc).__name__, len(submissions))
                results = []
                outcome = "error"
                submitting.set_attribute("error.type", type(exc).__name__)
            submitting.set_attribute("sendsafe.outcome", outcome)
        if submissions:
            pipeline_metrics.CARRIER_SUBMIT.labels(self._carrier.name, outcome).observe(time.perf_counter() - started)
        unreadable_ids = {mid for mid, _ in unreadable}
        readable = [m for m in claimed if m.id not in unreadable_ids]
        sent, retry, failed = plan_results(readable, results, self._max_attempts)
        failed += unreadable
        became_failed = await self._store.record_results(
            self._carrier.name,
            [(r.message_id, r.carrier_ref) for r in sent],
            [(mid, retry_delay(attempt, self._retry_base, self._retry_cap)) for mid, attempt in retry],
            failed,
            sent_by=[r.carrier for r in sent],  # a router names the carrier that took each message
        )
        pipeline_metrics.count_results(self._carrier.name, [r.carrier for r in sent], len(retry), len(failed))
        if became_failed:
            codes = dict(failed)
            await self._queue.dead_letter([(mid, codes[mid]) for mid in became_failed])
            pipeline_metrics.DEAD_LETTERED.inc(len(became_failed))
        await self._audit(claimed, {r.message_id for r in sent}, {mid for mid, _ in retry}, set(became_failed))
        return len(claimed)

    async def apply_receipts(self, receipts: list[Receipt]) -> int:
        """Apply carrier receipts through the ordered, idempotent status transition."""
        with _receipt_span(receipts) as current:
            changed = len(await self._store.apply_receipts(receipts))
            current.set_attribute("sendsafe.receipts.changed", changed)
        return changed

    async def apply_carrier_receipts(self, receipts: list[Receipt]) -> tuple[int, int]:
        """Receipts from a carrier callback: (applied, unresolved). A receipt that names only a carrier
        reference we have not recorded yet (the receipt overtook the submit answer) is not applied; the
        caller asks the carrier to send it again rather than losing it."""
        changed, found = await self.settle_carrier_receipts(receipts)
        return changed, found.count(False)

    async def settle_carrier_receipts(self, receipts: list[Receipt]) -> tuple[int, list[bool]]:
        """`apply_carrier_receipts` with the answer per receipt: (changed, [resolved to a message]). A
        resolved receipt is stored (or was already: repeats change nothing); an unresolved one is not."""
        refs = [r.carrier_ref for r in receipts if not r.message_id and r.carrier_ref]
        known = await self._store.resolve_refs(refs) if refs else {}
        ready = [r if r.message_id else replace(r, message_id=known.get(r.carrier_ref, "")) for r in receipts]
        resolved = [r for r in ready if r.message_id]
        with _receipt_span(resolved) as current:
            changed = len(await self._store.apply_receipts(resolved)) if resolved else 0
            current.set_attribute("sendsafe.receipts.changed", changed)
            current.set_attribute("sendsafe.receipts.unresolved", len(ready) - len(resolved))
        return changed, [bool(r.message_id) for r in ready]

    async def receive_inbound(self, items: list[InboundInput]) -> int:
        """Store replies a carrier reports (matched to our messages; STOP/START change opt-outs)."""
        return len(await self.replies.receive(items))

    async def _audit(self, claimed: list[ClaimedMessage], sent: set[str], retried: set[str], failed: set[str]) -> None:
        if self._record is None:
            return
        # One event per account and cause: what alert notifications cause is marked, so no alert rule
        # matches it (an alert cannot feed on its own SMS).
        per_account: dict[tuple[int, str], list[int]] = {}
        for m in claimed:
            c = per_account.setdefault((m.account_id, m.cause if m.cause == ALERT_DELIVERY else ""), [0, 0, 0])
            c[0] += m.id in sent
            c[1] += m.id in retried
            c[2] += m.id in failed
        for (account_id, cause), (n_sent, n_retried, n_failed) in per_account.items():
            outcome = event_pb2.OUTCOME_SUCCESS if not n_failed else event_pb2.OUTCOME_FAILURE
            ev = new_event(
                SERVICE, "messaging.sms.sent", outcome=outcome, resource_type="sms_batch",
                account_id=account_id, error_reason="DELIVERY_FAILED" if n_failed else "",
                details={"sent": str(n_sent), "retried": str(n_retried), "failed": str(n_failed),
                         "carrier": self._carrier.name},
            )
            ev.cause = cause
            await self._record(ev)


def _receipt_span(receipts: Sequence[Receipt]) -> AbstractContextManager[Any]:
    """A receipt's span names the messages it settles (ids, never numbers): search `sendsafe.message_ids`
    for a message id to find its receipt after its send's trace."""
    return span("receipt.apply", attributes={"sendsafe.receipts.count": len(receipts),
                                             "sendsafe.message_ids": [r.message_id for r in receipts[:100]]})
