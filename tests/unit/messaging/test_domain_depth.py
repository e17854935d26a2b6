"""Pure rules added for messaging in depth: history search, masking, opt-out keywords, idempotency,
limits, webhook URLs and addresses, signatures."""

from __future__ import annotations

from decimal import Decimal

import pytest

from services.messaging.domain.delivery import verify_signature, webhook_signature
from services.messaging.domain.errors import MessageStatusCode
from services.messaging.domain.history import (
    HistoryFilter,
    HistorySort,
    InvalidQuery,
    SearchNotPermitted,
    check_content_search,
    matches_content,
    parse_history_filter,
    parse_history_sort,
)
from services.messaging.domain.idempotency import (
    InvalidIdempotencyKey,
    check_idempotency_key,
    decode_send_result,
    encode_send_result,
    idempotency_key_hash,
    request_fingerprint,
)
from services.messaging.domain.limits import (
    LimitVerdict,
    RateConfig,
    RateLimited,
    SendLimitExceeded,
    SendLimits,
    destination_prefix,
    limit_error,
    limit_request,
)
from services.messaging.domain.optouts import OptAction, first_word, opt_action
from services.messaging.domain.pricing import CURRENCIES
from services.messaging.domain.privacy import (
    InvalidSettings,
    check_retention_days,
    index_token,
    mask_number,
    number_index,
)
from services.messaging.domain.receipts import InboundRecord, InboundView, ReceiptRecord
from services.messaging.domain.records import Caller, OutboundInput, SendItem, SendResult
from services.messaging.domain.statuses import MessageStatus
from services.messaging.domain.webhooks import inbound_payload, receipt_payload, webhook_backoff

KEY = bytes(range(32))

# -- history search and sort ------------------------------------------------------------------------------


def test_filter_parses_every_field() -> None:
    f = parse_history_filter(
        "status:sent, to:+61 412 345 678,from:Acme,custom_string:ref-1,"
        "message_id:5f0c2a1e-0000-4000-8000-000000000001,username:bob,country:au,body:Hello"
    )
    assert f.statuses == frozenset({MessageStatus.SENT, MessageStatus.DELIVERED})
    assert f.to == "+61412345678" and f.sender == "Acme" and f.custom_string == "ref-1"
    assert f.message_id == "5F0C2A1E-0000-4000-8000-000000000001" and f.username == "bob"
    assert f.country == "AU" and f.body_contains == "hello"
    assert f.touches_content
    assert parse_history_filter("_api_username:bob").username == "bob"
    assert parse_history_filter("") == HistoryFilter()


@pytest.mark.parametrize(
    "q",
    ["status", "nope:1", "status:Lost", "to:abc", "message_id:12", "country:AUS", "status:sent,status:failed",
     "body:", "x" * 1001],
)
def test_bad_filters_are_refused_without_echoing_values(q: str) -> None:
    with pytest.raises(InvalidQuery) as err:
        parse_history_filter(q)
    assert "abc" not in err.value.message and "Lost" not in err.value.message


@pytest.mark.parametrize(
    ("order_by", "field", "desc"),
    [("", "date", True), ("date:asc", "date", False), ("to:desc", "to", True), ("BODY", "body", False),
     ("status:desc", "status", True), ("username:asc", "username", False), ("from:desc", "from", True)],
)
def test_sort(order_by: str, field: str, desc: bool) -> None:
    s = parse_history_sort(order_by)
    assert (s.field, s.descending) == (field, desc)


@pytest.mark.parametrize("order_by", ["price:asc", "date:up", "date:asc:x"])
def test_bad_sort(order_by: str) -> None:
    with pytest.raises(InvalidQuery):
        parse_history_sort(order_by)


def test_deidentified_users_cannot_search_or_sort_by_content() -> None:
    plain = parse_history_filter("status:sent")
    check_content_search(plain, HistorySort(), deidentified=True)
    for f, s in [(parse_history_filter("to:+61412345678"), HistorySort()),
                 (parse_history_filter("body:x"), HistorySort()),
                 (plain, parse_history_sort("to:asc")), (plain, parse_history_sort("body:desc"))]:
        check_content_search(f, s, deidentified=False)
        with pytest.raises(SearchNotPermitted):
            check_content_search(f, s, deidentified=True)


def test_content_match() -> None:
    f = parse_history_filter("body:WORLD,to:+61412345678")
    assert matches_content(f, "hello world", "+61412345678")
    assert not matches_content(f, "hello there", "+61412345678")
    assert not matches_content(f, "hello world", "+61412345679")


# -- keyed hashes, masking, retention ---------------------------------------------------------------------


def test_number_index_is_keyed_and_exact() -> None:
    a = number_index(KEY, "+61412345678")
    assert a == number_index(KEY, "+61412345678") and len(a) == 32
    assert a != number_index(KEY, "+61412345679")
    assert a != number_index(bytes(32), "+61412345678")
    assert index_token(KEY, "prefix", "+614123") != index_token(KEY, "idem", "+614123")
    with pytest.raises(ValueError):
        number_index(b"short", "+61412345678")


@pytest.mark.parametrize(
    ("number", "masked"),
    [("+61412345678", "+61******678"), ("+14155550123", "+1*******123"), ("+447700900123", "+44*******123"),
     ("", ""), ("+1234", "*****")],
)
def test_mask_number(number: str, masked: str) -> None:
    assert mask_number(number) == masked


def test_retention_bounds() -> None:
    assert check_retention_days(0) == 0 and check_retention_days(30) == 30
    for bad in (-1, 3651):
        with pytest.raises(InvalidSettings):
            check_retention_days(bad)


# -- opt-out keywords -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "action"),
    [("STOP", OptAction.OPT_OUT), (" stop. ", OptAction.OPT_OUT), ("Unsubscribe!", OptAction.OPT_OUT),
     ("STOP ALL", OptAction.OPT_OUT), ("opt-out", OptAction.OPT_OUT), ("start", OptAction.OPT_IN),
     ("UNSTOP", OptAction.OPT_IN), ("please don't stop", OptAction.NONE), ("stopping by later", OptAction.NONE),
     ("", OptAction.NONE), ("Yes", OptAction.NONE)],
)
def test_opt_action(body: str, action: OptAction) -> None:
    assert opt_action(body) is action


def test_keyword_is_the_first_word() -> None:
    assert first_word("  Yes please ") == "Yes" and first_word("") == ""


# -- idempotency ------------------------------------------------------------------------------------------


def test_idempotency_keys() -> None:
    assert check_idempotency_key("3f1e-key") == "3f1e-key"
    for bad in ("", "with space", "x" * 256, "é"):
        with pytest.raises(InvalidIdempotencyKey):
            check_idempotency_key(bad)
    assert idempotency_key_hash("a") != idempotency_key_hash("b")


def test_fingerprint_is_keyed_and_covers_every_field() -> None:
    one = [OutboundInput(body="hi", to="+61412345678")]
    assert request_fingerprint(KEY, one) == request_fingerprint(KEY, list(one))
    assert request_fingerprint(KEY, one) != request_fingerprint(bytes(32), one)
    assert request_fingerprint(KEY, one) != request_fingerprint(KEY, [OutboundInput(body="hi", to="+61412345679")])
    assert request_fingerprint(KEY, one) != request_fingerprint(
        KEY, [OutboundInput(body="hi", to="+61412345678", custom_string="x")])


def test_send_result_round_trips() -> None:
    r = SendResult(
        date=1_800_000_000,
        items=[
            SendItem(OutboundInput(body="héllo 😀", to="+61412345678", custom_string="c"), MessageStatusCode.SUCCESS,
                     message_id="ABC", to="+61412345678", country="AU", parts=1, price=Decimal("0.0770")),
            SendItem(OutboundInput(body="x", to="nope"), MessageStatusCode.INVALID_RECIPIENT, to="nope"),
        ],
        currency=CURRENCIES["AUD"],
    )
    assert decode_send_result(encode_send_result(r)) == r


# -- limits -----------------------------------------------------------------------------------------------


def test_limit_request_draws_from_the_configured_buckets() -> None:
    cfg = RateConfig(account_rate=10, account_burst=1000, key_rate=5, key_burst=1000, prefix_limit=3)
    caller = Caller(7, 1, "a", api_key_id="k1", limits=SendLimits(per_minute=60, per_day=1000))
    req = limit_request(cfg, caller, ["t1", None, "t1"])
    assert [b.key for b in req.buckets] == ["account:7", "api_key:k1", "key_minute:k1", "key_day:k1"]
    assert req.buckets[2].window == 60 and req.buckets[3].window == 86_400
    assert req.velocity[1] is None and req.velocity[0] == req.velocity[2]
    assert req.velocity[0] is not None and req.velocity[0].key == "prefix:7:t1"
    none = limit_request(RateConfig(), Caller(7, 1, "a"), ["t"])
    assert none.buckets == () and none.velocity == (None,)
    # A key in a lineage counts on the lineage's bucket, held to its own caps.
    heir = Caller(7, 1, "a", api_key_id="k2", limits=SendLimits(per_minute=5, per_day=9, bucket="k1"))
    assert [(b.key, b.capacity) for b in limit_request(cfg, heir, []).buckets[1:]] == [
        ("api_key:k2", 1000), ("key_minute:k1", 5), ("key_day:k1", 9)]


@pytest.mark.parametrize(
    "kw", [{"account_rate": 1}, {"account_rate": 1, "account_burst": 999}, {"key_rate": -1, "key_burst": 1000},
           {"prefix_digits": 0}, {"prefix_window": 0}],
)
def test_rate_config_is_checked(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RateConfig(**kw)  # type: ignore[arg-type]


def test_limit_errors_carry_retry_after() -> None:
    err = limit_error(LimitVerdict(retry_after=2.2, exceeded="account"), SendLimits())
    assert isinstance(err, RateLimited) and err.metadata["retry_after_seconds"] == "3"
    key = limit_error(LimitVerdict(retry_after=30, exceeded="key_minute"), SendLimits(per_minute=10))
    assert isinstance(key, SendLimitExceeded) and key.metadata["retry_after_seconds"] == "30"
    never = limit_error(LimitVerdict(retry_after=-1, exceeded="key_day"), SendLimits(per_day=5))
    assert "retry_after_seconds" not in never.metadata and "5 messages per day" in never.message


def test_allowed_countries() -> None:
    assert SendLimits().allows_country("AU")
    limits = SendLimits(countries=frozenset({"AU"}))
    assert limits.allows_country("au") and not limits.allows_country("US")


def test_destination_prefix() -> None:
    assert destination_prefix("+61412345678", 4) == "+614123"
    assert destination_prefix("+14155550123", 3) == "+1415"
    # With the region known (the send path), no parse: the same answer.
    assert destination_prefix("+61412345678", 4, "AU") == "+614123"
    assert destination_prefix("+14155550123", 3, "US") == "+1415"
    assert destination_prefix("+447700900123", 2, "GB") == "+4477"


# -- webhooks (the URL policy and customer signatures: tests/unit/test_webhooks.py) -------------------------


def test_carrier_callback_signatures() -> None:
    secret, body = b"whsec_x", b'{"a":1}'
    sig = webhook_signature(secret, 1_800_000_000, body)
    assert sig.startswith("v1=") and len(sig) == 67
    assert verify_signature(secret, "1800000000", body, sig, 1_800_000_100)
    assert verify_signature(secret, "1800000000", body, f"v1=deadbeef, {sig}", 1_800_000_000)  # rotation
    assert not verify_signature(secret, "1800000000", body + b" ", sig, 1_800_000_000)
    assert not verify_signature(b"other", "1800000000", body, sig, 1_800_000_000)
    assert not verify_signature(secret, "1800000000", body, sig, 1_800_000_301)  # stale
    assert not verify_signature(secret, "1799999999", body, sig, 1_800_000_000)  # other timestamp
    assert not verify_signature(secret, "x", body, sig, 1_800_000_000)


def test_webhook_backoff() -> None:
    assert [webhook_backoff(n) for n in (1, 2, 3)] == [5.0, 10.0, 20.0]
    assert webhook_backoff(30) == 3600.0


def test_receipt_and_inbound_payloads_use_sdk_types() -> None:
    r = ReceiptRecord(1, 7, 3, "ABC", MessageStatus.FAILED, 12, "c", 100, 200)
    p = receipt_payload(r)
    assert p["status_code"] == 301 and p["error_code"] == 12 and isinstance(p["error_text"], str)
    ok = receipt_payload(ReceiptRecord(1, 7, 3, "ABC", MessageStatus.DELIVERED, None, "", 100, 200))
    assert ok["status_code"] == 201 and ok["error_code"] is None
    rec = InboundRecord("IN", 7, "ORIG", b"", "+61400000000", b"", "cs", 300)
    v = inbound_payload(InboundView(rec, "+61412345678", "Yes please", "Reply?"))
    assert v["from"] == "+61412345678" and v["_keyword"] == "Yes" and v["original_message_id"] == "ORIG"
