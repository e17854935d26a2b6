"""Default senders (issue 21): what a customer may set, and which sender an empty `from` becomes."""

from __future__ import annotations

from typing import Any

import pytest

from services.messaging.domain.default_senders import (
    DefaultSender,
    DefaultSenderNotActive,
    InvalidDefaultSender,
    SenderType,
    StoredDefault,
    StrategyStatus,
    check_country,
    check_product,
    check_strategies,
    check_strategy,
    choose_sender,
    named_senders,
)
from services.messaging.domain.records import Caller, OutboundInput
from services.messaging.service.default_senders import DefaultSenders

NUM = "+61411000001"
NUM2 = "+61411000002"


def _default(sub: int, country: str, *strategies: tuple[str, str, str]) -> DefaultSender:
    return DefaultSender(id=f"d{sub}{country}", account_id=1, user_id=5, subaccount_id=sub, country=country,
                         strategies=tuple(check_strategy(t, s, status=st) for t, s, st in strategies))


def _everything(_: str) -> bool:
    return True


def test_the_users_default_beats_the_accounts() -> None:
    defaults = [_default(0, "AU", ("longcode", NUM, "")), _default(7, "AU", ("longcode", NUM2, ""))]
    assert choose_sender(defaults, 7, "AU", _everything, _everything) == NUM2
    assert choose_sender(defaults, 8, "AU", _everything, _everything) == NUM  # another user: the account's


def test_only_the_destination_countrys_default_applies() -> None:
    defaults = [_default(0, "AU", ("longcode", NUM, ""))]
    assert choose_sender(defaults, 7, "AU", _everything, _everything) == NUM
    assert choose_sender(defaults, 7, "NZ", _everything, _everything) == ""


def test_the_first_enabled_active_permitted_strategy_wins() -> None:
    d = _default(0, "AU", ("alpha_tag", "Acme", "DISABLED"), ("longcode", NUM, ""), ("own_number", NUM2, ""))
    assert choose_sender([d], 7, "AU", _everything, _everything) == NUM
    assert choose_sender([d], 7, "AU", lambda s: s != NUM, _everything) == NUM2  # released: the next one
    assert choose_sender([d], 7, "AU", _everything, lambda s: s == NUM2) == NUM2  # the key's sender limit
    assert choose_sender([d], 7, "AU", lambda s: False, _everything) == ""  # none usable: the shared number


def test_a_user_default_with_nothing_usable_falls_back_to_the_accounts() -> None:
    defaults = [_default(7, "AU", ("longcode", NUM2, "")), _default(0, "AU", ("longcode", NUM, ""))]
    assert choose_sender(defaults, 7, "AU", lambda s: s == NUM, _everything) == NUM


def test_a_shared_number_strategy_means_the_shared_number() -> None:
    d = _default(0, "AU", ("shared_longcode", "", ""), ("longcode", NUM, ""))
    assert choose_sender([d], 7, "AU", _everything, _everything) == ""
    assert named_senders(d.strategies) == [NUM]


def test_strategies_are_checked() -> None:
    s = check_strategy("longcode", "61 411 000 001")
    assert (s.sender_type, s.sender_id, s.status) == (SenderType.LONGCODE, NUM, StrategyStatus.ENABLED)
    for bad in [("tollfree", NUM), ("longcode", "Acme"), ("alpha_tag", "12345"), ("shared_longcode", NUM),
                ("alpha_tag", "A")]:
        with pytest.raises(InvalidDefaultSender) as err:
            check_strategy(*bad)
        assert err.value.reason == "INVALID_DEFAULT_SENDER"
    with pytest.raises(InvalidDefaultSender):
        check_strategy("longcode", NUM, status="PAUSED")
    with pytest.raises(InvalidDefaultSender):
        check_strategy("longcode", NUM, note="x" * 201)
    with pytest.raises(InvalidDefaultSender):
        check_strategies([])
    with pytest.raises(InvalidDefaultSender):
        check_strategies([check_strategy("longcode", NUM), check_strategy("own_number", NUM)])
    assert check_country(" au ") == "AU"
    assert check_product("") == "SMS"
    with pytest.raises(InvalidDefaultSender):
        check_country("AUS")
    with pytest.raises(InvalidDefaultSender):
        check_product("MMS")


# -- the use case's cache: sends with an empty `from` read an account's defaults once per TTL -------------------


class _Store:
    def __init__(self) -> None:
        self.rows: dict[str, StoredDefault] = {}
        self.reads = 0

    async def create_default(self, new: StoredDefault, before_commit: Any) -> StoredDefault | None:
        await before_commit()
        self.rows[new.id] = new
        return new

    async def defaults(self, account_id: int, after_seq: int = 0, limit: int = 10_000
                       ) -> list[tuple[int, StoredDefault]]:
        self.reads += 1
        return [(n, r) for n, r in enumerate(self.rows.values(), 1) if r.account_id == account_id]

    async def default(self, account_id: int, default_id: str) -> StoredDefault | None:
        r = self.rows.get(default_id)
        return r if r is not None and r.account_id == account_id else None

    async def delete_default(self, account_id: int, default_id: str, before_commit: Any) -> bool:
        await before_commit()
        return self.rows.pop(default_id, None) is not None


class _Cipher:
    async def encrypt(self, account_id: int, aad: bytes, plaintext: bytes) -> bytes:
        return plaintext[::-1]

    async def decrypt(self, account_id: int, aad: bytes, blob: bytes) -> bytes:
        return blob[::-1]


class _Index:
    def __init__(self, active: set[str]) -> None:
        self.active = active
        self.queries = 0

    async def refused(self, account_id: int, senders: list[str]) -> set[str]:
        self.queries += 1
        return {s for s in senders if s not in self.active}


async def test_sends_read_the_defaults_once_per_ttl_and_a_change_drops_them() -> None:
    store, index, events = _Store(), _Index({NUM}), []

    async def record(ev: Any) -> None:
        events.append(ev.action)

    uc = DefaultSenders(store, index, _Cipher(), record)  # type: ignore[arg-type]
    caller = Caller(account_id=1, user_id=5, api_username="u")
    msg = [OutboundInput(body="hi", to="+61412345678"), OutboundInput(body="hi", to="+61412345678", sender="X1")]
    assert [m.sender for m in await uc.sender_for(caller, msg)] == ["", "X1"]
    d = await uc.create(caller, "AU", "SMS", [check_strategy("longcode", NUM)])
    with pytest.raises(DefaultSenderNotActive):  # a sender the account does not hold: refused, nothing stored
        await uc.create(caller, "NZ", "SMS", [check_strategy("longcode", NUM2)])
    reads = store.reads
    for _ in range(50):
        assert [m.sender for m in await uc.sender_for(caller, msg)] == [NUM, "X1"]
    assert store.reads == reads + 1  # one read for 50 sends (cached)
    assert [m.sender for m in await uc.sender_for(caller, msg[1:])] == ["X1"]  # nothing to fill: no read at all
    await uc.delete(caller, d.id)
    assert [m.sender for m in await uc.sender_for(caller, msg)] == ["", "X1"]  # dropped at once in-process
    assert events == ["messaging.sender.default_set", "messaging.sender.default_deleted"]
    assert len(store.rows) == 0
