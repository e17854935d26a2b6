"""Default senders (issue 21): what a customer may set, and which sender an empty `from` becomes."""

from __future__ import annotations

import pytest

from services.messaging.domain.default_senders import (
    DefaultSender,
    InvalidDefaultSender,
    SenderType,
    StrategyStatus,
    check_country,
    check_product,
    check_strategies,
    check_strategy,
    choose_sender,
    named_senders,
)

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
