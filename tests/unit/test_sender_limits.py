"""Sender limits (issue 21): normalising a limit, comparing senders, intersecting a user's and a key's limits, the
messaging caller's check, and the audit summary that never holds a number."""

from __future__ import annotations

import pytest

from services.messaging.domain.limits import SendLimits
from svckit.senders import (
    MAX_ALLOWED_SENDERS,
    AllowedSendersInvalid,
    check_allowed_senders,
    forms,
    intersect_senders,
    sender_allowed,
    sender_form,
    senders_summary,
    senders_within,
)


def test_a_limit_is_normalised_and_deduplicated() -> None:
    got = check_allowed_senders(["61 411 111 111", "+61411111111", " My  Brand ", "MYBRAND", "Shop2"])
    assert got == ("+61411111111", "My Brand", "Shop2")
    assert check_allowed_senders([]) == ()
    assert sender_form("my brand") == sender_form("MYBRAND") == "MYBRAND"
    assert sender_form("+61 411 111 111") == sender_form("61411111111") == "+61411111111"


@pytest.mark.parametrize("bad", ["", "   ", "123", "+0123456789", "1234567890123456", "TwelveChars1", "Bank&Co",
                                 "My.Bank", "Ünicode", "\u200bBank"])
def test_bad_entries_are_refused_by_position_never_by_value(bad: str) -> None:
    with pytest.raises(AllowedSendersInvalid) as err:
        check_allowed_senders(["Fine", bad])
    assert err.value.reason == "ALLOWED_SENDERS_INVALID" and "entry 2" in str(err.value)
    if bad.strip():
        assert bad.strip() not in str(err.value)


def test_at_most_twenty_senders() -> None:
    many = [f"Tag{i}" for i in range(MAX_ALLOWED_SENDERS)]
    assert len(check_allowed_senders([*many, "tag0"])) == MAX_ALLOWED_SENDERS  # a duplicate is not another
    with pytest.raises(AllowedSendersInvalid):
        check_allowed_senders([*many, "Tag20"])


def test_within_and_intersection() -> None:
    assert senders_within(["A1"], []) and senders_within([], [])
    assert senders_within(["a 1"], ["A1", "B1"])
    assert not senders_within([], ["A1"])  # no limit is wider than any limit
    assert not senders_within(["A1", "C1"], ["A1", "B1"])
    assert intersect_senders([], []) == ((), False)
    assert intersect_senders(["A1"], []) == (("A1",), True)
    assert intersect_senders([], ["+61411111111"]) == (("+61411111111",), True)
    assert intersect_senders(["A1", "+61411111111"], ["a1", "B1"]) == (("A1",), True)
    assert intersect_senders(["A1"], ["B1"]) == ((), True)  # both limit, nothing in common: no sender at all


def test_the_send_check() -> None:
    assert sender_allowed("", None) and sender_allowed("Anything", None)
    allowed = forms(["My Brand", "+61411111111"])
    assert sender_allowed("MYBRAND", allowed) and sender_allowed("61411111111", allowed)
    assert not sender_allowed("Other", allowed) and not sender_allowed("+61422222222", allowed)
    assert not sender_allowed("", allowed) and not sender_allowed("  ", allowed)  # no fallback to the shared number
    assert not sender_allowed("A1", frozenset())  # limited to nothing
    assert SendLimits().allows_sender("") and not SendLimits(senders=allowed).allows_sender("")


def test_the_audit_summary_holds_no_number() -> None:
    summary = senders_summary(("+61411111111", "+61422222222", "My Brand"))
    assert summary == "My Brand,2 numbers" and "614" not in summary
    assert senders_summary(("+61411111111",)) == "1 number" and senders_summary(()) == ""
