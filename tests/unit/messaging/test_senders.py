"""Sender identities (issue 21): the compared forms of a `from`, the platform hash, inventory rows, and the send
path's check over fakes - a `from` that is not an active identity is INVALID_SENDER_ID (nothing stored or paid),
an empty one costs no query, and a released identity is refused on the very next send (no cache)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from services.messaging.domain.senders import (
    ActiveSenders,
    InvalidSenderNumber,
    InventoryInvalid,
    allowed,
    check_e164,
    inventory_number,
    sender_hash,
    sender_key,
)
from services.messaging.service.sender_index import SenderIndex
from svckit.envelope import Envelope
from tests.unit.messaging.test_service import ALICE, REAL, FakeKeys, FakeQueue, FakeStore, make_service, msg

KEY = bytes(range(32))


@pytest.fixture
def parts() -> tuple[FakeStore, FakeQueue, Envelope]:
    return FakeStore(), FakeQueue(), Envelope(FakeKeys())  # type: ignore[arg-type]
OTHER_KEY = bytes(32)


def test_numbers_compare_as_e164_and_tags_as_normalised_letters() -> None:
    assert sender_key("+61 411 111 111") == sender_key("61411111111") == sender_key(" +61411111111 ") == "+61411111111"
    assert sender_key("My Shop") == sender_key("MYSHOP") == sender_key("my shop") == "MYSHOP"
    assert sender_key("Shop1") != sender_key("Shop 2")
    assert sender_key("12345") == "+12345" and sender_key("1234A") == "1234A"  # a digit-only tag is a number


def test_the_platform_hash_is_keyed_and_format_blind() -> None:
    h = sender_hash(KEY, "+61411111111")
    assert h == sender_hash(KEY, "61411111111") == sender_hash(KEY, "+61 411 111 111")
    assert h != sender_hash(OTHER_KEY, "+61411111111") and h != sender_hash(KEY, "+61411111112")
    assert b"61411111111" not in h and len(h) == 32


def test_allowed_matches_numbers_by_hash_and_tags_by_form() -> None:
    active = ActiveSenders(frozenset({sender_hash(KEY, "+61400000001")}), frozenset({"MYSHOP"}))
    assert allowed("61400000001", active, KEY) and allowed("+61 400 000 001", active, KEY)
    assert allowed("my shop", active, KEY) and allowed("MyShop", active, KEY)
    assert not allowed("+61400000002", active, KEY) and not allowed("MyBank", active, KEY)
    assert not allowed("61400000001", active, OTHER_KEY)  # another platform key: another hash


def test_inventory_rows_are_checked_and_name_their_line() -> None:
    n = inventory_number("61480000001", "au", ["SMS", "mms", ""], "0", "20.71")
    assert (n.number, n.country, n.capabilities, n.price_monthly) == ("+61480000001", "AU", ("mms", "sms"),
                                                                      Decimal("20.71"))
    for bad in (("+6148", "AU"), ("+61480000001", "Australia"), ("not a number", "AU")):
        with pytest.raises(InventoryInvalid, match="line 7"):
            inventory_number(*bad, line="line 7")
    with pytest.raises(InventoryInvalid, match="price"):
        inventory_number("+61480000001", "AU", ["sms"], "-1", "0")
    with pytest.raises(InventoryInvalid, match="price"):
        inventory_number("+61480000001", "AU", ["sms"], "0", "NaN")
    with pytest.raises(InventoryInvalid, match="capabilities"):
        inventory_number("+61480000001", "AU", ["fax"])
    with pytest.raises(InvalidSenderNumber):
        check_e164("0411 111 111")  # no country code: not E.164


class FakeDirectory:
    def __init__(self, numbers: list[str] = (), tags: list[str] = ()) -> None:  # type: ignore[assignment]
        self.numbers, self.tags, self.queries = list(numbers), list(tags), 0

    async def active_sender_ids(self, account_id: int) -> ActiveSenders:
        self.queries += 1
        return ActiveSenders(frozenset(sender_hash(KEY, n) for n in self.numbers),
                             frozenset(sender_key(t) for t in self.tags))

    async def sender_holder(self, value_hash: bytes) -> int | None:
        return ALICE.account_id if any(sender_hash(KEY, n) == value_hash for n in self.numbers) else None


async def test_a_send_from_anything_but_an_active_identity_is_refused_and_costs_nothing(parts) -> None:  # type: ignore[no-untyped-def]
    store, queue, env = parts
    directory = FakeDirectory(["+61400000001"], ["My Shop"])
    svc = make_service(store, queue, env, senders=SenderIndex(directory, KEY))
    result = await svc.send_sms(ALICE, [msg(sender="MyBank"), msg(sender="+61298765432"), msg(sender="61400000001"),
                                        msg(sender="my shop"), msg()])
    assert [i.status.value for i in result.items] == [
        "INVALID_SENDER_ID", "INVALID_SENDER_ID", "SUCCESS", "SUCCESS", "SUCCESS"]
    assert [i.price for i in result.items[:2]] == [Decimal(0), Decimal(0)] and not result.items[0].message_id
    assert len(store.messages) == 3 and directory.queries == 1  # one query for the whole request
    paid = Decimal("10") - store.balances[ALICE.account_id]
    assert paid == 3 * Decimal("0.0770")
    # Only refused ones: nothing stored, nothing debited.
    before = dict(store.messages)
    again = await svc.send_sms(ALICE, [msg(sender="MyBank")])
    assert again.items[0].status.value == "INVALID_SENDER_ID" and store.messages == before
    # Released: refused on the next send (nothing cached).
    directory.numbers.clear()
    assert (await svc.send_sms(ALICE, [msg(sender="61400000001")])).items[0].status.value == "INVALID_SENDER_ID"
    # Price answers the same.
    priced = await svc.price_sms(ALICE, [msg(sender="MyBank"), msg(sender="My Shop")])
    assert [i.status.value for i in priced.items] == ["INVALID_SENDER_ID", "SUCCESS"]


async def test_the_shared_number_costs_no_query_and_no_index_refuses_every_from(parts) -> None:  # type: ignore[no-untyped-def]
    store, queue, env = parts
    directory = FakeDirectory()
    svc = make_service(store, queue, env, senders=SenderIndex(directory, KEY))
    assert {i.status.value for i in (await svc.send_sms(ALICE, [msg(), msg(REAL, "x")])).items} == {"SUCCESS"}
    assert directory.queries == 0
    closed = make_service(store, queue, env)  # no SenderIndex wired: fail closed
    assert (await closed.send_sms(ALICE, [msg(sender="Anything")])).items[0].status.value == "INVALID_SENDER_ID"


def test_the_index_key_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        SenderIndex(FakeDirectory(), b"short")
