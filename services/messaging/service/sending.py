"""Send, price and cancel SMS, and the outbox relay.

Bodies and phone numbers are only ever plaintext in memory here; they never reach a log line, a span
attribute, an error message or an audit detail."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from services.messaging.domain.errors import InvalidAccountId, MessageNotFound, MessageStatusCode, NotCancellable
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
from services.messaging.domain.limits import LimitRequest, LimitVerdict, destination_prefix, limit_error, limit_request
from services.messaging.domain.outbound import Rejected, ValidatedMessage, check_batch_size, validate_outbound
from services.messaging.domain.pricing import allocate_credit
from services.messaging.domain.privacy import custom_string_index, prefix_token
from services.messaging.domain.records import (
    BODY_RECORD,
    TO_RECORD,
    Caller,
    NewMessage,
    OutboundInput,
    SendItem,
    SendResult,
    check_message_id,
)
from services.messaging.domain.statuses import MessageStatus, clicksend_history_view
from services.messaging.service.common import UseCases
from services.messaging.service.custom_strings import custom_string_aad
from services.messaging.service.ids import new_message_ids
from services.messaging.service.list_sends import expand_lists
from svckit.envelope import aad_for
from svckit.groupcommit import GroupCommit
from svckit.telemetry import current_traceparent

_LOG = logging.getLogger(__name__)


@dataclass
class _SendJob:
    """One send request inside a group commit."""

    caller: Caller
    rows: list[NewMessage]
    limits: LimitRequest
    build: Callable[[list[MessageStatusCode]], SendResult]
    idempotency: tuple[bytes, bytes] | None = None  # (key hash, request fingerprint)
    traceparent: str = ""  # the request's trace: its messages' stream entry carries it to the worker


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


class SendingUseCases(UseCases):
    """Send, price and cancel SMS; the outbox relay; credit."""

    _grace: float
    _relay_batch: int
    _published: list[int]
    _group: GroupCommit[_SendJob, _JobResult]

    def _check(self, caller: Caller, inputs: Sequence[OutboundInput], now: int) -> tuple[
        list[SendItem | None], list[tuple[int, ValidatedMessage, Decimal]]
    ]:
        """Per-message validation (ClickSend's order), the key's allowed countries and senders, and the price."""
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
            if not caller.limits.allows_sender(v.sender):  # the key's and the user's sender limit (issue 21)
                items.append(SendItem(m, MessageStatusCode.INVALID_SENDER_ID, to=v.to, sender=v.sender,
                                      schedule=m.schedule))
                continue
            free = caller.test_mode or v.is_test
            price = Decimal(0) if free else self._prices.price_for(v.recipient.country, v.sms.parts)
            valid.append((i, v, price))
            items.append(None)
        return items, valid

    async def _check_senders(self, caller: Caller, inputs: Sequence[OutboundInput], items: list[SendItem | None],
                             valid: list[tuple[int, ValidatedMessage, Decimal]]
                             ) -> list[tuple[int, ValidatedMessage, Decimal]]:
        """Messages whose `from` is not one of the account's active sender identities become INVALID_SENDER_ID
        (issue 21; one query, none when no message names a `from`; without a SenderIndex every `from` is refused)."""
        named = [v.sender for _, v, _ in valid if v.sender]
        if not named:
            return valid
        refused = set(named) if self.senders is None else await self.senders.refused(caller.account_id, named)
        if not refused:
            return valid
        for i, v, _ in valid:
            if v.sender in refused:
                items[i] = SendItem(inputs[i], MessageStatusCode.INVALID_SENDER_ID, to=v.to, sender=v.sender,
                                    schedule=inputs[i].schedule)
        return [entry for entry in valid if entry[1].sender not in refused]

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
        inputs = await expand_lists(self.lists, caller, inputs)  # list_id: one message per contact
        if self.defaults is not None:  # an empty `from`: the caller's default sender (cached, issue 21)
            inputs = await self.defaults.sender_for(caller, inputs)
        now = int(self._clock())
        items, valid = self._check(caller, inputs, now)
        valid = await self._check_senders(caller, inputs, items, valid)
        if not valid:
            return SendResult(date=now, items=[it for it in items if it is not None], currency=self.currency)
        key = await self.keys.get(acct)
        to_index = await self.keys.indexer(acct)
        ids = new_message_ids(len(valid))
        sealing = [
            pair
            for (_, v, _), mid in zip(valid, ids, strict=True)
            for pair in (
                (aad_for(acct, BODY_RECORD, mid), v.body.encode()),
                (aad_for(acct, TO_RECORD, mid), v.to.encode()),
            )
        ]
        # Custom strings (free text) are sealed too, after the pairs, with a keyed hash for exact search.
        customs: dict[int, int] = {}
        for k, ((i, _, _), mid) in enumerate(zip(valid, ids, strict=True)):
            if inputs[i].custom_string:
                customs[k] = len(sealing)
                sealing.append((custom_string_aad(acct, mid), inputs[i].custom_string.encode()))
        blobs = await self._cipher.encrypt_many(acct, sealing)
        rates = self._opts.rates
        traceparent = current_traceparent()  # stored with each row: receipts, retries and webhooks link to it
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
                is_test=free, custom_string="", source=m.source,
                from_email=m.from_email, list_id=m.list_id, contact_id=m.contact_id,
                schedule=v.schedule if scheduled else None,
                publish_at=v.schedule if scheduled and v.schedule is not None else now + int(self._grace + 0.999),
                to_hash=to_index(v.to), cause=caller.cause,
                custom_ct=blobs[customs[k]] if k in customs else None,
                custom_hash=custom_string_index(key, m.custom_string) if k in customs else None,
                traceparent=traceparent,
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

        job = _SendJob(caller, rows, limit_request(rates, caller, tokens), build, idem, traceparent)
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
        # Independent reads, at the same time: the limiter (Redis), the opt-out list (a read outside the
        # transaction, so the balance locks are held no longer than before), and which of the group's accounts
        # are closing (issue 15: a closing account sends nothing; one query per group, not per request).
        verdicts, blocked, closing = await asyncio.gather(
            self._limiter.check([j.limits for j in group]) if self._limiter is not None
            else _no_limits(group),
            self._store.opted_out(pairs),
            self.closures.closing(sorted({j.caller.account_id for j in group})),
        )
        active: list[int] = []
        for i, (job, verdict) in enumerate(zip(group, verdicts, strict=True)):
            if job.caller.account_id in closing:
                results[i] = closing[job.caller.account_id]
            elif verdict.retry_after:
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
                await self._publish(accepted, batch, group)
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
        await self._publish(accepted, batch, group)
        return [r if r is not None else [] for r in results]

    async def _publish(self, accepted: list[NewMessage], batch: int | None, group: Sequence[_SendJob]) -> None:
        """Publish the queued messages of a commit with one stream write (an entry per request's trace);
        on failure the outbox relay will."""
        due = [r for r in accepted if r.status is MessageStatus.QUEUED]
        if not due:
            return
        try:
            await self._queue.publish([r.id for r in due], {r.id: j.traceparent for j in group for r in j.rows})
        except Exception as exc:  # the relay publishes from the outbox
            _LOG.warning("dispatch publish failed (%s); %d messages left to the outbox relay",
                         type(exc).__name__, len(due))
        else:
            if batch is not None:
                self._published.append(batch)

    async def price_sms(self, caller: Caller, inputs: Sequence[OutboundInput]) -> SendResult:
        """What a send would cost and which messages it would refuse, storing and charging nothing."""
        check_batch_size(len(inputs))
        inputs = await expand_lists(self.lists, caller, inputs)
        if self.defaults is not None:
            inputs = await self.defaults.sender_for(caller, inputs)
        now = int(self._clock())
        items, valid = self._check(caller, inputs, now)
        valid = await self._check_senders(caller, inputs, items, valid)
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
        if not custom_string:
            return await self._store.cancel_scheduled(caller.account_id, None)
        key = await self.keys.get(caller.account_id)
        return await self._store.cancel_scheduled(
            caller.account_id, custom_string, custom_string_index(key, custom_string))

    async def forget_idempotency_keys(self) -> int:
        return await self._store.forget_idempotency_keys(IDEMPOTENCY_TTL_S)

    async def get_balance(self, account_id: int) -> Decimal:
        """The account's credit (the trial credit for an account that never sent)."""
        if account_id <= 0:
            raise InvalidAccountId("account_id must be a positive account id")
        value = await self._store.balance(account_id)
        return self._trial_credit if value is None else value
