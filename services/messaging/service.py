"""Messaging use cases: one method per use case, one transaction each.

`MessagingService` is what the API process does (send, history, balance, the outbox relay);
`DeliveryService` is what the dispatch worker does (deliver a batch, apply receipts).
Bodies and phone numbers are only ever plaintext in memory here; they never reach a log line, a span
attribute, an error message or an audit detail.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from decimal import Decimal
from typing import Generic, Protocol, TypeVar

from sendsafe.audit.v1 import event_pb2
from services.messaging.carriers import Carrier
from services.messaging.domain import (
    BODY_RECORD,
    TO_RECORD,
    Caller,
    ClaimedMessage,
    Currency,
    HistoryItem,
    HistoryPage,
    HistoryQuery,
    InvalidAccountId,
    MessageStatus,
    MessageStatusCode,
    NewMessage,
    OutboundInput,
    PriceTable,
    Receipt,
    Rejected,
    SendItem,
    SendResult,
    StoredMessage,
    Submission,
    ValidatedMessage,
    allocate_credit,
    check_batch_size,
    clicksend_history_view,
    plan_results,
    retry_delay,
    validate_outbound,
)
from svckit.audit import new_event
from svckit.envelope import DecryptFailed, aad_for

_LOG = logging.getLogger(__name__)
SERVICE = "messaging"
T = TypeVar("T")
R = TypeVar("R")


# -- ports ------------------------------------------------------------------------------------------------


class Cipher(Protocol):
    """svckit.envelope.Envelope."""

    async def encrypt_many(self, account_id: int, items: list[tuple[bytes, bytes]]) -> list[bytes]: ...
    async def decrypt(self, account_id: int, aad: bytes, blob: bytes) -> bytes: ...


class SendTx(Protocol):
    async def lock_balance(self, account_id: int, initial: Decimal) -> Decimal: ...
    async def debit(self, account_id: int, amount: Decimal) -> None: ...
    async def insert_messages(self, messages: Sequence[NewMessage]) -> None: ...


class MessageStore(Protocol):
    def send_tx(self, *, atomic: bool = True) -> AbstractAsyncContextManager[SendTx]: ...
    async def delete_outbox(self, published: Sequence[tuple[str, int]]) -> None: ...
    async def relay_due(self, limit: int, publish: Callable[[list[str]], Awaitable[None]]) -> int: ...
    async def balance(self, account_id: int) -> Decimal | None: ...
    async def history(
        self, account_id: int, date_from: int | None, date_to: int | None, offset: int, limit: int
    ) -> tuple[int, list[StoredMessage]]: ...


class DeliveryStore(Protocol):
    async def claim(self, message_ids: Sequence[str]) -> list[ClaimedMessage]: ...
    async def record_results(
        self,
        carrier: str,
        sent: Sequence[tuple[str, str]],
        retry: Sequence[tuple[str, float]],
        failed: Sequence[tuple[str, int]],
    ) -> list[str]: ...
    async def apply_receipts(self, receipts: Sequence[Receipt]) -> list[str]: ...


class Queue(Protocol):
    async def publish(self, message_ids: Sequence[str]) -> None: ...
    async def dead_letter(self, failed: Sequence[tuple[str, int]]) -> None: ...


Record = Callable[[event_pb2.Event], Awaitable[None]]


def new_message_id() -> str:
    """ClickSend message ids are uppercase UUID strings."""
    return str(uuid.uuid4()).upper()


# -- API process ------------------------------------------------------------------------------------------


class GroupCommit(Generic[T, R]):
    """Runs one `commit(batch)` for all submissions that arrive while the previous one is running.

    The first submission commits at once (no added latency when idle); under load, requests that
    queued up meanwhile share the next commit, so a busy account's balance is locked once per batch
    instead of once per request and the database and stream see one write per batch. A failed commit
    fails every submission in it (nothing of that batch was stored).
    """

    def __init__(self, commit: Callable[[list[T]], Awaitable[list[R]]], *, max_batch: int = 200) -> None:
        self._commit = commit
        self._max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._draining = False

    async def submit(self, item: T) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, fut))
        if not self._draining:
            self._draining = True
            # The drain outlives a cancelled caller: a commit in flight always completes or fails whole.
            asyncio.get_running_loop().create_task(self._drain())
        return await asyncio.shield(fut)

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                try:
                    results = await self._commit([item for item, _ in batch])
                except Exception as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), result in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)
        finally:
            self._draining = False




class MessagingService:
    def __init__(
        self,
        store: MessageStore,
        queue: Queue,
        cipher: Cipher,
        *,
        prices: PriceTable,
        trial_credit: Decimal,
        currency: Currency,
        outbox_grace_seconds: float = 5.0,
        relay_batch: int = 500,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._queue = queue
        self._cipher = cipher
        self._prices = prices
        self._trial_credit = trial_credit
        self.currency = currency
        self._grace = outbox_grace_seconds
        self._relay_batch = relay_batch
        self._clock = clock
        self._published: list[tuple[str, int]] = []
        self._group: GroupCommit[tuple[int, list[NewMessage]], list[bool]] = GroupCommit(self._commit_group)

    async def send_sms(self, caller: Caller, inputs: Sequence[OutboundInput]) -> SendResult:
        """Validate, price, encrypt and store 1-1000 messages with their outbox rows and the debit in one
        transaction, then publish them. Rejected messages are reported per message and not stored."""
        check_batch_size(len(inputs))
        now = int(self._clock())
        checked = [
            validate_outbound(m.body, m.to, m.country, m.sender, m.schedule, now) for m in inputs
        ]
        valid: list[tuple[int, ValidatedMessage, str, Decimal]] = []
        items: list[SendItem | None] = []
        for i, (m, v) in enumerate(zip(inputs, checked, strict=True)):
            if isinstance(v, Rejected):
                items.append(SendItem(m, v.status_code, to=m.to, sender=m.sender, schedule=m.schedule))
                continue
            free = caller.test_mode or v.is_test
            price = Decimal(0) if free else self._prices.price_for(v.recipient.country, v.sms.parts)
            valid.append((i, v, new_message_id(), price))
            items.append(None)

        if not valid:
            return SendResult(date=now, items=[it for it in items if it is not None], currency=self.currency)
        acct = caller.account_id
        blobs = await self._cipher.encrypt_many(
            acct,
            [
                pair
                for _, v, mid, _ in valid
                for pair in (
                    (aad_for(acct, BODY_RECORD, mid), v.body.encode()),
                    (aad_for(acct, TO_RECORD, mid), v.to.encode()),
                )
            ],
        )
        candidates: list[NewMessage] = []
        for k, (i, v, mid, price) in enumerate(valid):
            m = inputs[i]
            scheduled = v.schedule is not None and v.schedule > now
            candidates.append(NewMessage(
                id=mid, account_id=acct, user_id=caller.user_id, api_username=caller.api_username,
                status=MessageStatus.SCHEDULED if scheduled else MessageStatus.QUEUED,
                body_ct=blobs[2 * k], to_ct=blobs[2 * k + 1], sender=v.sender, country=v.recipient.country,
                encoding=v.sms.encoding.value, parts=v.sms.parts, price=price,
                is_test=caller.test_mode or v.is_test, custom_string=m.custom_string, source=m.source,
                from_email=m.from_email, list_id=m.list_id, contact_id=m.contact_id,
                schedule=v.schedule if scheduled else None,
                publish_at=v.schedule if scheduled and v.schedule is not None else now + int(self._grace + 0.999),
            ))
        fits = await self._group.submit((acct, candidates))
        for (i, v, mid, price), ok in zip(valid, fits, strict=True):
            m = inputs[i]
            if ok:
                items[i] = SendItem(
                    m, MessageStatusCode.SUCCESS, message_id=mid, to=v.to, country=v.recipient.country,
                    sender=v.sender, parts=v.sms.parts, price=price, schedule=v.schedule or 0,
                )
            else:
                items[i] = SendItem(m, MessageStatusCode.INSUFFICIENT_CREDIT, to=v.to, country=v.recipient.country,
                                    sender=v.sender, parts=v.sms.parts, schedule=m.schedule)
        return SendResult(date=now, items=[it for it in items if it is not None], currency=self.currency)

    async def _commit_group(self, group: list[tuple[int, list[NewMessage]]]) -> list[list[bool]]:
        """Store the sends of several concurrent requests in one transaction (group commit): lock each
        paying account's balance once (in account order, so concurrent groups cannot deadlock), pay for
        messages request by request in arrival order, insert every accepted row with its outbox row in
        one statement, debit each account once, then publish everything queued with one stream write.
        Returns, per request, which of its messages were paid for."""
        paying = sorted({acct for acct, rows in group if any(r.price for r in rows)})
        results: list[list[bool]] = []
        accepted: list[NewMessage] = []
        # Free sends (test numbers, test accounts) lock and debit nothing: one statement, no transaction.
        async with self._store.send_tx(atomic=bool(paying)) as tx:
            balances = {acct: await tx.lock_balance(acct, self._trial_credit) for acct in paying}
            spent = dict.fromkeys(paying, Decimal(0))
            for acct, rows in group:
                if acct in balances:
                    fits = allocate_credit(balances[acct] - spent[acct], [r.price for r in rows])
                    spent[acct] += sum((r.price for r, ok in zip(rows, fits, strict=True) if ok), Decimal(0))
                else:
                    fits = [True] * len(rows)
                results.append(fits)
                accepted.extend(r for r, ok in zip(rows, fits, strict=True) if ok)
            await tx.insert_messages(accepted)
            for acct in paying:
                await tx.debit(acct, spent[acct])
        due = [r for r in accepted if r.status is MessageStatus.QUEUED]
        if due:
            try:
                await self._queue.publish([r.id for r in due])
            except Exception as exc:  # the relay republishes from the outbox
                _LOG.warning("dispatch publish failed (%s); %d messages left to the outbox relay",
                             type(exc).__name__, len(due))
            else:
                self._published.extend((r.id, r.publish_at) for r in due)
        return results

    async def forget_published(self) -> int:
        """Delete the outbox rows of messages published since the last call (batched, off the send path)."""
        done, self._published = self._published, []
        if done:
            try:
                await self._store.delete_outbox(done)
            except Exception:
                self._published.extend(done)
                raise
        return len(done)

    async def relay_outbox(self) -> int:
        """Publish what is due in the outbox: unpublished sends, scheduled messages, retries."""
        total = 0
        while True:
            n = await self._store.relay_due(self._relay_batch, self._queue.publish)
            total += n
            if n < self._relay_batch:
                return total

    async def list_history(self, caller: Caller, query: HistoryQuery) -> HistoryPage:
        """A page of the account's messages, newest first, bodies and numbers decrypted."""
        w = query.window
        total, rows = await self._store.history(caller.account_id, query.date_from, query.date_to, w.offset, w.limit)
        items = []
        for m in rows:
            body = await self._cipher.decrypt(m.account_id, aad_for(m.account_id, BODY_RECORD, m.id), m.body_ct)
            to = await self._cipher.decrypt(m.account_id, aad_for(m.account_id, TO_RECORD, m.id), m.to_ct)
            items.append(HistoryItem(m, body.decode(), to.decode(), clicksend_history_view(m.status, m.error_code)))
        return HistoryPage(window=w, total=total, items=items)

    async def get_balance(self, account_id: int) -> Decimal:
        """The account's credit (the trial credit for an account that never sent)."""
        if account_id <= 0:
            raise InvalidAccountId("account_id must be a positive account id")
        value = await self._store.balance(account_id)
        return self._trial_credit if value is None else value


# -- worker process ---------------------------------------------------------------------------------------


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
        record: Record | None = None,
    ) -> None:
        self._store = store
        self._queue = queue
        self._cipher = cipher
        self._carrier = carrier
        self._max_attempts = max_attempts
        self._retry_base = retry_base_seconds
        self._retry_cap = retry_cap_seconds
        self._record = record

    async def deliver(self, message_ids: Sequence[str]) -> int:
        """Claim, decrypt, submit and record one batch; returns how many were claimed.

        Raises when the outcome is unknown (database, keys service): the caller leaves the stream entries
        pending so they are delivered again. Idempotent: re-delivering a batch re-claims only what is not
        final, and the carrier deduplicates by message id.
        """
        claimed = await self._store.claim(list(dict.fromkeys(message_ids)))
        if not claimed:
            return 0
        submissions: list[Submission] = []
        unreadable: list[tuple[str, int]] = []
        for m in claimed:
            try:
                body = await self._cipher.decrypt(m.account_id, aad_for(m.account_id, BODY_RECORD, m.id), m.body_ct)
                to = await self._cipher.decrypt(m.account_id, aad_for(m.account_id, TO_RECORD, m.id), m.to_ct)
            except DecryptFailed:  # keys destroyed or data tampered with: it can never be sent
                unreadable.append((m.id, 7))
                continue
            submissions.append(Submission(m.id, to.decode(), body.decode(), m.sender, m.attempts))
        try:
            results = await self._carrier.submit(submissions) if submissions else []
        except Exception as exc:
            _LOG.warning("carrier %s submit failed (%s); %d messages will be retried",
                         self._carrier.name, type(exc).__name__, len(submissions))
            results = []
        unreadable_ids = {mid for mid, _ in unreadable}
        readable = [m for m in claimed if m.id not in unreadable_ids]
        sent, retry, failed = plan_results(readable, results, self._max_attempts)
        failed += unreadable
        became_failed = await self._store.record_results(
            self._carrier.name,
            [(r.message_id, r.carrier_ref) for r in sent],
            [(mid, retry_delay(attempt, self._retry_base, self._retry_cap)) for mid, attempt in retry],
            failed,
        )
        if became_failed:
            codes = dict(failed)
            await self._queue.dead_letter([(mid, codes[mid]) for mid in became_failed])
        await self._audit(claimed, {r.message_id for r in sent}, {mid for mid, _ in retry}, set(became_failed))
        return len(claimed)

    async def apply_receipts(self, receipts: list[Receipt]) -> int:
        """Apply carrier receipts through the ordered, idempotent status transition."""
        return len(await self._store.apply_receipts(receipts))

    async def _audit(self, claimed: list[ClaimedMessage], sent: set[str], retried: set[str], failed: set[str]) -> None:
        if self._record is None:
            return
        per_account: dict[int, list[int]] = {}
        for m in claimed:
            c = per_account.setdefault(m.account_id, [0, 0, 0])
            c[0] += m.id in sent
            c[1] += m.id in retried
            c[2] += m.id in failed
        for account_id, (n_sent, n_retried, n_failed) in per_account.items():
            outcome = event_pb2.OUTCOME_SUCCESS if not n_failed else event_pb2.OUTCOME_FAILURE
            await self._record(new_event(
                SERVICE, "messaging.sms.sent", outcome=outcome, resource_type="sms_batch",
                account_id=account_id, error_reason="DELIVERY_FAILED" if n_failed else "",
                details={"sent": str(n_sent), "retried": str(n_retried), "failed": str(n_failed),
                         "carrier": self._carrier.name},
            ))
