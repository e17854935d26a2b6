"""MessagingService in depth, with the in-memory fakes: idempotent retries, opt-outs, limits, allowed
countries, pricing without storing, history search over the decrypted window, de-identification."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal

import pytest

from services.messaging.domain.errors import MessageStatusCode
from services.messaging.domain.history import HistoryQuery, SearchNotPermitted, parse_history_filter, parse_history_sort
from services.messaging.domain.idempotency import IdempotencyKeyReused, InvalidIdempotencyKey
from services.messaging.domain.limits import (
    LimitRequest,
    LimitVerdict,
    RateConfig,
    RateLimited,
    SendLimitExceeded,
    SendLimits,
)
from services.messaging.domain.privacy import number_index
from services.messaging.domain.records import Caller
from svckit.envelope import Envelope
from svckit.paging import page_window
from tests.unit.messaging.test_service import (
    ALICE,
    NOW,
    REAL,
    TEST,
    FakeKeys,
    FakeQueue,
    FakeStore,
    make_service,
    msg,
)


@pytest.fixture
def parts() -> tuple[FakeStore, FakeQueue, Envelope]:
    return FakeStore(), FakeQueue(), Envelope(FakeKeys())


class FakeLimiter:
    """Refuses requests with more than `max_messages`; throttles messages past `per_prefix` per counter."""

    def __init__(self, max_messages: int = 1000, per_prefix: int = 1000, wait: float = 2.5) -> None:
        self.max_messages = max_messages
        self.per_prefix = per_prefix
        self.wait = wait
        self.seen: list[LimitRequest] = []
        self.counts: dict[str, int] = {}

    async def check(self, requests: Sequence[LimitRequest]) -> list[LimitVerdict]:
        out = []
        for r in requests:
            self.seen.append(r)
            if len(r.velocity) > self.max_messages:
                out.append(LimitVerdict(retry_after=self.wait, exceeded="account",
                                        throttled=tuple(False for _ in r.velocity)))
                continue
            marks = []
            for v in r.velocity:
                if v is None:
                    marks.append(False)
                    continue
                self.counts[v.key] = self.counts.get(v.key, 0) + 1
                marks.append(self.counts[v.key] > self.per_prefix)
            out.append(LimitVerdict(throttled=tuple(marks)))
        return out


# -- idempotency ------------------------------------------------------------------------------------------


async def test_a_retry_with_the_same_key_gets_the_first_answer_and_is_not_charged_again(parts) -> None:  # type: ignore[no-untyped-def]
    store, queue, env = parts
    svc = make_service(store, queue, env)
    first = await svc.send_sms(ALICE, [msg(), msg(body="two")], "key-1")
    balance = store.balances[10]
    again = await svc.send_sms(ALICE, [msg(), msg(body="two")], "key-1")
    assert again == first
    assert len(store.messages) == 2 and store.balances[10] == balance and len(queue.published) == 2
    # The stored answer is ciphertext: neither the body nor the number is in it.
    ((_, blob),) = [v for v in store.idempotency.values()]
    assert blob is not None and b"two" not in blob and REAL.encode() not in blob


async def test_the_same_key_with_another_request_is_refused(parts) -> None:  # type: ignore[no-untyped-def]
    store, queue, env = parts
    svc = make_service(store, queue, env)
    await svc.send_sms(ALICE, [msg()], "key-1")
    with pytest.raises(IdempotencyKeyReused):
        await svc.send_sms(ALICE, [msg(body="different")], "key-1")
    # Keys are per account: another account may use the same key.
    other = await svc.send_sms(replace(ALICE, account_id=11), [msg()], "key-1")
    assert other.queued_count == 1 and len(store.messages) == 2


async def test_concurrent_requests_with_one_key_send_once(parts) -> None:  # type: ignore[no-untyped-def]
    store, queue, env = parts
    svc = make_service(store, queue, env)
    results = await asyncio.gather(*(svc.send_sms(ALICE, [msg()], "same") for _ in range(5)))
    assert len({r.items[0].message_id for r in results}) == 1
    assert len(store.messages) == 1 and store.balances[10] == Decimal("10") - Decimal("0.0770")


async def test_bad_idempotency_key(parts) -> None:  # type: ignore[no-untyped-def]
    store, queue, env = parts
    with pytest.raises(InvalidIdempotencyKey):
        await make_service(store, queue, env).send_sms(ALICE, [msg()], "has space")


# -- opt-outs, countries, limits --------------------------------------------------------------------------


async def test_opted_out_recipients_are_refused_per_message_and_not_charged(parts) -> None:  # type: ignore[no-untyped-def]
    store, queue, env = parts
    svc = make_service(store, queue, env)
    key = await svc.keys.get(10)
    store.opt_outs.add((10, number_index(key, REAL)))
    result = await svc.send_sms(ALICE, [msg(), msg(TEST)])
    assert [i.status for i in result.items] == [MessageStatusCode.RECIPIENT_OPTED_OUT, MessageStatusCode.SUCCESS]
    assert result.items[0].message_id == "" and result.items[0].price == 0
    assert len(store.messages) == 1 and store.balances[10] == Decimal("10")  # nothing charged
    # The opt-out belongs to account 10 only.
    assert (await svc.send_sms(replace(ALICE, account_id=11), [msg()])).queued_count == 1


async def test_the_key_may_send_only_to_its_countries(parts) -> None:  # type: ignore[no-untyped-def]
    store, queue, env = parts
    caller = replace(ALICE, limits=SendLimits(countries=frozenset({"AU"})))
    result = await make_service(store, queue, env).send_sms(caller, [msg(), msg("+14155550123")])
    assert [i.status for i in result.items] == [MessageStatusCode.SUCCESS, MessageStatusCode.COUNTRY_NOT_ALLOWED]
    assert len(store.messages) == 1


async def test_rate_limited_requests_store_and_charge_nothing(parts) -> None:  # type: ignore[no-untyped-def]
    store, queue, env = parts
    limiter = FakeLimiter(max_messages=1)
    svc = make_service(store, queue, env, limiter=limiter)
    with pytest.raises(RateLimited) as err:
        await svc.send_sms(ALICE, [msg(), msg()])
    assert err.value.metadata["retry_after_seconds"] == "3"
    assert not store.messages and not queue.published and store.transactions == 0
    assert (await svc.send_sms(ALICE, [msg()])).queued_count == 1


async def test_key_limits_are_their_own_error(parts) -> None:  # type: ignore[no-untyped-def]
    store, queue, env = parts

    class KeyMinute(FakeLimiter):
        async def check(self, requests: Sequence[LimitRequest]) -> list[LimitVerdict]:
            return [LimitVerdict(retry_after=40, exceeded="key_minute") for _ in requests]

    with pytest.raises(SendLimitExceeded):
        await make_service(store, queue, env, limiter=KeyMinute()).send_sms(ALICE, [msg()])


async def test_prefix_velocity_throttles_per_message(parts) -> None:  # type: ignore[no-untyped-def]
    store, queue, env = parts
    from services.messaging.service.common import MessagingOptions

    limiter = FakeLimiter(per_prefix=2)
    svc = make_service(store, queue, env, limiter=limiter,
                       options=MessagingOptions(rates=RateConfig(prefix_limit=2)))
    result = await svc.send_sms(ALICE, [msg(), msg(), msg(TEST), msg("+61412345699"), msg("+61498765432")])
    assert [i.status for i in result.items] == [
        MessageStatusCode.SUCCESS, MessageStatusCode.SUCCESS, MessageStatusCode.SUCCESS,
        MessageStatusCode.THROTTLED, MessageStatusCode.SUCCESS,
    ]
    (req,) = limiter.seen
    assert req.velocity[2] is None  # test recipients are never sent: exempt
    assert req.velocity[0] == req.velocity[3] != req.velocity[4]  # +614123.. vs +614987..
    assert all("+61" not in (v.key if v else "") for v in req.velocity)  # keyed tokens, never digits
    assert len(store.messages) == 4


# -- price ------------------------------------------------------------------------------------------------


async def test_price_stores_nothing_and_reports_like_a_send(parts) -> None:  # type: ignore[no-untyped-def]
    store, queue, env = parts
    svc = make_service(store, queue, env)
    result = await svc.price_sms(ALICE, [msg(), msg("nope"), msg(TEST), msg(body="x" * 200)])
    assert [i.status for i in result.items] == [
        MessageStatusCode.SUCCESS, MessageStatusCode.INVALID_RECIPIENT, MessageStatusCode.SUCCESS,
        MessageStatusCode.SUCCESS,
    ]
    assert [i.price for i in result.items] == [Decimal("0.0770"), Decimal(0), Decimal(0), Decimal("0.1540")]
    assert result.total_price == Decimal("0.2310") and result.queued_count == 3 and result.blocked_count == 1
    assert not store.messages and not queue.published and store.transactions == 0 and not store.balances


# -- history ----------------------------------------------------------------------------------------------


async def test_history_body_search_and_content_sort_work_on_decrypted_rows(parts) -> None:  # type: ignore[no-untyped-def]
    store, queue, env = parts
    svc = make_service(store, queue, env)
    await svc.send_sms(ALICE, [msg(body="banana"), msg("+61412345600", body="Apple pie"), msg(body="apple")])
    q = HistoryQuery(window=page_window(1, 15), filter=parse_history_filter("body:APPLE"),
                     sort=parse_history_sort("to:asc"))
    page = await svc.list_history(ALICE, q)
    assert page.total == 2 and [i.to for i in page.items] == ["+61412345600", REAL]
    by_body = await svc.list_history(
        ALICE, HistoryQuery(window=page_window(1, 15), sort=parse_history_sort("body:asc")))
    assert [i.body for i in by_body.items] == ["apple", "Apple pie", "banana"]


async def test_deidentified_users_see_masks_and_cannot_search_content(parts) -> None:  # type: ignore[no-untyped-def]
    store, queue, env = parts
    svc = make_service(store, queue, env)
    await svc.send_sms(ALICE, [msg(body="secret")])
    hidden = replace(ALICE, deidentified=True)
    page = await svc.list_history(hidden, HistoryQuery(window=page_window(1, 15)))
    (item,) = page.items
    assert item.body == "" and item.to == "+61******678"
    with pytest.raises(SearchNotPermitted):
        await svc.list_history(hidden, HistoryQuery(window=page_window(1, 15),
                                                    filter=parse_history_filter("body:secret")))


async def test_test_hooks_need_test_mode(parts) -> None:  # type: ignore[no-untyped-def]
    from services.messaging.domain.receipts import TestModeOnly

    store, queue, env = parts
    svc = make_service(store, queue, env)
    with pytest.raises(TestModeOnly):
        await svc.create_test_receipt(ALICE, "poll")
    with pytest.raises(TestModeOnly):
        await svc.create_test_inbound(ALICE, "poll")


def test_caller_defaults_are_least_surprising() -> None:
    c = Caller(1, 2, "u")
    assert c.limits == SendLimits() and not c.deidentified and not c.staff and c.api_key_id == ""
    assert NOW > 0
