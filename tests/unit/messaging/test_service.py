"""MessagingService and DeliveryService with in-memory fakes for the store, queue, keys and carrier."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from decimal import Decimal

import pytest

from sendsafe.audit.v1 import event_pb2
from services.messaging.domain.delivery import ClaimedMessage, Receipt, Submission, SubmitResult
from services.messaging.domain.errors import InvalidAccountId
from services.messaging.domain.history import HistoryQuery
from services.messaging.domain.outbound import MissingRequiredFields, TooManyRecipients
from services.messaging.domain.pricing import CURRENCIES, PriceTable
from services.messaging.domain.records import BODY_RECORD, TO_RECORD, Caller, NewMessage, OutboundInput, StoredMessage
from services.messaging.domain.statuses import MessageStatus
from services.messaging.service.delivery import DeliveryService
from services.messaging.service.ids import new_message_ids
from services.messaging.service.messaging import MessagingService
from svckit.envelope import DecryptFailed, Envelope, aad_for
from svckit.paging import page_window

NOW = 1_800_000_000
REAL = "+61412345678"
TEST = "+61411111111"
ALICE = Caller(account_id=10, user_id=3, api_username="alice")


class FakeKeys:
    """DataKeySource: keys bound to their account (another account cannot unwrap them)."""

    def __init__(self) -> None:
        self.keys: dict[bytes, tuple[int, bytes]] = {}
        self.generated = 0

    async def generate(self, account_id: int) -> tuple[bytes, bytes]:
        self.generated += 1
        key, wrapped = os.urandom(32), os.urandom(16)
        self.keys[wrapped] = (account_id, key)
        return key, wrapped

    async def decrypt(self, account_id: int, wrapped_key: bytes) -> bytes:
        owner, key = self.keys.get(wrapped_key, (None, b""))
        if owner != account_id:
            raise DecryptFailed()
        return key


class FakeTx:
    def __init__(self, store: FakeStore) -> None:
        self.store = store
        self.balances = dict(store.balances)
        self.rows: list[NewMessage] = []
        self.idem: dict[tuple[int, bytes], tuple[bytes, bytes | None]] = {}

    async def lock_balance(self, account_id: int, initial: Decimal) -> Decimal:
        self.store.locks += 1
        return self.balances.setdefault(account_id, initial)

    async def debit(self, account_id: int, amount: Decimal) -> None:
        if amount:
            self.balances[account_id] -= amount
            assert self.balances[account_id] >= 0, "balance went negative"

    async def insert_messages(self, messages: Sequence[NewMessage]) -> int | None:
        self.rows.extend(messages)
        if not any(m.status is MessageStatus.QUEUED for m in messages):
            return None
        self.store.batches += 1
        return self.store.batches

    async def insert_funded(
        self, messages: Sequence[NewMessage], account_id: int, amount: Decimal
    ) -> tuple[bool, int | None]:
        """Like the real one: debit and insert only when an existing balance covers the amount."""
        self.store.funded_attempts += 1
        if account_id not in self.balances or self.balances[account_id] < amount:
            return False, None
        self.balances[account_id] -= amount
        return True, await self.insert_messages(messages)

    async def opted_out(self, pairs: Sequence[tuple[int, bytes]]) -> set[tuple[int, bytes]]:
        return {p for p in pairs if p in self.store.opt_outs}

    async def claim_idempotency(self, keys: Sequence[tuple[int, bytes, bytes]]) -> set[tuple[int, bytes]]:
        won = set()
        for acct, key_hash, fp in keys:
            if (acct, key_hash) not in self.store.idempotency and (acct, key_hash) not in self.idem:
                self.idem[(acct, key_hash)] = (fp, None)
                won.add((acct, key_hash))
        return won

    async def save_idempotent_results(self, results: Sequence[tuple[int, bytes, bytes]]) -> None:
        for acct, key_hash, blob in results:
            self.idem[(acct, key_hash)] = (self.idem[(acct, key_hash)][0], blob)


class FakeStore:
    """Writes land only when the transaction commits (the block exits without an exception)."""

    def __init__(self) -> None:
        self.balances: dict[int, Decimal] = {}
        self.messages: dict[str, NewMessage] = {}
        # Like the real outbox: one entry (ids, time, batch id) per send's due messages, one per scheduled message.
        self.outbox: list[tuple[tuple[str, ...], int, int | None]] = []
        self.batches = 0
        self.funded_attempts = 0
        self.transactions = 0
        self.locks = 0
        self.index_keys: dict[int, bytes] = {}
        self.opt_outs: set[tuple[int, bytes]] = set()
        self.idempotency: dict[tuple[int, bytes], tuple[bytes, bytes | None]] = {}

    async def index_key_ct(self, account_id: int) -> bytes | None:
        return self.index_keys.get(account_id)

    async def add_index_key_ct(self, account_id: int, blob: bytes) -> bytes:
        return self.index_keys.setdefault(account_id, blob)

    async def idempotent_result(self, account_id: int, key_hash: bytes) -> tuple[bytes, bytes | None] | None:
        return self.idempotency.get((account_id, key_hash))

    async def opted_out(self, pairs: Sequence[tuple[int, bytes]]) -> set[tuple[int, bytes]]:
        return {p for p in pairs if p in self.opt_outs}

    @contextlib.asynccontextmanager
    async def send_tx(self, *, atomic: bool = True) -> AsyncIterator[FakeTx]:
        self.transactions += 1
        tx = FakeTx(self)
        yield tx
        self.balances = tx.balances
        self.idempotency.update(tx.idem)
        due = [m for m in tx.rows if m.status is MessageStatus.QUEUED]
        for m in tx.rows:
            self.messages[m.id] = m
            if m.status is not MessageStatus.QUEUED:
                self.outbox.append(((m.id,), m.publish_at, None))
        if due:
            self.outbox.append((tuple(m.id for m in due), max(m.publish_at for m in due), self.batches))

    async def mark_published(self, batches: Sequence[int], redeliver_s: float) -> None:
        done = set(batches)
        self.outbox = [(ids, NOW + int(redeliver_s), b) if b in done else (ids, at, b) for ids, at, b in self.outbox]

    async def relay_due(
        self, limit: int, publish: Callable[[list[str]], Awaitable[None]], redeliver_s: float
    ) -> int:
        due = [o for o in self.outbox if o[1] <= NOW][:limit]
        if due:
            await publish([i for o in due for i in o[0]])
            self.outbox = [(o[0], NOW + int(redeliver_s), o[2]) if o in due else o for o in self.outbox]
        return len(due)

    async def balance(self, account_id: int) -> Decimal | None:
        return self.balances.get(account_id)

    closing: frozenset[int] = frozenset()  # account closure (issue 15): tests/unit/messaging/test_closure.py

    async def closing_accounts(self, account_ids: Sequence[int]) -> set[int]:
        return set(account_ids) & self.closing

    async def history(
        self, account_id: int, date_from: int | None, date_to: int | None, offset: int, limit: int,
        f: object = None, sort: object = None, to_hash: bytes | None = None, custom_hash: bytes | None = None,
    ) -> tuple[int, list[StoredMessage]]:
        mine = [m for m in reversed(self.messages.values()) if m.account_id == account_id]
        return len(mine), [
            StoredMessage(
                id=m.id, account_id=m.account_id, user_id=m.user_id, api_username=m.api_username, status=m.status,
                body_ct=m.body_ct, to_ct=m.to_ct, sender=m.sender, country=m.country, parts=m.parts, price=m.price,
                custom_string=m.custom_string, from_email=m.from_email, list_id=m.list_id, contact_id=m.contact_id,
                schedule=m.schedule, date=NOW, error_code=None, carrier="", custom_ct=m.custom_ct,
            )
            for m in mine[offset: offset + limit]
        ]


class FakeQueue:
    def __init__(self) -> None:
        self.published: list[str] = []
        self.dead: list[tuple[str, int]] = []
        self.fail = False

    async def publish(self, message_ids: Sequence[str], traceparents: Mapping[str, str] | None = None) -> None:
        if self.fail:
            raise ConnectionError("redis is down")
        self.published.extend(message_ids)

    async def dead_letter(self, failed: Sequence[tuple[str, int]]) -> None:
        self.dead.extend(failed)


@pytest.fixture
def keys() -> FakeKeys:
    return FakeKeys()


@pytest.fixture
def parts() -> tuple[FakeStore, FakeQueue, Envelope]:
    return FakeStore(), FakeQueue(), Envelope(FakeKeys())


def make_service(store: FakeStore, queue: FakeQueue, env: Envelope, **kw: object) -> MessagingService:
    args: dict[str, object] = {
        "prices": PriceTable(Decimal("0.0770"), {"US": Decimal("0.0500")}),
        "trial_credit": Decimal("10"),
        "currency": CURRENCIES["AUD"],
        "clock": lambda: float(NOW),
    }
    args.update(kw)
    return MessagingService(store, queue, env, **args)  # type: ignore[arg-type]


def msg(to: str = REAL, body: str = "hello", **kw: object) -> OutboundInput:
    return OutboundInput(body=body, to=to, **kw)  # type: ignore[arg-type]


# -- send ---------------------------------------------------------------------------------------------------


async def test_each_message_gets_its_own_status_and_only_valid_ones_are_stored(parts) -> None:  # type: ignore[no-untyped-def]
    store, queue, env = parts
    result = await make_service(store, queue, env).send_sms(ALICE, [
        msg("+6100"), msg(body="  "), msg(schedule=NOW - 3600), msg(sender="bad sender id!"), msg(body="x" * 1300),
        msg(body="\ud800"), msg(),
    ])
    assert [i.status.value for i in result.items] == [
        "INVALID_RECIPIENT", "EMPTY_MESSAGE", "INVALID_SCHEDULE", "INVALID_SENDER_ID", "MESSAGE_TOO_LONG",
        "INVALID_MESSAGE_BODY", "SUCCESS"]
    assert (result.queued_count, result.blocked_count) == (1, 6)
    assert all(not i.message_id for i in result.items[:6])
    assert list(store.messages) == [result.items[6].message_id] == queue.published


async def test_prices_follow_parts_country_and_test_rules(parts) -> None:  # type: ignore[no-untyped-def]
    store, queue, env = parts
    svc = make_service(store, queue, env)
    result = await svc.send_sms(ALICE, [msg(body="a" * 161), msg("+12015550123"), msg(TEST), msg(body="я" * 71)])
    assert [i.price for i in result.items] == [Decimal("0.1540"), Decimal("0.0500"), 0, Decimal("0.1540")]
    assert [i.parts for i in result.items] == [2, 1, 1, 2]
    assert result.total_price == Decimal("0.3580")
    assert store.balances[10] == Decimal("10") - Decimal("0.3580")
    free = await svc.send_sms(replace(ALICE, test_mode=True), [msg(), msg()])
    assert free.total_price == 0 and store.balances[10] == Decimal("10") - Decimal("0.3580")
    assert all(m.is_test for m in list(store.messages.values())[-2:])


async def test_credit_is_allocated_per_message_and_never_negative(parts) -> None:  # type: ignore[no-untyped-def]
    store, queue, env = parts
    svc = make_service(store, queue, env, trial_credit=Decimal("0.2"))
    result = await svc.send_sms(ALICE, [msg(), msg(body="b" * 200), msg(), msg(), msg(TEST)])
    assert [i.status.value for i in result.items] == [
        "SUCCESS", "INSUFFICIENT_CREDIT", "SUCCESS", "INSUFFICIENT_CREDIT", "SUCCESS"]
    assert store.balances[10] == Decimal("0.046")
    assert len(store.messages) == 3
    assert result.items[1].message_id == "" and result.items[1].price == 0


async def test_a_thousand_messages_are_one_batch(parts) -> None:  # type: ignore[no-untyped-def]
    store, queue, env = parts
    keys: FakeKeys = env._source  # type: ignore[assignment]
    result = await make_service(store, queue, env).send_sms(ALICE, [msg(TEST, f"m{i}") for i in range(1000)])
    assert result.queued_count == 1000 and len(store.messages) == 1000 and len(queue.published) == 1000
    assert store.transactions == 1 and keys.generated == 1  # one data key for the whole request


@pytest.mark.parametrize(("count", "error"), [(1001, TooManyRecipients), (0, MissingRequiredFields)])
async def test_whole_request_rejections_touch_nothing(parts, count: int, error: type[Exception]) -> None:  # type: ignore[no-untyped-def]
    store, queue, env = parts
    with pytest.raises(error) as info:
        await make_service(store, queue, env).send_sms(ALICE, [msg()] * count)
    assert info.value.reason in ("TOO_MANY_RECIPIENTS", "MISSING_REQUIRED_FIELDS")  # type: ignore[attr-defined]
    assert store.transactions == 0 and not store.messages and not queue.published
    assert env._source.generated == 0  # type: ignore[attr-defined]


async def test_all_rejected_opens_no_transaction(parts) -> None:  # type: ignore[no-untyped-def]
    store, queue, env = parts
    result = await make_service(store, queue, env).send_sms(ALICE, [msg("nope"), msg(body="")])
    assert result.queued_count == 0 and store.transactions == 0 and not queue.published


async def test_rows_hold_ciphertext_bound_to_account_and_record(parts) -> None:  # type: ignore[no-untyped-def]
    store, queue, env = parts
    result = await make_service(store, queue, env).send_sms(ALICE, [msg(body="top secret"), msg()])
    a, b = (store.messages[i.message_id] for i in result.items)
    for row in (a, b):
        assert b"top secret" not in row.body_ct and REAL.encode() not in row.to_ct
    assert await env.decrypt(10, aad_for(10, BODY_RECORD, a.id), a.body_ct) == b"top secret"
    assert await env.decrypt(10, aad_for(10, TO_RECORD, a.id), a.to_ct) == REAL.encode()
    with pytest.raises(DecryptFailed):
        await env.decrypt(11, aad_for(11, BODY_RECORD, a.id), a.body_ct)
    with pytest.raises(DecryptFailed):
        await env.decrypt(10, aad_for(10, BODY_RECORD, b.id), a.body_ct)


async def test_publish_failure_leaves_the_outbox_to_the_relay(parts) -> None:  # type: ignore[no-untyped-def]
    store, queue, env = parts
    svc = make_service(store, queue, env, outbox_grace_seconds=0)
    queue.fail = True
    result = await svc.send_sms(ALICE, [msg()])
    assert result.queued_count == 1 and not queue.published
    assert await svc.forget_published() == 0 and len(store.outbox) == 1
    queue.fail = False
    assert await svc.relay_outbox() == 1
    assert queue.published == [result.items[0].message_id]
    # Published, not forgotten: the row waits (redeliver_seconds) in case the stream entry is lost.
    assert [at for _, at, _ in store.outbox] == [NOW + 300]


async def test_published_rows_wait_in_the_outbox_until_settled(parts) -> None:  # type: ignore[no-untyped-def]
    store, queue, env = parts
    svc = make_service(store, queue, env)
    await svc.send_sms(ALICE, [msg(), msg()])
    assert [(len(ids), at) for ids, at, _ in store.outbox] == [(2, NOW + 5)]  # one batch for the send
    assert await svc.forget_published() == 1
    # Moved on by redeliver_seconds, not deleted: a lost stream entry is published again.
    assert [(len(ids), at) for ids, at, _ in store.outbox] == [(2, NOW + 300)]


async def test_scheduled_messages_wait_in_the_outbox(parts) -> None:  # type: ignore[no-untyped-def]
    store, queue, env = parts
    result = await make_service(store, queue, env).send_sms(ALICE, [msg(schedule=NOW + 600), msg(schedule=NOW - 5)])
    later, now = (store.messages[i.message_id] for i in result.items)
    assert later.status is MessageStatus.SCHEDULED and later.publish_at == NOW + 600 and later.schedule == NOW + 600
    assert now.status is MessageStatus.QUEUED and now.schedule is None  # within tolerance: send now
    assert queue.published == [now.id]


async def test_history_decrypts_and_maps_statuses(parts) -> None:  # type: ignore[no-untyped-def]
    store, queue, env = parts
    svc = make_service(store, queue, env)
    await svc.send_sms(ALICE, [msg(body=f"b{i}") for i in range(3)])
    await svc.send_sms(Caller(99, 1, "bob"), [msg(body="not yours")])
    page = await svc.list_history(ALICE, HistoryQuery(window=page_window(0, 0)))
    assert page.total == 3 and [i.body for i in page.items] == ["b2", "b1", "b0"]
    assert all(i.to == REAL and i.status.status == "Queued" and i.status.status_code == "200" for i in page.items)
    assert await svc.get_balance(10) == Decimal("10") - 3 * Decimal("0.077")
    assert await svc.get_balance(12345) == Decimal("10")  # never sent: the trial credit
    with pytest.raises(InvalidAccountId):
        await svc.get_balance(0)


# -- delivery -----------------------------------------------------------------------------------------------


class FakeDeliveryStore:
    def __init__(self, claimed: list[ClaimedMessage]) -> None:
        self.claimed = claimed
        self.results: tuple[list[tuple[str, str]], list[tuple[str, float]], list[tuple[str, int]]] | None = None
        self.receipts: list[Receipt] = []

    async def claim(self, message_ids: Sequence[str], lease_s: float = 30.0) -> list[ClaimedMessage]:
        return [c for c in self.claimed if c.id in message_ids]

    async def record_results(self, carrier, sent, retry, failed, *, sent_by=None):  # type: ignore[no-untyped-def]
        self.results = (list(sent), list(retry), list(failed))
        return [f[0] for f in failed]

    async def apply_receipts(self, receipts: Sequence[Receipt]) -> list[str]:
        self.receipts.extend(receipts)
        return [r.message_id for r in receipts]


class FakeCarrier:
    name = "fake"

    def __init__(self, refuse: set[str] | None = None, permanent: set[str] | None = None, boom: bool = False) -> None:
        self.refuse = refuse or set()
        self.permanent = permanent or set()
        self.boom = boom
        self.submitted: list[Submission] = []

    async def submit(self, batch: Sequence[Submission]) -> list[SubmitResult]:
        if self.boom:
            raise TimeoutError
        self.submitted.extend(batch)
        out = []
        for s in batch:
            if s.message_id in self.refuse:
                out.append(SubmitResult(s.message_id, accepted=False, error_code=16))
            elif s.message_id in self.permanent:
                out.append(SubmitResult(s.message_id, accepted=False, error_code=12))
            else:
                out.append(SubmitResult(s.message_id, accepted=True, carrier_ref=f"ref-{s.message_id}"))
        return out

    async def pump_receipts(self, handle, limit):  # type: ignore[no-untyped-def]
        return 0


async def _claimed(env: Envelope, n: int, attempts: int = 1) -> list[ClaimedMessage]:
    out = []
    for i in range(n):
        mid = f"00000000-0000-4000-8000-{i:012d}"
        body, to = await env.encrypt_many(10, [(aad_for(10, BODY_RECORD, mid), f"body {i}".encode()),
                                              (aad_for(10, TO_RECORD, mid), REAL.encode())])
        out.append(ClaimedMessage(mid, 10, body, to, "", attempts, False))
    return out


async def test_delivery_sends_retries_and_fails_as_planned() -> None:
    env = Envelope(FakeKeys())
    claimed = await _claimed(env, 4)
    claimed[3] = replace(claimed[3], attempts=3)
    ids = [c.id for c in claimed]
    store, queue = FakeDeliveryStore(claimed), FakeQueue()
    carrier = FakeCarrier(refuse={ids[1], ids[3]}, permanent={ids[2]})
    events: list[event_pb2.Event] = []

    async def record(ev: event_pb2.Event) -> None:
        events.append(ev)

    svc = DeliveryService(store, queue, env, carrier, max_attempts=3, retry_base_seconds=1, retry_cap_seconds=8,
                          record=record)
    assert await svc.deliver(ids) == 4
    assert [s.body for s in carrier.submitted] == ["body 0", "body 1", "body 2", "body 3"]
    assert all(s.to == REAL for s in carrier.submitted)
    sent, retry, failed = store.results  # type: ignore[misc]
    assert sent == [(ids[0], f"ref-{ids[0]}")]
    assert retry == [(ids[1], 1.0)]
    assert failed == [(ids[2], 12), (ids[3], 7)]  # permanent code kept; exhausted retries: unknown failure
    assert queue.dead == failed
    (ev,) = events
    assert ev.action == "messaging.sms.sent" and ev.actor.account_id == 10
    assert dict(ev.details) == {"sent": "1", "retried": "1", "failed": "2", "carrier": "fake"}
    assert "body" not in str(ev) and REAL not in str(ev)


async def test_carrier_error_means_retry_for_the_whole_batch() -> None:
    env = Envelope(FakeKeys())
    claimed = await _claimed(env, 2, attempts=2)
    store = FakeDeliveryStore(claimed)
    svc = DeliveryService(store, FakeQueue(), env, FakeCarrier(boom=True), max_attempts=5, retry_base_seconds=1,
                          retry_cap_seconds=60)
    await svc.deliver([c.id for c in claimed])
    assert store.results == ([], [(claimed[0].id, 2.0), (claimed[1].id, 2.0)], [])


async def test_undecryptable_messages_fail_without_reaching_the_carrier() -> None:
    env = Envelope(FakeKeys())
    claimed = await _claimed(env, 2)
    claimed[0] = replace(claimed[0], account_id=11)  # as if moved to another account: never decrypts
    store, carrier = FakeDeliveryStore(claimed), FakeCarrier()
    await DeliveryService(store, FakeQueue(), env, carrier).deliver([c.id for c in claimed])
    assert [s.message_id for s in carrier.submitted] == [claimed[1].id]
    assert store.results is not None and store.results[2] == [(claimed[0].id, 7)]


async def test_nothing_claimed_nothing_submitted() -> None:
    store, carrier = FakeDeliveryStore([]), FakeCarrier()
    assert await DeliveryService(store, FakeQueue(), Envelope(FakeKeys()), carrier).deliver(["x"]) == 0
    assert not carrier.submitted and store.results is None


async def test_concurrent_sends_share_transactions_and_never_overdraw(parts) -> None:  # type: ignore[no-untyped-def]
    """Forty concurrent single-message requests against 1.00 of credit at 0.077 each: exactly 12 are paid
    for, the balance never goes negative, and group commit needs fewer transactions than requests."""
    store, queue, env = parts
    svc = make_service(store, queue, env, trial_credit=Decimal("1.00"))
    results = await asyncio.gather(*(svc.send_sms(ALICE, [msg(body=f"m{i}")]) for i in range(40)))
    statuses = [r.items[0].status.value for r in results]
    assert statuses.count("SUCCESS") == 12 and statuses.count("INSUFFICIENT_CREDIT") == 28
    assert store.balances[10] == Decimal("1.00") - 12 * Decimal("0.0770")
    assert len(store.messages) == 12 and sorted(queue.published) == sorted(store.messages)
    assert store.transactions < 40


def test_bulk_message_ids_are_uppercase_random_version_4_uuids() -> None:
    import uuid

    ids = new_message_ids(2000)
    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 4 and u.variant == uuid.RFC_4122 for u in parsed)
    assert all(str(u).upper() == i for u, i in zip(parsed, ids, strict=True))
    assert len(set(ids)) == 2000 and new_message_ids(0) == []


async def test_a_send_the_balance_covers_is_debited_and_stored_in_one_step(parts) -> None:  # type: ignore[no-untyped-def]
    """Once the account has a balance, a send it fully covers takes the one-statement way: no lock."""
    store, queue, env = parts
    svc = make_service(store, queue, env, trial_credit=Decimal("1.00"))
    await svc.send_sms(ALICE, [msg(body="first")])  # creates the balance (the long way)
    locks, attempts = store.locks, store.funded_attempts
    result = await svc.send_sms(ALICE, [msg(body="a"), msg(body="b")])
    assert [i.status.value for i in result.items] == ["SUCCESS", "SUCCESS"]
    assert store.locks == locks and store.funded_attempts == attempts + 1
    assert store.balances[10] == Decimal("1.00") - 3 * Decimal("0.0770")
    assert len(store.messages) == 3 and sorted(queue.published) == sorted(store.messages)


async def test_a_send_the_balance_does_not_cover_falls_back_and_pays_message_by_message(parts) -> None:  # type: ignore[no-untyped-def]
    """Not enough credit for the whole send: the one-statement way writes nothing, and the long way pays
    for what fits, message by message, exactly as without it."""
    store, queue, env = parts
    svc = make_service(store, queue, env, trial_credit=Decimal("0.2000"))
    await svc.send_sms(ALICE, [msg(body="first")])  # 0.1230 left
    locks, attempts = store.locks, store.funded_attempts
    result = await svc.send_sms(ALICE, [msg(body="a"), msg(body="b")])
    assert [i.status.value for i in result.items] == ["SUCCESS", "INSUFFICIENT_CREDIT"]
    assert store.funded_attempts == attempts + 1 and store.locks == locks + 1
    assert store.balances[10] == Decimal("0.2000") - 2 * Decimal("0.0770")
    assert len(store.messages) == 2
