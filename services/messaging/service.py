"""Messaging use cases: one method per use case, one transaction each.

`MessagingService` is what the API process does (send, price, history, receipts, replies, cancelling,
settings, the outbox relay and retention); `DeliveryService` is what the dispatch worker does (deliver a
batch, apply receipts, take replies from the carrier); `WebhookService` delivers customer webhooks.
Bodies and phone numbers are only ever plaintext in memory here; they never reach a log line, a span
attribute, an error message or an audit detail.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal
from typing import Any, Protocol

from sendsafe.audit.v1 import event_pb2
from services.messaging.carriers import Carrier
from services.messaging.domain.delivery import ClaimedMessage, Receipt, Submission, plan_results, retry_delay
from services.messaging.domain.destinations import ALERT_DELIVERY, DESTINATION_VERIFICATION
from services.messaging.domain.errors import (
    InvalidAccountId,
    InvalidRecipient,
    MessageNotFound,
    MessageStatusCode,
    NotCancellable,
)
from services.messaging.domain.history import (
    SEARCH_WINDOW,
    HistoryItem,
    HistoryPage,
    HistoryQuery,
    HistorySort,
    check_content_search,
    matches_content,
)
from services.messaging.domain.idempotency import (
    IDEMPOTENCY_RECORD,
    IDEMPOTENCY_TTL_S,
    IdempotencyKeyReused,
    check_idempotency_key,
    decode_send_result,
    encode_send_result,
    idempotency_key_hash,
    request_fingerprint,
)
from services.messaging.domain.limits import (
    LimitRequest,
    LimitVerdict,
    RateConfig,
    destination_prefix,
    limit_error,
    limit_request,
)
from services.messaging.domain.optouts import opt_action
from services.messaging.domain.outbound import Rejected, ValidatedMessage, check_batch_size, validate_outbound
from services.messaging.domain.paging import PageWindow, unix_time
from services.messaging.domain.pricing import Currency, PriceTable, allocate_credit
from services.messaging.domain.privacy import (
    INDEX_KEY_RECORD,
    INDEX_KEY_SIZE,
    MASKED_BODY,
    NumberIndexer,
    check_retention_days,
    mask_number,
    number_index,
    prefix_token,
)
from services.messaging.domain.receipts import (
    InboundInput,
    InboundPage,
    InboundRecord,
    InboundView,
    NewInbound,
    ReceiptPage,
    ReceiptRecord,
    TestModeOnly,
)
from services.messaging.domain.recipients import parse_recipient
from services.messaging.domain.records import (
    BODY_RECORD,
    TO_RECORD,
    Caller,
    NewMessage,
    OutboundInput,
    SendItem,
    SendResult,
    StoredMessage,
    check_message_id,
)
from services.messaging.domain.settings import WEBHOOK_SECRET_RECORD, MessagingSettings, SettingsUpdate
from services.messaging.domain.statuses import MessageStatus, clicksend_history_view
from services.messaging.domain.webhooks import (
    WEBHOOK_MAX_ATTEMPTS,
    WebhookDelivery,
    WebhookEvent,
    WebhookJob,
    inbound_payload,
    receipt_payload,
    webhook_backoff,
)
from svckit.audit import new_event
from svckit.envelope import DecryptFailed, aad_for
from svckit.errors import PermissionDenied
from svckit.groupcommit import GroupCommit
from svckit.webhooks import Attempt, check_destination, new_secret, signed_headers

_LOG = logging.getLogger(__name__)
SERVICE = "messaging"
TEST_INBOUND_BODY = "This is a test inbound message."
TEST_INBOUND_FROM = "+61411111111"
TEST_INBOUND_TO = "+61422222222"
POLL = "poll"


# -- ports ------------------------------------------------------------------------------------------------


class Cipher(Protocol):
    """svckit.envelope.Envelope."""

    async def encrypt(self, account_id: int, aad: bytes, plaintext: bytes) -> bytes: ...
    async def encrypt_many(self, account_id: int, items: list[tuple[bytes, bytes]]) -> list[bytes]: ...
    async def decrypt(self, account_id: int, aad: bytes, blob: bytes) -> bytes: ...


class SendTx(Protocol):
    async def lock_balance(self, account_id: int, initial: Decimal) -> Decimal: ...
    async def debit(self, account_id: int, amount: Decimal) -> None: ...
    async def opted_out(self, pairs: Sequence[tuple[int, bytes]]) -> set[tuple[int, bytes]]: ...
    async def claim_idempotency(self, keys: Sequence[tuple[int, bytes, bytes]]) -> set[tuple[int, bytes]]: ...
    async def save_idempotent_results(self, results: Sequence[tuple[int, bytes, bytes]]) -> None: ...
    async def insert_messages(self, messages: Sequence[NewMessage]) -> int | None: ...  # outbox batch id
    async def insert_funded(
        self, messages: Sequence[NewMessage], account_id: int, amount: Decimal
    ) -> tuple[bool, int | None]: ...  # (debited and inserted, outbox batch id); nothing written if not


class KeyStore(Protocol):
    async def index_key_ct(self, account_id: int) -> bytes | None: ...
    async def add_index_key_ct(self, account_id: int, blob: bytes) -> bytes: ...


class InboundStore(KeyStore, Protocol):
    async def original(self, ref: str) -> Any: ...
    async def message_to_ct(self, account_id: int, message_id: str) -> tuple[bytes, str, str] | None: ...
    async def add_inbound(self, items: Sequence[NewInbound], test_url: str = "") -> list[str]: ...


class MessageStore(InboundStore, Protocol):
    def send_tx(self, *, atomic: bool = True) -> AbstractAsyncContextManager[SendTx]: ...
    async def mark_published(self, batches: Sequence[int], redeliver_s: float) -> None: ...
    async def relay_due(
        self, limit: int, publish: Callable[[list[str]], Awaitable[None]], redeliver_s: float
    ) -> int: ...
    async def balance(self, account_id: int) -> Decimal | None: ...
    async def history(
        self, account_id: int, date_from: int | None, date_to: int | None, offset: int, limit: int,
        f: Any = None, sort: HistorySort | None = None, to_hash: bytes | None = None,
    ) -> tuple[int, list[StoredMessage]]: ...
    async def idempotent_result(self, account_id: int, key_hash: bytes) -> tuple[bytes, bytes | None] | None: ...
    async def forget_idempotency_keys(self, older_than_s: int) -> int: ...
    async def opted_out(self, pairs: Sequence[tuple[int, bytes]]) -> set[tuple[int, bytes]]: ...
    async def cancel(self, account_id: int, message_id: str) -> MessageStatus | None: ...
    async def cancel_scheduled(self, account_id: int, custom_string: str | None) -> int: ...
    async def unread_receipts(self, account_id: int, offset: int, limit: int) -> tuple[int, list[ReceiptRecord]]: ...
    async def receipt(self, account_id: int, message_id: str) -> ReceiptRecord | None: ...
    async def mark_receipts_read(self, account_id: int, before: int | None) -> int: ...
    async def add_test_receipt(self, account_id: int, user_id: int, message_id: str, url: str) -> ReceiptRecord: ...
    async def unread_inbound(self, account_id: int, offset: int, limit: int) -> tuple[int, list[InboundRecord]]: ...
    async def inbound_for_original(self, account_id: int, original_message_id: str) -> InboundRecord | None: ...
    async def inbound_by_id(self, inbound_id: str) -> InboundRecord | None: ...
    async def mark_inbound_read(self, account_id: int, before: int | None) -> int: ...
    async def mark_inbound_read_by_id(self, account_id: int, inbound_id: str) -> int: ...
    async def settings(self, account_id: int) -> MessagingSettings: ...
    async def update_settings(self, account_id: int, update: SettingsUpdate, new_secret_ct: bytes | None = None,
                              before_commit: Callable[[MessagingSettings], Awaitable[None]] | None = None,
                              ) -> MessagingSettings: ...
    async def redact_expired(self, limit: int) -> int: ...
    async def webhook_deliveries(self, account_id: int, limit: int, before_id: int) -> list[WebhookDelivery]: ...


class DeliveryStore(InboundStore, Protocol):
    async def resolve_refs(self, refs: Sequence[str]) -> dict[str, str]: ...
    async def claim(self, message_ids: Sequence[str], lease_s: float = 30.0) -> list[ClaimedMessage]: ...
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


class Limiter(Protocol):
    async def check(self, requests: Sequence[LimitRequest]) -> list[LimitVerdict]: ...


Record = Callable[[event_pb2.Event], Awaitable[None]]


def new_message_id() -> str:
    """ClickSend message ids are uppercase UUID strings (random, version 4)."""
    return new_message_ids(1)[0]


def new_message_ids(n: int) -> list[str]:
    """`n` random (version 4) message ids from one read of the system's random source."""
    raw = bytearray(os.urandom(16 * n))
    raw[6::16] = bytes((b & 0x0F) | 0x40 for b in raw[6::16])  # version 4
    raw[8::16] = bytes((b & 0x3F) | 0x80 for b in raw[8::16])  # RFC 4122 variant
    h = raw.hex().upper()
    return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-{h[i + 20:i + 32]}"
            for i in range(0, 32 * n, 32)]


# -- shared by the API and the worker -----------------------------------------------------------------------


class IndexKeys:
    """Each account's index key (for keyed hashes of numbers): created on first use, stored encrypted under
    the account's own key, cached in memory (bounded)."""

    def __init__(self, store: KeyStore, cipher: Cipher, *, max_entries: int = 10_000) -> None:
        self._store = store
        self._cipher = cipher
        self._max = max_entries
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._inflight: dict[int, asyncio.Task[bytes]] = {}
        self._indexers: dict[int, tuple[bytes, NumberIndexer]] = {}

    async def get(self, account_id: int) -> bytes:
        key = self._cache.get(account_id)
        if key is not None:
            self._cache.move_to_end(account_id)
            return key
        task = self._inflight.get(account_id)
        if task is None:
            task = asyncio.ensure_future(self._load(account_id))
            self._inflight[account_id] = task
            task.add_done_callback(lambda _t: self._inflight.pop(account_id, None))
        key = await asyncio.shield(task)
        self._cache[account_id] = key
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return key

    async def indexer(self, account_id: int) -> NumberIndexer:
        """The account's number hasher, its key schedule done once per cached key."""
        key = await self.get(account_id)
        hasher = self._indexers.get(account_id)
        if hasher is None or hasher[0] is not key:
            hasher = (key, NumberIndexer(key))
            self._indexers[account_id] = hasher
            while len(self._indexers) > self._max:
                self._indexers.pop(next(iter(self._indexers)))
        return hasher[1]

    async def _load(self, account_id: int) -> bytes:
        aad = aad_for(account_id, INDEX_KEY_RECORD, str(account_id))
        blob = await self._store.index_key_ct(account_id)
        if blob is None:
            fresh = await self._cipher.encrypt(account_id, aad, os.urandom(INDEX_KEY_SIZE))
            blob = await self._store.add_index_key_ct(account_id, fresh)
        return await self._cipher.decrypt(account_id, aad, blob)


class Replies:
    """Stores replies to the account's messages (from a carrier or the test hook): the sender's number and
    the body encrypted, a keyed hash of the number, and the opt-out change a STOP/START makes."""

    def __init__(self, store: InboundStore, cipher: Cipher, keys: IndexKeys) -> None:
        self._store = store
        self._cipher = cipher
        self._keys = keys
        self.unmatched = 0

    async def receive(self, items: Sequence[InboundInput]) -> list[str]:
        """Replies as a carrier reports them: matched to the outbound message by our id or the carrier's
        reference. A reply that matches nothing is counted and dropped (its content is not kept)."""
        new: list[NewInbound] = []
        for item in items:
            original = await self._store.original(item.in_reply_to) if item.in_reply_to else None
            if original is None:
                self.unmatched += 1
                _LOG.warning("dropped a reply that matches no message (carrier %s)", item.carrier)
                continue
            new.append(await self.seal(original.account_id, item, original.id, original.custom_string,
                                       is_test=False))
        return await self._store.add_inbound(new) if new else []

    async def seal(self, account_id: int, item: InboundInput, original_id: str, custom_string: str,
                   *, is_test: bool) -> NewInbound:
        try:
            sender = parse_recipient(item.sender, None).e164
        except InvalidRecipient:
            sender = item.sender.strip()[:32]
        mid = new_message_id()
        key = await self._keys.get(account_id)
        from_ct, body_ct = await self._cipher.encrypt_many(account_id, [
            (aad_for(account_id, TO_RECORD, mid), sender.encode()),
            (aad_for(account_id, BODY_RECORD, mid), item.body.encode("utf-8", "replace")),
        ])
        return NewInbound(
            id=mid, account_id=account_id, original_message_id=original_id, from_ct=from_ct,
            from_hash=number_index(key, sender), to=item.to[:32], body_ct=body_ct, custom_string=custom_string,
            carrier=item.carrier, carrier_ref=item.carrier_ref[:128], is_test=is_test, action=opt_action(item.body),
        )

    async def view(self, r: InboundRecord, *, deidentified: bool = False) -> InboundView:
        acct = r.account_id
        sender = (await self._cipher.decrypt(acct, aad_for(acct, TO_RECORD, r.id), r.from_ct)).decode()
        if deidentified:
            return InboundView(r, mask_number(sender), MASKED_BODY, MASKED_BODY)
        body = "" if r.body_ct is None else (
            await self._cipher.decrypt(acct, aad_for(acct, BODY_RECORD, r.id), r.body_ct)).decode()
        original = ""
        if r.original_body_ct is not None and r.original_message_id:
            try:
                original = (await self._cipher.decrypt(
                    acct, aad_for(acct, BODY_RECORD, r.original_message_id), r.original_body_ct)).decode()
            except DecryptFailed:
                original = ""
        return InboundView(r, sender, body, original)


# -- API process ------------------------------------------------------------------------------------------


@dataclass
class _SendJob:
    """One send request inside a group commit."""

    caller: Caller
    rows: list[NewMessage]
    limits: LimitRequest
    build: Callable[[list[MessageStatusCode]], SendResult]
    idempotency: tuple[bytes, bytes] | None = None  # (key hash, request fingerprint)


class _Replay:
    """Another request with the same idempotency key won: answer with its stored result."""


def _statuses_before_credit(
    job: _SendJob, throttled: Sequence[bool], blocked: set[tuple[int, bytes]]
) -> list[MessageStatusCode]:
    return [
        MessageStatusCode.THROTTLED if over
        else MessageStatusCode.RECIPIENT_OPTED_OUT if (row.account_id, row.to_hash) in blocked
        else MessageStatusCode.SUCCESS
        for row, over in zip(job.rows, throttled, strict=True)
    ]


async def _no_limits(group: list[_SendJob]) -> list[LimitVerdict]:
    return [LimitVerdict(throttled=tuple(False for _ in j.rows)) for j in group]


_REPLAY = _Replay()
_JobResult = list[MessageStatusCode] | Exception | _Replay


@dataclass(frozen=True)
class MessagingOptions:
    outbox_grace_seconds: float = 5.0
    redeliver_seconds: float = 300.0
    relay_batch: int = 500
    rates: RateConfig = field(default_factory=RateConfig)
    allow_private_webhooks: bool = False  # tests only: loopback/private webhook URLs and any port


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
        limiter: Limiter | None = None,
        options: MessagingOptions | None = None,
        record: Record | None = None,
    ) -> None:
        self._store = store
        self._queue = queue
        self._cipher = cipher
        self._prices = prices
        self._trial_credit = trial_credit
        self.currency = currency
        self._opts = options or MessagingOptions(outbox_grace_seconds=outbox_grace_seconds, relay_batch=relay_batch)
        self._grace = self._opts.outbox_grace_seconds
        self._relay_batch = self._opts.relay_batch
        self._clock = clock
        self._limiter = limiter
        self._record = record
        self._published: list[int] = []  # outbox batches published since the last forget_published
        self._group: GroupCommit[_SendJob, _JobResult] = GroupCommit(self._commit_group)
        self.keys = IndexKeys(store, cipher)
        self.replies = Replies(store, cipher, self.keys)

    # -- sending ------------------------------------------------------------------------------------------

    def _check(self, caller: Caller, inputs: Sequence[OutboundInput], now: int) -> tuple[
        list[SendItem | None], list[tuple[int, ValidatedMessage, Decimal]]
    ]:
        """Per-message validation (ClickSend's order), the key's allowed countries, and the price."""
        items: list[SendItem | None] = []
        valid: list[tuple[int, ValidatedMessage, Decimal]] = []
        for i, m in enumerate(inputs):
            v = validate_outbound(m.body, m.to, m.country, m.sender, m.schedule, now)
            if isinstance(v, Rejected):
                items.append(SendItem(m, v.status_code, to=m.to, sender=m.sender, schedule=m.schedule))
                continue
            if not caller.limits.allows_country(v.recipient.country):
                items.append(SendItem(m, MessageStatusCode.COUNTRY_NOT_ALLOWED, to=v.to, country=v.recipient.country,
                                      sender=v.sender, parts=v.sms.parts, schedule=m.schedule))
                continue
            free = caller.test_mode or v.is_test
            price = Decimal(0) if free else self._prices.price_for(v.recipient.country, v.sms.parts)
            valid.append((i, v, price))
            items.append(None)
        return items, valid

    async def send_sms(
        self, caller: Caller, inputs: Sequence[OutboundInput], idempotency_key: str = ""
    ) -> SendResult:
        """Validate, price, encrypt and store 1-1000 messages with their outbox rows and the debit in one
        transaction, then publish them. Rejected messages are reported per message and not stored. With an
        idempotency key, a retry of the same request gets the first answer and nothing happens twice."""
        check_batch_size(len(inputs))
        acct = caller.account_id
        idem: tuple[bytes, bytes] | None = None
        if idempotency_key:
            check_idempotency_key(idempotency_key)
            idem = (idempotency_key_hash(idempotency_key), request_fingerprint(await self.keys.get(acct), inputs))
            replay = await self._replay(caller, *idem)
            if replay is not None:
                return replay
        now = int(self._clock())
        items, valid = self._check(caller, inputs, now)
        if not valid:
            return SendResult(date=now, items=[it for it in items if it is not None], currency=self.currency)
        key = await self.keys.get(acct)
        to_index = await self.keys.indexer(acct)
        ids = new_message_ids(len(valid))
        blobs = await self._cipher.encrypt_many(
            acct,
            [
                pair
                for (_, v, _), mid in zip(valid, ids, strict=True)
                for pair in (
                    (aad_for(acct, BODY_RECORD, mid), v.body.encode()),
                    (aad_for(acct, TO_RECORD, mid), v.to.encode()),
                )
            ],
        )
        rates = self._opts.rates
        rows: list[NewMessage] = []
        tokens: list[str | None] = []
        prefix_tokens: dict[str, str] = {}
        for k, ((i, v, price), mid) in enumerate(zip(valid, ids, strict=True)):
            m = inputs[i]
            scheduled = v.schedule is not None and v.schedule > now
            free = caller.test_mode or v.is_test
            if free or rates.prefix_limit <= 0:
                tokens.append(None)
            else:
                prefix = destination_prefix(v.to, rates.prefix_digits, v.recipient.country)
                if prefix not in prefix_tokens:
                    prefix_tokens[prefix] = prefix_token(key, prefix)
                tokens.append(prefix_tokens[prefix])
            rows.append(NewMessage(
                id=mid, account_id=acct, user_id=caller.user_id, api_username=caller.api_username,
                status=MessageStatus.SCHEDULED if scheduled else MessageStatus.QUEUED,
                body_ct=blobs[2 * k], to_ct=blobs[2 * k + 1], sender=v.sender, country=v.recipient.country,
                encoding=v.sms.encoding.value, parts=v.sms.parts, price=price,
                is_test=free, custom_string=m.custom_string, source=m.source,
                from_email=m.from_email, list_id=m.list_id, contact_id=m.contact_id,
                schedule=v.schedule if scheduled else None,
                publish_at=v.schedule if scheduled and v.schedule is not None else now + int(self._grace + 0.999),
                to_hash=to_index(v.to), cause=caller.cause,
            ))

        def build(statuses: list[MessageStatusCode]) -> SendResult:
            out = list(items)
            for (i, v, price), mid, status in zip(valid, ids, statuses, strict=True):
                m = inputs[i]
                ok = status is MessageStatusCode.SUCCESS
                out[i] = SendItem(
                    m, status, message_id=mid if ok else "", to=v.to, country=v.recipient.country, sender=v.sender,
                    parts=v.sms.parts, price=price if ok else Decimal(0),
                    schedule=(v.schedule or 0) if ok else m.schedule,
                )
            return SendResult(date=now, items=[it for it in out if it is not None], currency=self.currency)

        job = _SendJob(caller, rows, limit_request(rates, caller, tokens), build, idem)
        outcome = await self._group.submit(job)
        if isinstance(outcome, Exception):
            raise outcome
        if isinstance(outcome, _Replay):
            assert idem is not None
            replay = await self._replay(caller, *idem)
            if replay is None:  # the winner rolled back between its commit and our read: cannot happen
                raise IdempotencyKeyReused("A request with this Idempotency-Key is still in progress.")
            return replay
        return build(outcome)

    async def _replay(self, caller: Caller, key_hash: bytes, fingerprint: bytes) -> SendResult | None:
        stored = await self._store.idempotent_result(caller.account_id, key_hash)
        if stored is None:
            return None
        request_hash, blob = stored
        if request_hash != fingerprint:
            raise IdempotencyKeyReused("This Idempotency-Key was used with a different request.")
        if blob is None:
            raise IdempotencyKeyReused("A request with this Idempotency-Key is still in progress.")
        acct = caller.account_id
        raw = await self._cipher.decrypt(acct, aad_for(acct, IDEMPOTENCY_RECORD, key_hash.hex()), blob)
        return decode_send_result(raw)

    async def _commit_group(self, group: list[_SendJob]) -> list[_JobResult]:
        """Store the sends of several concurrent requests in one transaction (group commit).

        Rate limits first, for the whole group in one round trip (a refused request stores nothing). Then,
        in one transaction: idempotency keys are claimed (a request whose key another request holds is
        answered with that request's result), each paying account's balance is locked once (in account
        order, so concurrent groups cannot deadlock), opted-out recipients are refused, messages are paid
        for request by request in arrival order, every accepted row is inserted with its outbox row in one
        statement, each account is debited once and each idempotent answer is stored encrypted. Finally
        everything queued is published with one stream write.

        The common case takes a shorter way to the same result: one paying account, no idempotency key, and
        enough credit for every message. Then a single statement debits the total (only if the balance
        covers it) and inserts the rows (only if it did), with no transaction round trips; when the credit
        does not cover it, nothing was written and the group goes the long way."""
        results: list[_JobResult | None] = [None] * len(group)
        pairs = sorted({(r.account_id, r.to_hash) for j in group for r in j.rows if r.to_hash is not None})
        # Two independent reads, at the same time: the limiter (Redis) and the opt-out list (a read outside
        # the transaction, so the balance locks are held no longer than before).
        verdicts, blocked = await asyncio.gather(
            self._limiter.check([j.limits for j in group]) if self._limiter is not None
            else _no_limits(group),
            self._store.opted_out(pairs),
        )
        active: list[int] = []
        for i, (job, verdict) in enumerate(zip(group, verdicts, strict=True)):
            if verdict.retry_after:
                results[i] = limit_error(verdict, job.caller.limits)
            else:
                active.append(i)
        claims: list[tuple[int, bytes, bytes]] = []
        first_claim: dict[tuple[int, bytes], int] = {}
        for i in active:
            job = group[i]
            if job.idempotency is not None:
                slot = (job.caller.account_id, job.idempotency[0])
                if slot in first_claim:
                    results[i] = _REPLAY
                    continue
                first_claim[slot] = i
                claims.append((slot[0], slot[1], job.idempotency[1]))
        active = [i for i in active if results[i] is None]
        if not active:
            return [r if r is not None else [] for r in results]
        # Each message's status before credit: throttled by a prefix counter, opted out, or payable.
        base = {i: _statuses_before_credit(group[i], verdicts[i].throttled, blocked) for i in active}
        paying = sorted({group[i].caller.account_id for i in active if any(r.price for r in group[i].rows)})
        if len(paying) == 1 and not claims:
            accepted = [r for i in active for r, st in zip(group[i].rows, base[i], strict=True)
                        if st is MessageStatusCode.SUCCESS]
            async with self._store.send_tx(atomic=False) as tx:
                funded, batch = await tx.insert_funded(accepted, paying[0], sum((r.price for r in accepted),
                                                                                 Decimal(0)))
            if funded:
                for i in active:
                    results[i] = base[i]
                await self._publish(accepted, batch)
                return [r if r is not None else [] for r in results]
        accepted = []
        async with self._store.send_tx(atomic=bool(paying or claims)) as tx:
            if claims:
                won = await tx.claim_idempotency(claims)
                for slot, i in first_claim.items():
                    if slot not in won:
                        results[i] = _REPLAY
                active = [i for i in active if results[i] is None]
            balances = {acct: await tx.lock_balance(acct, self._trial_credit) for acct in paying}
            spent = dict.fromkeys(paying, Decimal(0))
            saved: list[tuple[int, bytes, bytes]] = []
            for i in active:
                job = group[i]
                acct = job.caller.account_id
                statuses = list(base[i])
                payable = [k for k, st in enumerate(statuses) if st is MessageStatusCode.SUCCESS]
                if acct in balances:
                    fits = allocate_credit(balances[acct] - spent[acct], [job.rows[k].price for k in payable])
                    for k, ok in zip(payable, fits, strict=True):
                        if ok:
                            spent[acct] += job.rows[k].price
                        else:
                            statuses[k] = MessageStatusCode.INSUFFICIENT_CREDIT
                accepted.extend(r for r, st in zip(job.rows, statuses, strict=True)
                                if st is MessageStatusCode.SUCCESS)
                results[i] = statuses
                if job.idempotency is not None:
                    key_hash = job.idempotency[0]
                    blob = await self._cipher.encrypt(
                        acct, aad_for(acct, IDEMPOTENCY_RECORD, key_hash.hex()), encode_send_result(job.build(statuses))
                    )
                    saved.append((acct, key_hash, blob))
            batch = await tx.insert_messages(accepted)
            for acct in paying:
                await tx.debit(acct, spent[acct])
            await tx.save_idempotent_results(saved)
        await self._publish(accepted, batch)
        return [r if r is not None else [] for r in results]

    async def _publish(self, accepted: list[NewMessage], batch: int | None) -> None:
        """Publish the queued messages of a commit with one stream write; on failure the outbox relay will."""
        due = [r for r in accepted if r.status is MessageStatus.QUEUED]
        if not due:
            return
        try:
            await self._queue.publish([r.id for r in due])
        except Exception as exc:  # the relay publishes from the outbox
            _LOG.warning("dispatch publish failed (%s); %d messages left to the outbox relay",
                         type(exc).__name__, len(due))
        else:
            if batch is not None:
                self._published.append(batch)

    async def price_sms(self, caller: Caller, inputs: Sequence[OutboundInput]) -> SendResult:
        """What a send would cost and which messages it would refuse, storing and charging nothing."""
        check_batch_size(len(inputs))
        now = int(self._clock())
        items, valid = self._check(caller, inputs, now)
        blocked: set[tuple[int, bytes]] = set()
        hashes: list[bytes] = []
        if valid:
            to_index = await self.keys.indexer(caller.account_id)
            hashes = [to_index(v.to) for _, v, _ in valid]
            blocked = await self._store.opted_out(sorted({(caller.account_id, h) for h in hashes}))
        for (i, v, price), h in zip(valid, hashes, strict=True):
            m = inputs[i]
            out = (caller.account_id, h) in blocked
            items[i] = SendItem(
                m, MessageStatusCode.RECIPIENT_OPTED_OUT if out else MessageStatusCode.SUCCESS, to=v.to,
                country=v.recipient.country, sender=v.sender, parts=v.sms.parts,
                price=Decimal(0) if out else price, schedule=v.schedule or 0,
            )
        return SendResult(date=now, items=[it for it in items if it is not None], currency=self.currency)

    async def forget_published(self) -> int:
        """Move the outbox batches published since the last call `redeliver_seconds` ahead (off the send
        path): their messages are published again only if they have not settled by then."""
        done, self._published = self._published, []
        if done:
            try:
                await self._store.mark_published(done, self._opts.redeliver_seconds)
            except Exception:
                self._published.extend(done)
                raise
        return len(done)

    async def relay_outbox(self) -> int:
        """Publish what is due in the outbox: unpublished sends, scheduled messages, retries, and messages
        whose stream entry or worker was lost."""
        total = 0
        while True:
            n = await self._store.relay_due(self._relay_batch, self._queue.publish, self._opts.redeliver_seconds)
            total += n
            if n < self._relay_batch:
                return total

    # -- cancelling ---------------------------------------------------------------------------------------

    async def cancel_sms(self, caller: Caller, message_id: str) -> None:
        """Cancel a message not yet dispatched (scheduled or queued) and refund it. Cancelling a cancelled
        message again succeeds; one already on its way cannot be cancelled."""
        mid = check_message_id(message_id)
        status = await self._store.cancel(caller.account_id, mid)
        if status is None:
            raise MessageNotFound("No such message.")
        if status is not MessageStatus.CANCELLED:
            raise NotCancellable("The message has already been dispatched and cannot be cancelled.",
                                 status=clicksend_history_view(status, None).status)

    async def cancel_all(self, caller: Caller, custom_string: str) -> int:
        """Cancel the account's scheduled messages (those with `custom_string` when given); refunded."""
        return await self._store.cancel_scheduled(caller.account_id, custom_string or None)

    # -- history ------------------------------------------------------------------------------------------

    async def list_history(self, caller: Caller, query: HistoryQuery) -> HistoryPage:
        """A page of the account's messages, bodies and numbers decrypted (masked for de-identified users).

        Filters on plain columns and the keyed hash of `to` run in the database; a body filter and sorting
        by `to` or `body` run over the newest SEARCH_WINDOW matching messages, decrypted in memory."""
        f, sort, w = query.filter, query.sort, query.window
        check_content_search(f, sort, deidentified=caller.deidentified)
        acct = caller.account_id
        to_hash = number_index(await self.keys.get(acct), f.to) if f.to is not None else None
        if f.body_contains is None and not sort.on_content:
            total, rows = await self._store.history(
                acct, query.date_from, query.date_to, w.offset, w.limit, f, sort, to_hash)
            items = [await self._item(m, masked=caller.deidentified) for m in rows]
            return HistoryPage(window=w, total=total, items=items)
        _, rows = await self._store.history(
            acct, query.date_from, query.date_to, 0, SEARCH_WINDOW, f,
            HistorySort() if sort.on_content else sort, to_hash)
        found = [it for it in [await self._item(m) for m in rows] if matches_content(f, it.body, it.to)]
        if sort.on_content:
            found.sort(key=lambda it: it.message.date, reverse=True)
            found.sort(key=lambda it: (it.to if sort.field == "to" else it.body.casefold()), reverse=sort.descending)
        return HistoryPage(window=w, total=len(found), items=found[w.offset:w.offset + w.limit])

    async def _item(self, m: StoredMessage, *, masked: bool = False) -> HistoryItem:
        acct = m.account_id
        to = (await self._cipher.decrypt(acct, aad_for(acct, TO_RECORD, m.id), m.to_ct)).decode()
        if masked:
            return HistoryItem(m, MASKED_BODY, mask_number(to), clicksend_history_view(m.status, m.error_code))
        if m.cause == DESTINATION_VERIFICATION:  # the code is for the destination's holder only
            return HistoryItem(m, MASKED_BODY, to, clicksend_history_view(m.status, m.error_code))
        body = "" if m.body_ct is None else (
            await self._cipher.decrypt(acct, aad_for(acct, BODY_RECORD, m.id), m.body_ct)).decode()
        return HistoryItem(m, body, to, clicksend_history_view(m.status, m.error_code))

    async def staff_history(
        self, caller: Caller, account_id: int, window: PageWindow, date_from: int | None, date_to: int | None
    ) -> tuple[HistoryPage, bool]:
        """A customer's history for a staff member: metadata always, content only if the customer granted
        staff access. Recorded in the customer's audit feed before anything is shown (fails closed)."""
        if not caller.staff:
            raise PermissionDenied("Only SendSafe staff may read another account's history.")
        if account_id <= 0:
            raise InvalidAccountId("account_id must be a positive account id")
        visible = (await self._store.settings(account_id)).staff_content_access
        if self._record is not None:
            ev = new_event(SERVICE, "messaging.staff.history_read", resource_type="account",
                           resource_id=str(account_id), details={"content_visible": str(visible).lower()})
            if hasattr(ev, "subject_account_id"):
                ev.subject_account_id = account_id
            await self._record(ev)
        total, rows = await self._store.history(account_id, date_from, date_to, window.offset, window.limit)
        items = [await self._item(m, masked=not visible) for m in rows]
        return HistoryPage(window=window, total=total, items=items), visible

    # -- receipts -----------------------------------------------------------------------------------------

    async def list_receipts(self, caller: Caller, window: PageWindow) -> ReceiptPage:
        """Unread receipts, newest first (mark them read to take them off this list)."""
        total, rows = await self._store.unread_receipts(caller.account_id, window.offset, window.limit)
        return ReceiptPage(window, total, rows)

    async def get_receipt(self, caller: Caller, message_id: str) -> ReceiptRecord:
        r = await self._store.receipt(caller.account_id, check_message_id(message_id))
        if r is None:
            raise MessageNotFound("No receipt for this message (yet).")
        return r

    async def mark_receipts_read(self, caller: Caller, date_before: int) -> int:
        return await self._store.mark_receipts_read(caller.account_id, unix_time(date_before, "date_before"))

    async def create_test_receipt(self, caller: Caller, url: str) -> ReceiptRecord:
        """Test mode only: a delivered receipt for a made-up message, kept for polling or pushed to `url`."""
        if not caller.test_mode:
            raise TestModeOnly("Test receipts are only available to test-mode accounts.")
        target = "" if url.strip().lower() in ("", POLL) else await self._webhook_url(url)
        return await self._store.add_test_receipt(caller.account_id, caller.user_id, new_message_id(), target)

    # -- replies ------------------------------------------------------------------------------------------

    async def list_inbound(self, caller: Caller, window: PageWindow) -> InboundPage:
        """Unread replies, newest first."""
        total, rows = await self._store.unread_inbound(caller.account_id, window.offset, window.limit)
        views = [await self.replies.view(r, deidentified=caller.deidentified) for r in rows]
        return InboundPage(window, total, views)

    async def get_inbound(self, caller: Caller, original_message_id: str) -> InboundView:
        """The first reply to one of the account's messages."""
        r = await self._store.inbound_for_original(caller.account_id, check_message_id(original_message_id))
        if r is None:
            raise MessageNotFound("No reply to this message.")
        return await self.replies.view(r, deidentified=caller.deidentified)

    async def mark_inbound_read(self, caller: Caller, date_before: int) -> int:
        return await self._store.mark_inbound_read(caller.account_id, unix_time(date_before, "date_before"))

    async def mark_inbound_read_by_id(self, caller: Caller, message_id: str) -> int:
        return await self._store.mark_inbound_read_by_id(caller.account_id, check_message_id(message_id))

    async def create_test_inbound(
        self, caller: Caller, url: str, original_message_id: str = "", body: str = ""
    ) -> InboundView:
        """Test mode only: a reply, to one of the account's messages when `original_message_id` is given
        (its recipient is the sender; "STOP" opts them out), kept for polling or pushed to `url`."""
        if not caller.test_mode:
            raise TestModeOnly("Test replies are only available to test-mode accounts.")
        target = "" if url.strip().lower() in ("", POLL) else await self._webhook_url(url)
        acct = caller.account_id
        sender, to, custom, original = TEST_INBOUND_FROM, TEST_INBOUND_TO, "", ""
        if original_message_id:
            original = check_message_id(original_message_id)
            found = await self._store.message_to_ct(acct, original)
            if found is None:
                raise MessageNotFound("No such message.")
            to_ct, our_number, custom = found
            sender = (await self._cipher.decrypt(acct, aad_for(acct, TO_RECORD, original), to_ct)).decode()
            to = our_number or TEST_INBOUND_TO
        item = InboundInput(carrier="test", carrier_ref="", sender=sender, to=to, body=body or TEST_INBOUND_BODY,
                            in_reply_to=original)
        new = await self.replies.seal(acct, item, original, custom, is_test=True)
        await self._store.add_inbound([new], test_url=target)
        stored = await self._store.inbound_by_id(new.id)
        assert stored is not None
        return await self.replies.view(stored, deidentified=caller.deidentified)

    # -- settings -----------------------------------------------------------------------------------------

    async def get_settings(self, caller: Caller) -> MessagingSettings:
        return await self._store.settings(caller.account_id)

    async def update_settings(self, caller: Caller, update: SettingsUpdate) -> tuple[MessagingSettings, str]:
        """Change settings; the first webhook URL creates the signing secret, returned once."""
        clean = SettingsUpdate(
            receipt_webhook_url=None if update.receipt_webhook_url is None else (
                await self._webhook_url(update.receipt_webhook_url) if update.receipt_webhook_url.strip() else ""),
            inbound_webhook_url=None if update.inbound_webhook_url is None else (
                await self._webhook_url(update.inbound_webhook_url) if update.inbound_webhook_url.strip() else ""),
            body_retention_days=None if update.body_retention_days is None else check_retention_days(
                update.body_retention_days),
            staff_content_access=update.staff_content_access,
        )
        current = await self._store.settings(caller.account_id)
        secret, blob = "", None
        if not current.has_webhook_secret and (clean.receipt_webhook_url or clean.inbound_webhook_url):
            secret, blob = await self._new_secret(caller.account_id)
        details = {
            "fields": ",".join(sorted(f.name for f in fields(update) if getattr(update, f.name) is not None)),
            "secret_created": str(bool(secret)).lower(),
        }
        # Privileged: the event is stored before the change commits (the audit client waits in a privileged call).
        saved = await self._store.update_settings(
            caller.account_id, clean, blob,
            before_commit=lambda _: self._audit("messaging.settings.updated", caller.account_id, details),
        )
        return saved, secret

    async def rotate_webhook_secret(self, caller: Caller) -> str:
        secret, blob = await self._new_secret(caller.account_id)
        await self._store.update_settings(
            caller.account_id, SettingsUpdate(), blob,
            before_commit=lambda _: self._audit("messaging.webhook_secret.rotated", caller.account_id, {}),
        )
        return secret

    async def _webhook_url(self, url: str) -> str:
        """The one outbound-webhook policy, at configuration time (the worker applies it again)."""
        return await check_destination(url, allow_private=self._opts.allow_private_webhooks)

    async def _new_secret(self, account_id: int) -> tuple[str, bytes]:
        secret = new_secret()
        aad = aad_for(account_id, WEBHOOK_SECRET_RECORD, str(account_id))
        return secret, await self._cipher.encrypt(account_id, aad, secret.encode())

    async def webhook_deliveries(self, caller: Caller, limit: int, before_id: int) -> list[WebhookDelivery]:
        return await self._store.webhook_deliveries(caller.account_id, max(1, min(limit or 50, 100)),
                                                    max(0, before_id))

    async def _audit(self, action: str, account_id: int, details: dict[str, str]) -> None:
        if self._record is not None:
            await self._record(new_event(SERVICE, action, resource_type="messaging_settings",
                                         resource_id=str(account_id), account_id=account_id, details=details))

    # -- housekeeping -------------------------------------------------------------------------------------

    async def redact_expired(self) -> int:
        """Apply every account's body retention (bodies go, metadata stays)."""
        return await self._store.redact_expired(1000)

    async def forget_idempotency_keys(self) -> int:
        return await self._store.forget_idempotency_keys(IDEMPOTENCY_TTL_S)

    async def get_balance(self, account_id: int) -> Decimal:
        """The account's credit (the trial credit for an account that never sent)."""
        if account_id <= 0:
            raise InvalidAccountId("account_id must be a positive account id")
        value = await self._store.balance(account_id)
        return self._trial_credit if value is None else value


# -- webhooks ---------------------------------------------------------------------------------------------


class WebhookSender(Protocol):
    """svckit.webhooks.WebhookClient: the outbound-webhook policy, applied again at every attempt."""

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Attempt: ...


class WebhookStore(Protocol):
    async def claim_webhooks(self, limit: int, lease_s: float) -> list[WebhookJob]: ...
    async def finish_webhook(self, job: WebhookJob, *, outcome: str, host: str, http_status: int, error: str,
                             duration_ms: int, retry_in_s: float | None) -> None: ...
    async def settings(self, account_id: int) -> MessagingSettings: ...
    async def receipt_for_message(self, message_id: str) -> ReceiptRecord | None: ...
    async def inbound_by_id(self, inbound_id: str) -> InboundRecord | None: ...


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
        await self._store.finish_webhook(job, outcome=outcome, host=attempt.host, http_status=attempt.status,
                                         error=attempt.error, duration_ms=attempt.duration_ms, retry_in_s=retry)

    async def _payload(self, job: WebhookJob) -> dict[str, object] | None:
        if job.event is WebhookEvent.RECEIPT:
            r = await self._store.receipt_for_message(job.ref)
            return None if r is None else receipt_payload(r)
        inbound = await self._store.inbound_by_id(job.ref)
        return None if inbound is None else inbound_payload(await self._replies.view(inbound))


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
        lease_seconds: float = 30.0,
        record: Record | None = None,
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
        self.replies = Replies(store, cipher, self.keys)

    async def deliver(self, message_ids: Sequence[str]) -> int:
        """Claim, decrypt, submit and record one batch; returns how many were claimed.

        Raises when the outcome is unknown (database, keys service): the caller leaves the stream entries
        pending so they are delivered again. Idempotent: re-delivering a batch re-claims only what is not
        final (and not held by a live worker), and the carrier deduplicates by message id.
        """
        claimed = await self._store.claim(list(dict.fromkeys(message_ids)), self._lease)
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

    async def apply_carrier_receipts(self, receipts: list[Receipt]) -> tuple[int, int]:
        """Receipts from a carrier callback: (applied, unresolved). A receipt that names only a carrier
        reference we have not recorded yet (the receipt overtook the submit answer) is not applied; the
        caller asks the carrier to send it again rather than losing it."""
        refs = [r.carrier_ref for r in receipts if not r.message_id and r.carrier_ref]
        known = await self._store.resolve_refs(refs) if refs else {}
        ready = [r if r.message_id else replace(r, message_id=known.get(r.carrier_ref, "")) for r in receipts]
        resolved = [r for r in ready if r.message_id]
        changed = len(await self._store.apply_receipts(resolved)) if resolved else 0
        return changed, len(ready) - len(resolved)

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
