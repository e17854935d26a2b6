"""Domain rules added for sending: batch size, credit, transitions as SQL guards, retries, paging, prices."""

from __future__ import annotations

from decimal import Decimal

import pytest

from services.messaging.domain.delivery import ClaimedMessage, SubmitResult, plan_results, retry_delay
from services.messaging.domain.outbound import MissingRequiredFields, TooManyRecipients, check_batch_size
from services.messaging.domain.pricing import allocate_credit, currency_for, parse_price_table
from services.messaging.domain.recipients import parse_recipient
from services.messaging.domain.statuses import MessageStatus, sources_of
from svckit.paging import InvalidPaging, page_window

S = MessageStatus


def test_batch_size_limits() -> None:
    check_batch_size(1)
    check_batch_size(1000)
    with pytest.raises(MissingRequiredFields):
        check_batch_size(0)
    with pytest.raises(TooManyRecipients) as info:
        check_batch_size(1001)
    assert info.value.reason == "TOO_MANY_RECIPIENTS"


def test_allocate_credit_in_order_and_never_negative() -> None:
    d = Decimal
    assert allocate_credit(d("0.2"), [d("0.077"), d("0.154"), d("0.077"), d("0.077"), d(0)]) == [
        True, False, True, False, True]
    assert allocate_credit(d(0), [d(0), d("0.01")]) == [True, False]
    assert allocate_credit(d("1"), [d("1")]) == [True]
    with pytest.raises(ValueError):
        allocate_credit(d(1), [d(-1)])


def test_sources_are_the_inverse_of_the_transitions() -> None:
    assert sources_of(S.SENDING) == {S.QUEUED, S.SCHEDULED}
    assert sources_of(S.SENT) == {S.SENDING}
    assert sources_of(S.DELIVERED) == {S.SENDING, S.SENT}
    assert sources_of(S.FAILED) == {S.SENDING, S.SENT}
    assert sources_of(S.QUEUED) == {S.SCHEDULED}
    for final in (S.DELIVERED, S.FAILED, S.CANCELLED):
        assert all(final not in sources_of(s) for s in S)  # nothing leaves a final state


def test_retry_delay_doubles_up_to_the_cap() -> None:
    assert [retry_delay(a, 1, 10) for a in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert retry_delay(1000, 0.05, 60) == 60
    with pytest.raises(ValueError):
        retry_delay(0, 1, 10)


def test_page_window() -> None:
    assert page_window(0, 0) == page_window(1, 15)
    w = page_window(3, 20)
    assert (w.offset, w.last_page(41), w.bounds(41, 1)) == (40, 3, (41, 41))
    assert w.bounds(41, 0) == (None, None) and page_window(1, 15).last_page(0) == 1
    for page, limit in ((-1, 15), (1, 14), (1, 101), (1, -5)):
        with pytest.raises(InvalidPaging):
            page_window(page, limit)


def test_price_table_from_text() -> None:
    t = parse_price_table(" au=0.0770, US=0.05 ,", Decimal("0.1"))
    assert t.price_per_part("AU") == Decimal("0.0770") and t.price_per_part("us") == Decimal("0.05")
    assert t.price_per_part("GB") == Decimal("0.1")
    for bad in ("AU", "AU=x", "AU=1,AU=2", "AUS=1", "AU=-1"):
        with pytest.raises(ValueError):
            parse_price_table(bad, Decimal("0.1"))


def test_currency() -> None:
    assert currency_for("aud").currency_name_long == "Australian Dollars"
    with pytest.raises(ValueError):
        currency_for("XYZ")


def test_plan_results() -> None:
    def c(i: int, attempts: int) -> ClaimedMessage:
        return ClaimedMessage(str(i), 1, b"", b"", "", attempts, False)

    claimed = [c(1, 1), c(2, 1), c(3, 3), c(4, 1), c(5, 1)]
    results = [
        SubmitResult("1", True, "r1"),
        SubmitResult("2", False, error_code=16),
        SubmitResult("3", False, error_code=16),
        SubmitResult("4", False, error_code=12),
    ]  # no answer for 5: unknown outcome, retried
    sent, retry, failed = plan_results(claimed, results, max_attempts=3)
    assert [s.message_id for s in sent] == ["1"]
    assert retry == [("2", 1), ("5", 1)]
    assert failed == [("3", 7), ("4", 12)]


def test_valid_recipients_are_memoised_and_invalid_ones_still_raise() -> None:
    assert parse_recipient("+61412345678", None) is parse_recipient("+61412345678", None)
    for _ in range(2):
        with pytest.raises(Exception, match="not a valid phone number"):
            parse_recipient("+6100", None)
