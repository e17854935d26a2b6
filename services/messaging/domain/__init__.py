"""Messaging domain rules: pure functions and values, no I/O.

What lives here (and nowhere else):
- SMS body encoding and part counting per GSM 03.38 / ClickSend (GSM-7 160/153, UCS-2 70/67, 8 parts max),
  and splitting that never separates a GSM-7 escape pair or a UTF-16 surrogate pair;
- recipient normalisation to E.164 with `phonenumbers`, including ClickSend's fixed test recipients;
- sender id, schedule and whole-message validation, reported per message like ClickSend does;
- per-part pricing and the string formats ClickSend uses for prices and balances;
- the internal message state machine and its mapping onto ClickSend's history/receipt vocabulary.

Only the standard library, `phonenumbers` and `svckit.errors` (itself transport-free) are imported.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import json
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from types import MappingProxyType
from typing import Final

import phonenumbers

from svckit.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from svckit.times import unix_seconds

__all__ = [
    "BODY_RECORD",
    "CANCELLABLE",
    "CARRIER_ERROR_TEXT",
    "CURRENCIES",
    "DEFAULT_PAGE_LIMIT",
    "GSM7_BASIC",
    "GSM7_EXTENSION",
    "GSM7_MULTI_PART",
    "GSM7_SINGLE_PART",
    "HISTORY_FILTER_FIELDS",
    "HISTORY_SORT_FIELDS",
    "IDEMPOTENCY_RECORD",
    "IDEMPOTENCY_TTL_S",
    "INDEX_KEY_RECORD",
    "INDEX_KEY_SIZE",
    "MASKED_BODY",
    "MAX_GSM7_UNITS",
    "MAX_MESSAGES_PER_REQUEST",
    "MAX_PAGE_LIMIT",
    "MAX_PARTS",
    "MAX_RETENTION_DAYS",
    "MAX_UCS2_UNITS",
    "MIN_PAGE_LIMIT",
    "OPT_IN_KEYWORDS",
    "OPT_OUT_KEYWORDS",
    "SCHEDULE_MAX_AHEAD_S",
    "SCHEDULE_PAST_TOLERANCE_S",
    "SEARCH_WINDOW",
    "SIGNATURE_TOLERANCE_S",
    "STATUS_SORT_NAME",
    "TEMPORARY_FAILURE_ERROR",
    "TEST_RECIPIENTS",
    "TO_RECORD",
    "UCS2_MULTI_PART",
    "UCS2_SINGLE_PART",
    "UNKNOWN_FAILURE_ERROR",
    "WEBHOOK_MAX_ATTEMPTS",
    "WEBHOOK_SECRET_RECORD",
    "Bucket",
    "Caller",
    "ClaimedMessage",
    "Currency",
    "EmptyMessage",
    "Encoding",
    "HistoryFilter",
    "HistoryItem",
    "HistoryPage",
    "HistoryQuery",
    "HistorySort",
    "HistoryStatus",
    "IdempotencyKeyReused",
    "InboundInput",
    "InboundPage",
    "InboundRecord",
    "InboundView",
    "InvalidAccountId",
    "InvalidIdempotencyKey",
    "InvalidMessageBody",
    "InvalidPaging",
    "InvalidQuery",
    "InvalidRecipient",
    "InvalidSchedule",
    "InvalidSenderId",
    "InvalidSettings",
    "InvalidStatusTransition",
    "LimitRequest",
    "LimitVerdict",
    "MessageNotFound",
    "MessageStatus",
    "MessageStatusCode",
    "MessageTooLong",
    "MessagingSettings",
    "MissingRequiredFields",
    "NewInbound",
    "NewMessage",
    "NotCancellable",
    "NumberIndexer",
    "OptAction",
    "OriginalMessage",
    "OutboundInput",
    "PageWindow",
    "PriceTable",
    "RateConfig",
    "RateLimited",
    "Receipt",
    "ReceiptPage",
    "ReceiptRecord",
    "ReceiptStatus",
    "Recipient",
    "Rejected",
    "SearchNotPermitted",
    "SendItem",
    "SendLimitExceeded",
    "SendLimits",
    "SendResult",
    "SettingsUpdate",
    "SmsParts",
    "StoredMessage",
    "Submission",
    "SubmitResult",
    "TestModeOnly",
    "TooManyRecipients",
    "ValidatedMessage",
    "Velocity",
    "WebhookDelivery",
    "WebhookEvent",
    "WebhookJob",
    "allocate_credit",
    "can_transition",
    "check_batch_size",
    "check_content_search",
    "check_idempotency_key",
    "check_message_id",
    "check_retention_days",
    "check_transition",
    "clicksend_history_view",
    "clicksend_receipt_code",
    "clicksend_receipt_view",
    "count_parts",
    "currency_for",
    "decode_send_result",
    "destination_prefix",
    "encode_send_result",
    "first_word",
    "format_balance",
    "format_price",
    "idempotency_key_hash",
    "inbound_payload",
    "index_token",
    "is_gsm7",
    "is_noop",
    "is_terminal",
    "is_test_recipient",
    "limit_error",
    "limit_request",
    "mask_number",
    "matches_content",
    "normalize_recipient",
    "number_index",
    "opt_action",
    "page_window",
    "parse_history_filter",
    "parse_history_sort",
    "parse_price_table",
    "parse_recipient",
    "plan_results",
    "prefix_token",
    "receipt_payload",
    "request_fingerprint",
    "retry_after_seconds",
    "retry_delay",
    "sources_of",
    "split_parts",
    "unix_time",
    "validate_body",
    "validate_outbound",
    "validate_schedule",
    "validate_sender",
    "verify_signature",
    "webhook_backoff",
    "webhook_signature",
]


# --------------------------------------------------------------------------------------------------------
# Per-message status codes (ClickSend's application status vocabulary, research §2) and domain errors.
# --------------------------------------------------------------------------------------------------------


class MessageStatusCode(StrEnum):
    """The per-message `status` of /sms/send and /sms/price. Values are the wire strings."""

    SUCCESS = "SUCCESS"
    INVALID_RECIPIENT = "INVALID_RECIPIENT"
    INVALID_SENDER_ID = "INVALID_SENDER_ID"
    EMPTY_MESSAGE = "EMPTY_MESSAGE"
    MESSAGE_TOO_LONG = "MESSAGE_TOO_LONG"  # ours: ClickSend truncates, we refuse
    INVALID_MESSAGE_BODY = "INVALID_MESSAGE_BODY"  # ours: text that cannot be encoded (lone surrogates)
    INVALID_SCHEDULE = "INVALID_SCHEDULE"
    INSUFFICIENT_CREDIT = "INSUFFICIENT_CREDIT"  # decided by the service (needs the balance), not here
    # ClickSend's own code, used here for the velocity limit per destination prefix (SMS pumping).
    THROTTLED = "THROTTLED"
    # Ours: the recipient replied STOP (or was added to the account's opt-out list); nothing sent or charged.
    RECIPIENT_OPTED_OUT = "RECIPIENT_OPTED_OUT"
    # Ours: the API key's send limits do not allow this destination country.
    COUNTRY_NOT_ALLOWED = "COUNTRY_NOT_ALLOWED"


class EmptyMessage(InvalidArgument):
    reason = MessageStatusCode.EMPTY_MESSAGE.value


class MessageTooLong(InvalidArgument):
    reason = MessageStatusCode.MESSAGE_TOO_LONG.value


class InvalidMessageBody(InvalidArgument):
    reason = MessageStatusCode.INVALID_MESSAGE_BODY.value


class InvalidRecipient(InvalidArgument):
    reason = MessageStatusCode.INVALID_RECIPIENT.value


class InvalidSenderId(InvalidArgument):
    reason = MessageStatusCode.INVALID_SENDER_ID.value


class InvalidSchedule(InvalidArgument):
    reason = MessageStatusCode.INVALID_SCHEDULE.value


class InvalidStatusTransition(FailedPrecondition):
    reason = "INVALID_STATUS_TRANSITION"


# --------------------------------------------------------------------------------------------------------
# Encoding and parts (GSM 03.38).
# --------------------------------------------------------------------------------------------------------

# The GSM 03.38 default alphabet in septet order, 16 per row; 0x1B is the escape to the extension table.
_GSM7_TABLE: Final = (
    "@£$¥èéùìòÇ\nØø\rÅå"  # 0x00
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"  # 0x10  (Greek capitals are U+0394 etc., not the math/Ohm look-alikes)
    " !\"#¤%&'()*+,-./"  # 0x20  (0x24 is ¤; $ is 0x02)
    "0123456789:;<=>?"  # 0x30
    "¡ABCDEFGHIJKLMNO"  # 0x40
    "PQRSTUVWXYZÄÖÑÜ§"  # 0x50
    "¿abcdefghijklmno"  # 0x60
    "pqrstuvwxyzäöñüà"  # 0x70
)
assert len(_GSM7_TABLE) == 128

GSM7_BASIC: Final[frozenset[str]] = frozenset(_GSM7_TABLE) - {"\x1b"}
"""Characters that cost one septet."""

# Extension table: each costs two septets (ESC + code). Form feed is 0x1B 0x0A.
_GSM7_EXTENSION_TABLE: Final[Mapping[str, int]] = MappingProxyType(
    {"\f": 0x0A, "^": 0x14, "{": 0x28, "}": 0x29, "\\": 0x2F, "[": 0x3C, "~": 0x3D, "]": 0x3E, "|": 0x40, "€": 0x65}
)
GSM7_EXTENSION: Final[frozenset[str]] = frozenset(_GSM7_EXTENSION_TABLE)
"""Characters that cost two septets and must never be split across parts."""

GSM7_SINGLE_PART: Final = 160
GSM7_MULTI_PART: Final = 153  # 160 minus the 6-octet concatenation header, in septets
UCS2_SINGLE_PART: Final = 70
UCS2_MULTI_PART: Final = 67
MAX_PARTS: Final = 8
MAX_GSM7_UNITS: Final = MAX_PARTS * GSM7_MULTI_PART  # 1224
MAX_UCS2_UNITS: Final = MAX_PARTS * UCS2_MULTI_PART  # 536


class Encoding(StrEnum):
    GSM7 = "GSM7"
    UCS2 = "UCS2"


@dataclass(frozen=True, slots=True)
class SmsParts:
    """How a body goes on the air: `units` are septets (GSM7) or UTF-16 code units (UCS2)."""

    encoding: Encoding
    units: int
    parts: int


_NOT_GSM7: Final = re.compile("[^" + re.escape("".join(sorted(GSM7_BASIC | GSM7_EXTENSION))) + "]")
_GSM7_ESCAPED: Final = re.compile("[" + re.escape("".join(sorted(GSM7_EXTENSION))) + "]")
_ASTRAL: Final = re.compile("[\U00010000-\U0010FFFF]")
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def is_gsm7(body: str) -> bool:
    """True when every character is in the GSM 03.38 default alphabet or its extension table."""
    return _NOT_GSM7.search(body) is None


def _gsm7_cost(ch: str) -> int:
    return 2 if ch in GSM7_EXTENSION else 1


def _ucs2_cost(ch: str) -> int:
    # A code point outside the BMP (emoji, ...) is a UTF-16 surrogate pair: two code units.
    return 2 if ord(ch) > 0xFFFF else 1


def _plan(body: str) -> tuple[Encoding, int, list[int]]:
    """Encoding, total units and the index where each part starts.

    Greedy fill: a character whose units do not fit in what is left of a part starts the next part,
    so an escape pair or a surrogate pair is never cut. That can leave a part one unit short, so the count
    can exceed ceil(units / per_part) (e.g. 268 emoji: 536 units, 9 parts of at most 33 emoji); we report
    the parts that are actually sent and billed. Units are counted with regular expressions (C speed);
    only a body longer than one part is walked character by character.
    """
    if is_gsm7(body):
        encoding, cost, single, multi = Encoding.GSM7, _gsm7_cost, GSM7_SINGLE_PART, GSM7_MULTI_PART
        units = len(body) + len(_GSM7_ESCAPED.findall(body))
    else:
        encoding, cost, single, multi = Encoding.UCS2, _ucs2_cost, UCS2_SINGLE_PART, UCS2_MULTI_PART
        units = len(body) + len(_ASTRAL.findall(body))
    if units == 0:
        return encoding, 0, []
    if units <= single:
        return encoding, units, [0]
    starts = [0]
    used = 0
    for i, ch in enumerate(body):
        c = cost(ch)
        if used + c > multi:
            starts.append(i)
            used = 0
        used += c
    return encoding, units, starts


def count_parts(body: str) -> SmsParts:
    """Encoding, units and number of SMS parts of `body` (an empty body has 0 parts)."""
    encoding, units, starts = _plan(body)
    return SmsParts(encoding=encoding, units=units, parts=len(starts))


def split_parts(body: str) -> list[str]:
    """The parts `body` is sent as; `"".join(split_parts(b)) == b` and `len(...) == count_parts(b).parts`."""
    _, _, starts = _plan(body)
    ends = [*starts[1:], len(body)] if starts else []
    return [body[s:e] for s, e in zip(starts, ends, strict=True)]


def _has_lone_surrogate(body: str) -> bool:
    return _SURROGATE.search(body) is not None


def validate_body(body: str) -> SmsParts:
    """Check a message body and return its parts; raises EmptyMessage, InvalidMessageBody, MessageTooLong."""
    if not body.strip():
        raise EmptyMessage("The message body is empty.")
    if len(body) > MAX_GSM7_UNITS:  # every character costs at least one unit: too long either way
        raise MessageTooLong(f"The message is longer than {MAX_PARTS} parts.", max_parts=str(MAX_PARTS))
    if _has_lone_surrogate(body):
        # JSON allows "\ud800" on its own; it cannot be sent or even encoded as UTF-8.
        raise InvalidMessageBody("The message body contains characters that cannot be encoded.")
    parts = count_parts(body)
    if parts.parts > MAX_PARTS:
        raise MessageTooLong(
            f"The message is longer than {MAX_PARTS} parts.",
            max_parts=str(MAX_PARTS),
            parts=str(parts.parts),
            encoding=parts.encoding.value,
        )
    return parts


# --------------------------------------------------------------------------------------------------------
# Recipients.
# --------------------------------------------------------------------------------------------------------

# ClickSend's documented test recipients: accepted, never sent, never charged. E.164 -> region.
_TEST_RECIPIENT_REGIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "+61411111111": "AU",
        "+61422222222": "AU",
        "+61433333333": "AU",
        "+61444444444": "AU",
        "+14055555555": "US",
        "+14055555666": "US",
        "+447777777777": "GB",
        "+8615555555555": "CN",
    }
)
TEST_RECIPIENTS: Final[frozenset[str]] = frozenset(_TEST_RECIPIENT_REGIONS)

# Digits with the usual separators, optionally one leading "+". No letters (phonenumbers would turn
# vanity letters into digits), no extensions, no "tel:" URIs.
_RECIPIENT_SHAPE: Final = re.compile(r"\+?[0-9 ().\-]*[0-9][0-9 ().\-]*")
_MAX_RECIPIENT_INPUT: Final = 40
_REGION_SHAPE: Final = re.compile(r"[A-Z]{2}")


@dataclass(frozen=True, slots=True)
class Recipient:
    e164: str
    country: str  # ISO 3166-1 alpha-2 of the number (not of the request's `country` hint)

    @property
    def is_test(self) -> bool:
        return self.e164 in TEST_RECIPIENTS


def is_test_recipient(e164: str) -> bool:
    return e164 in TEST_RECIPIENTS


_RECIPIENT_CACHE_SIZE: Final = 65_536


def parse_recipient(to: str, country: str | None) -> Recipient:
    """`_parse_recipient` with its valid answers memoised (bounded LRU).

    Validation with `phonenumbers` costs tens of microseconds per number, a large share of the send path;
    customers send to the same numbers again and again. Only valid results are kept (an exception is
    never cached), and a `Recipient` is immutable, so sharing it is safe.
    """
    return _parse_recipient_cached(to, country)


def _parse_recipient(to: str, country: str | None) -> Recipient:
    """Normalise `to` (E.164, or national format with `country` as ISO2) to a valid number.

    Raises InvalidRecipient for anything `phonenumbers` does not consider a valid number, except
    ClickSend's fixed test recipients, which are always accepted.
    """
    raw = to.strip()
    if raw in _TEST_RECIPIENT_REGIONS:
        return Recipient(raw, _TEST_RECIPIENT_REGIONS[raw])
    if not raw:
        raise InvalidRecipient("The recipient is empty.")
    if len(raw) > _MAX_RECIPIENT_INPUT or not _RECIPIENT_SHAPE.fullmatch(raw):
        raise InvalidRecipient("The recipient is not a phone number.")
    region: str | None = None
    if not raw.startswith("+"):
        region = (country or "").strip().upper()
        if not region:
            raise InvalidRecipient("The recipient is not in E.164 format and no country was given.")
        if not _REGION_SHAPE.fullmatch(region) or region not in phonenumbers.SUPPORTED_REGIONS:
            raise InvalidRecipient("The country is not a known ISO 3166-1 alpha-2 code.")
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidRecipient("The recipient is not a valid phone number.") from exc
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if e164 in _TEST_RECIPIENT_REGIONS:
        return Recipient(e164, _TEST_RECIPIENT_REGIONS[e164])
    # is_valid_number() is exactly this pair; calling it and then region_code_for_number would work out
    # the region twice (a third of the time spent on an unseen number).
    number_region = phonenumbers.region_code_for_number(number)
    if number_region is None or not phonenumbers.is_valid_number_for_region(number, number_region):
        raise InvalidRecipient("The recipient is not a valid phone number.")
    if not _REGION_SHAPE.fullmatch(number_region):
        # Non-geographic numbers (+800, +882, ...: region "001") have no country to route or price by.
        raise InvalidRecipient("The recipient is not a phone number in a country we can send to.")
    return Recipient(e164, number_region)


_parse_recipient_cached = functools.lru_cache(maxsize=_RECIPIENT_CACHE_SIZE)(_parse_recipient)


def normalize_recipient(to: str, country: str | None) -> str:
    """`parse_recipient(to, country).e164`."""
    return parse_recipient(to, country).e164


# --------------------------------------------------------------------------------------------------------
# Sender ids.
# --------------------------------------------------------------------------------------------------------

_ALPHA_SENDER: Final = re.compile(r"[A-Za-z0-9 ]{1,11}")
_HAS_LETTER: Final = re.compile(r"[A-Za-z]")
_NUMERIC_SENDER: Final = re.compile(r"\+?[0-9]{1,15}")


def validate_sender(sender: str) -> str:
    """Return the sender id to use ("" = a shared number); raises InvalidSenderId.

    Accepted: empty (after trimming), an alphanumeric id of 1-11 ASCII letters/digits/spaces with at
    least one letter, or a number of up to 15 digits with an optional leading "+".
    """
    value = sender.strip()
    if not value:
        return ""
    if _NUMERIC_SENDER.fullmatch(value):
        return value
    if _ALPHA_SENDER.fullmatch(value) and _HAS_LETTER.search(value):
        return value
    raise InvalidSenderId(
        "The sender id must be up to 11 letters, digits or spaces with at least one letter, "
        "or a phone number of up to 15 digits."
    )


# --------------------------------------------------------------------------------------------------------
# Schedule.
# --------------------------------------------------------------------------------------------------------

SCHEDULE_PAST_TOLERANCE_S: Final = 60
SCHEDULE_MAX_AHEAD_S: Final = 365 * 24 * 3600


def validate_schedule(schedule: int, now: int) -> int | None:
    """0 means send now (None); otherwise a unix time from 60 s ago up to 365 days ahead, inclusive."""
    if isinstance(schedule, bool):
        raise InvalidSchedule("The schedule must be a unix time in seconds.")
    if schedule == 0:
        return None
    if schedule < now - SCHEDULE_PAST_TOLERANCE_S:
        raise InvalidSchedule("The schedule is in the past.")
    if schedule > now + SCHEDULE_MAX_AHEAD_S:
        raise InvalidSchedule("The schedule is more than 365 days ahead.")
    return schedule


# --------------------------------------------------------------------------------------------------------
# Prices.
# --------------------------------------------------------------------------------------------------------


def _check_amount(what: str, value: Decimal) -> None:
    if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
        raise ValueError(f"{what} must be a finite, non-negative Decimal, got {value!r}")


@dataclass(frozen=True)
class PriceTable:
    """Price per SMS part by recipient country (ISO2), with a default for countries not listed."""

    default: Decimal
    per_country: Mapping[str, Decimal] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        _check_amount("default price", self.default)
        prices: dict[str, Decimal] = {}
        for key, price in self.per_country.items():
            region = key.strip().upper()
            if not _REGION_SHAPE.fullmatch(region):
                raise ValueError(f"price table key must be an ISO 3166-1 alpha-2 code, got {key!r}")
            if region in prices:
                raise ValueError(f"price table has {region} twice")
            _check_amount(f"price for {region}", price)
            prices[region] = price
        object.__setattr__(self, "per_country", MappingProxyType(prices))

    @classmethod
    def from_mapping(cls, prices: Mapping[str, Decimal], default: Decimal) -> PriceTable:
        return cls(default=default, per_country=dict(prices))

    def price_per_part(self, country: str) -> Decimal:
        return self.per_country.get(country.strip().upper(), self.default)

    def price_for(self, country: str, parts: int) -> Decimal:
        """Price of `parts` SMS parts to `country` (test recipients are free: the caller decides)."""
        if parts < 0:
            raise ValueError(f"parts must be >= 0, got {parts}")
        return self.price_per_part(country) * parts


_PRICE_QUANTUM: Final = Decimal("0.0001")
_BALANCE_QUANTUM: Final = Decimal("0.000001")


def _format_fixed(value: Decimal, quantum: Decimal) -> str:
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValueError(f"expected a finite Decimal, got {value!r}")
    rounded = value.quantize(quantum, rounding=ROUND_HALF_UP)
    if rounded.is_zero():
        rounded = abs(rounded)  # never "-0.0000"
    return f"{rounded:f}"


@functools.lru_cache(maxsize=1024)
def format_price(value: Decimal) -> str:
    """ClickSend's per-message price string: 4 decimals, half-up ("0.0770"). Memoised: a send prices
    every message, and prices come from a short table."""
    return _format_fixed(value, _PRICE_QUANTUM)


def format_balance(value: Decimal) -> str:
    """ClickSend's account balance string: 6 decimals, half-up ("12.500000")."""
    return _format_fixed(value, _BALANCE_QUANTUM)


# --------------------------------------------------------------------------------------------------------
# Message states and the ClickSend status vocabulary (research §4).
# --------------------------------------------------------------------------------------------------------


class MessageStatus(StrEnum):
    QUEUED = "QUEUED"
    SCHEDULED = "SCHEDULED"
    SENDING = "SENDING"
    SENT = "SENT"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


_S = MessageStatus
_TRANSITIONS: Final[Mapping[MessageStatus, frozenset[MessageStatus]]] = MappingProxyType(
    {
        _S.SCHEDULED: frozenset({_S.QUEUED, _S.SENDING, _S.CANCELLED}),
        _S.QUEUED: frozenset({_S.SENDING, _S.CANCELLED}),
        # A delivery receipt can overtake the carrier's submit acknowledgement: SENDING -> DELIVERED.
        _S.SENDING: frozenset({_S.SENT, _S.DELIVERED, _S.FAILED}),
        _S.SENT: frozenset({_S.DELIVERED, _S.FAILED}),
        _S.DELIVERED: frozenset(),
        _S.FAILED: frozenset(),
        _S.CANCELLED: frozenset(),
    }
)


def can_transition(old: MessageStatus, new: MessageStatus) -> bool:
    """True for a forward move. Same state is not a transition: see `is_noop`."""
    return new in _TRANSITIONS[old]


def is_noop(old: MessageStatus, new: MessageStatus) -> bool:
    """A repeated update to the state already recorded (at-least-once delivery): accept and ignore."""
    return old == new


def is_terminal(status: MessageStatus) -> bool:
    return not _TRANSITIONS[status]


def check_transition(old: MessageStatus, new: MessageStatus) -> bool:
    """Return False for a no-op, True for an allowed move; raise InvalidStatusTransition otherwise."""
    if is_noop(old, new):
        return False
    if not can_transition(old, new):
        raise InvalidStatusTransition(
            f"A message that is {old.value.lower()} cannot become {new.value.lower()}.",
            from_status=old.value,
            to_status=new.value,
        )
    return True


# ClickSend gateway error codes that mean failure (help centre "List of SMS gateway error codes").
UNKNOWN_FAILURE_ERROR: Final = 7
TEMPORARY_FAILURE_ERROR: Final = 16
CARRIER_ERROR_TEXT: Final[Mapping[int, str]] = MappingProxyType(
    {
        7: "Unknown failure",
        8: "Unknown subscriber. Number is inactive or invalid",
        9: "Unidentified Subscriber. Number is invalid or network routing issue.",
        10: "Illegal Subscriber. Rejection due to failed authentication or filtering.",
        11: "Rejection due to subscription, handset or network not supporting SMS.",
        12: "Absent Subscriber. Phone is out of range or switched off.",
        13: "Memory Capacity Exceeded. The handset does not have the memory to receive the message.",
        14: "Rejection due to recipient network error or congestion.",
        15: "Rejected by the recipient network.",
        16: "Temporary network error - will be retried",
        17: "Network timeout when delivering message",
        18: "Network routing error",
        19: "Anti-spam rejection by recipient network",
        20: "Message delivery receipt expired",
    }
)

_DELIVERED_TEXT: Final = "Success: Message received on handset."
# status -> (ClickSend status, status code, status text) for everything but FAILED.
_HISTORY: Final[Mapping[MessageStatus, tuple[str, int, str]]] = MappingProxyType(
    {
        _S.QUEUED: ("Queued", 200, "Message is queued for delivery"),
        _S.SENDING: ("Queued", 200, "Message is queued for delivery"),  # not yet accepted by a network
        _S.SCHEDULED: ("Scheduled", 200, "Message is scheduled for delivery"),
        _S.SENT: ("Sent", 200, "Message sent to the network for delivery"),
        _S.DELIVERED: ("Sent", 201, _DELIVERED_TEXT),
        _S.CANCELLED: ("Cancelled", 301, "Message is cancelled"),
    }
)


@dataclass(frozen=True, slots=True)
class HistoryStatus:
    """Status fields of a /sms/history item: ClickSend sends the codes there as strings."""

    status: str
    status_code: str
    status_text: str
    error_code: str | None
    error_text: str | None


@dataclass(frozen=True, slots=True)
class ReceiptStatus:
    """Status fields of a /sms/receipts item: ClickSend sends the codes there as ints."""

    status_code: int
    status_text: str
    error_code: int | None
    error_text: str | None


def _view(status: MessageStatus, error_code: int | None) -> tuple[str, int, str, int | None, str | None]:
    if status is MessageStatus.FAILED:
        code = error_code if error_code is not None and error_code in CARRIER_ERROR_TEXT else UNKNOWN_FAILURE_ERROR
        text = CARRIER_ERROR_TEXT[code]
        return "Failed", 300 if code == TEMPORARY_FAILURE_ERROR else 301, text, code, text
    name, status_code, status_text = _HISTORY[status]
    return name, status_code, status_text, None, None


def clicksend_history_view(status: MessageStatus, error_code: int | None) -> HistoryStatus:
    """Map an internal state (+ carrier error code for FAILED) to ClickSend's history fields.

    `error_code` is only used for FAILED; a missing or unknown code there becomes 7 "Unknown failure".
    """
    name, status_code, status_text, err, err_text = _view(status, error_code)
    return HistoryStatus(name, str(status_code), status_text, None if err is None else str(err), err_text)


def clicksend_receipt_view(status: MessageStatus, error_code: int | None) -> ReceiptStatus:
    """The same mapping with the int types of /sms/receipts."""
    _, status_code, status_text, err, err_text = _view(status, error_code)
    return ReceiptStatus(status_code, status_text, err, err_text)


def clicksend_receipt_code(status: MessageStatus, error_code: int | None = None) -> int:
    """201 delivered, 300 temporary failure (error 16), 301 permanent failure or cancelled, else 200."""
    return _view(status, error_code)[1]


# --------------------------------------------------------------------------------------------------------
# Whole outbound message.
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ValidatedMessage:
    body: str
    recipient: Recipient
    sender: str  # "" = shared number
    schedule: int | None  # None = send now
    sms: SmsParts

    @property
    def to(self) -> str:
        return self.recipient.e164

    @property
    def is_test(self) -> bool:
        """ClickSend test recipient: report SUCCESS, send nothing, charge nothing."""
        return self.recipient.is_test


@dataclass(frozen=True, slots=True)
class Rejected:
    status_code: MessageStatusCode
    message: str


def validate_outbound(
    body: str,
    to: str,
    country: str | None,
    sender: str | None,
    schedule: int | None,
    now: int,
) -> ValidatedMessage | Rejected:
    """Validate one message of a send/price request without raising.

    Checks run in the order ClickSend lists its codes: recipient, sender id, body (empty, encodable,
    length), schedule. The first failure is the message's status; other messages are unaffected.
    INSUFFICIENT_CREDIT is decided later by the service, once the whole request is priced.
    """
    try:
        recipient = parse_recipient(to, country)
        sender_id = validate_sender(sender or "")
        sms = validate_body(body)
        when = validate_schedule(schedule or 0, now)
    except (
        InvalidRecipient,
        InvalidSenderId,
        EmptyMessage,
        InvalidMessageBody,
        MessageTooLong,
        InvalidSchedule,
    ) as exc:
        return Rejected(MessageStatusCode(exc.reason), exc.message)
    return ValidatedMessage(body=body, recipient=recipient, sender=sender_id, schedule=when, sms=sms)


# --------------------------------------------------------------------------------------------------------
# Whole send requests, credit, retries, paging and currencies.
# --------------------------------------------------------------------------------------------------------

MAX_MESSAGES_PER_REQUEST: Final = 1000


class MissingRequiredFields(InvalidArgument):
    reason = "MISSING_REQUIRED_FIELDS"


class TooManyRecipients(InvalidArgument):
    reason = "TOO_MANY_RECIPIENTS"


class InvalidPaging(InvalidArgument):
    reason = "INVALID_PAGING"


class InvalidAccountId(InvalidArgument):
    reason = "INVALID_ACCOUNT_ID"


def check_batch_size(count: int) -> None:
    """A send/price request carries 1-1000 messages; anything else is refused whole (nothing stored)."""
    if count <= 0:
        raise MissingRequiredFields("The request has no messages.")
    if count > MAX_MESSAGES_PER_REQUEST:
        raise TooManyRecipients(
            f"A request may carry at most {MAX_MESSAGES_PER_REQUEST} messages.",
            max_messages=str(MAX_MESSAGES_PER_REQUEST),
        )


def allocate_credit(balance: Decimal, prices: list[Decimal]) -> list[bool]:
    """Which messages the balance pays for, in request order, without ever going negative.

    A message that does not fit is refused (INSUFFICIENT_CREDIT) and the next, possibly cheaper,
    message is still considered: each message is judged on its own, as ClickSend reports per message.
    """
    remaining = balance
    out: list[bool] = []
    for price in prices:
        _check_amount("price", price)
        if price <= remaining:
            remaining -= price
            out.append(True)
        else:
            out.append(False)
    return out


def sources_of(new: MessageStatus) -> frozenset[MessageStatus]:
    """The states from which `new` may be entered: the guard of an idempotent, ordered UPDATE."""
    return frozenset(old for old, targets in _TRANSITIONS.items() if new in targets)


def retry_delay(attempt: int, base_seconds: float, cap_seconds: float) -> float:
    """Exponential backoff after the `attempt`-th failed try (1-based): base, 2*base, 4*base ... cap."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    return float(min(cap_seconds, base_seconds * (2 ** min(attempt - 1, 30))))


def parse_price_table(spec: str, default: Decimal) -> PriceTable:
    """`"AU=0.0770,US=0.0500"` (ISO2=price per part) plus the default for every other country."""
    prices: dict[str, Decimal] = {}
    for item in spec.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"price table entry must be CC=price, got {item.strip()!r}")
        region = key.strip().upper()
        if region in prices:
            raise ValueError(f"price table has {region} twice")
        try:
            prices[region] = Decimal(value.strip())
        except ArithmeticError as exc:
            raise ValueError(f"price for {region} is not a number") from exc
    return PriceTable(default=default, per_country=prices)


@dataclass(frozen=True, slots=True)
class Currency:
    """ClickSend's `_currency` block."""

    currency_name_short: str
    currency_prefix_d: str
    currency_prefix_c: str
    currency_name_long: str


CURRENCIES: Final[Mapping[str, Currency]] = MappingProxyType(
    {
        "AUD": Currency("AUD", "$", "c", "Australian Dollars"),
        "USD": Currency("USD", "$", "c", "US Dollars"),
        "GBP": Currency("GBP", "£", "p", "British Pounds"),
        "EUR": Currency("EUR", "€", "c", "Euros"),
        "NZD": Currency("NZD", "$", "c", "New Zealand Dollars"),
    }
)


def currency_for(code: str) -> Currency:
    try:
        return CURRENCIES[code.strip().upper()]
    except KeyError:
        raise ValueError(f"unknown currency {code!r}; known: {', '.join(sorted(CURRENCIES))}") from None


DEFAULT_PAGE_LIMIT: Final = 15
MIN_PAGE_LIMIT: Final = 15
MAX_PAGE_LIMIT: Final = 100


@dataclass(frozen=True, slots=True)
class PageWindow:
    page: int
    limit: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.limit

    def last_page(self, total: int) -> int:
        return max(1, -(-total // self.limit))

    def bounds(self, total: int, count: int) -> tuple[int | None, int | None]:
        """ClickSend's `from`/`to`: 1-based indexes of the first and last item shown (None when empty)."""
        if count == 0:
            return None, None
        return self.offset + 1, self.offset + count


def unix_time(seconds: int, name: str) -> int | None:
    """A unix-seconds filter (date_from, date_to, date_before): 0 = not given; else within 0..year 9999,
    so the database conversion (to_timestamp) can never overflow."""
    return unix_seconds(seconds, name) or None


def page_window(page: int, limit: int) -> PageWindow:
    """ClickSend paging: page defaults to 1, limit to 15; limit must be 15-100 (the SDK enforces that too)."""
    if page < 0:
        raise InvalidPaging("page must be 1 or more.")
    if limit < 0 or (limit and not MIN_PAGE_LIMIT <= limit <= MAX_PAGE_LIMIT):
        raise InvalidPaging(
            f"limit must be between {MIN_PAGE_LIMIT} and {MAX_PAGE_LIMIT}.",
            min_limit=str(MIN_PAGE_LIMIT),
            max_limit=str(MAX_PAGE_LIMIT),
        )
    return PageWindow(page=page or 1, limit=limit or DEFAULT_PAGE_LIMIT)


# --------------------------------------------------------------------------------------------------------
# Records passed between the service, its store, queue and carriers (plain values).
# --------------------------------------------------------------------------------------------------------

BODY_RECORD: Final = "sms.body"
TO_RECORD: Final = "sms.to"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sends or reads: the account, the user (ClickSend sub-account), its test mode, the API key it used
    (and that key's send limits), whether it may see message content, and whether it is SendSafe staff."""

    account_id: int
    user_id: int
    api_username: str
    test_mode: bool = False
    api_key_id: str = ""
    limits: SendLimits = field(default_factory=lambda: SendLimits())
    deidentified: bool = False
    staff: bool = False
    # Why the platform sends on this caller's behalf (ALERT_DELIVERY); never set from a request.
    cause: str = ""


@dataclass(frozen=True, slots=True)
class OutboundInput:
    """One message of a send request, as the customer wrote it."""

    body: str
    to: str
    country: str = ""
    sender: str = ""
    schedule: int = 0
    custom_string: str = ""
    source: str = ""
    from_email: str = ""
    list_id: str = ""
    contact_id: str = ""


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message row as stored: body and number only as ciphertext."""

    id: str
    account_id: int
    user_id: int
    api_username: str
    status: MessageStatus
    body_ct: bytes
    to_ct: bytes
    sender: str
    country: str
    encoding: str
    parts: int
    price: Decimal
    is_test: bool
    custom_string: str
    source: str
    from_email: str
    list_id: str
    contact_id: str
    schedule: int | None  # unix seconds; None = now
    publish_at: int  # unix seconds after which the relay (re)publishes it
    to_hash: bytes | None = None  # keyed hash of the recipient (number_index)
    cause: str = ""  # Caller.cause


@dataclass(frozen=True, slots=True)
class SendItem:
    """The outcome for one message of a send request (rejected ones have no id and are not stored)."""

    input: OutboundInput
    status: MessageStatusCode
    message_id: str = ""
    to: str = ""
    country: str = ""
    sender: str = ""
    parts: int = 0
    price: Decimal = Decimal(0)
    schedule: int = 0


@dataclass(frozen=True, slots=True)
class SendResult:
    date: int
    items: list[SendItem]
    currency: Currency

    @property
    def queued_count(self) -> int:
        return sum(1 for i in self.items if i.status is MessageStatusCode.SUCCESS)

    @property
    def blocked_count(self) -> int:
        return len(self.items) - self.queued_count

    @property
    def total_price(self) -> Decimal:
        return sum((i.price for i in self.items if i.status is MessageStatusCode.SUCCESS), Decimal(0))


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message row read back for history (still encrypted)."""

    id: str
    account_id: int
    user_id: int
    api_username: str
    status: MessageStatus
    body_ct: bytes | None  # None once redacted (retention)
    to_ct: bytes
    sender: str
    country: str
    parts: int
    price: Decimal
    custom_string: str
    from_email: str
    list_id: str
    contact_id: str
    schedule: int | None
    date: int
    error_code: int | None
    carrier: str
    cause: str = ""


@dataclass(frozen=True, slots=True)
class HistoryItem:
    message: StoredMessage
    body: str
    to: str
    status: HistoryStatus


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    window: PageWindow
    date_from: int | None = None
    date_to: int | None = None
    filter: HistoryFilter = field(default_factory=lambda: HistoryFilter())
    sort: HistorySort = field(default_factory=lambda: HistorySort())


@dataclass(frozen=True, slots=True)
class HistoryPage:
    window: PageWindow
    total: int
    items: list[HistoryItem]


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    """A message a worker has claimed for sending (status SENDING, `attempts` already counted)."""

    id: str
    account_id: int
    body_ct: bytes
    to_ct: bytes
    sender: str
    attempts: int
    is_test: bool
    cause: str = ""


@dataclass(frozen=True, slots=True)
class Submission:
    """What a carrier adapter receives: our message id is the carrier's idempotency key."""

    message_id: str
    to: str
    body: str
    sender: str
    attempt: int


@dataclass(frozen=True, slots=True)
class SubmitResult:
    message_id: str
    accepted: bool
    carrier_ref: str = ""
    error_code: int | None = None  # ClickSend gateway error code when not accepted

    @property
    def temporary(self) -> bool:
        return not self.accepted and self.error_code in (None, TEMPORARY_FAILURE_ERROR)


@dataclass(frozen=True, slots=True)
class Receipt:
    """A delivery report from a carrier: a final state for one of our messages, named by our message id
    or, when the carrier only knows its own, by the carrier's reference."""

    message_id: str
    status: MessageStatus
    error_code: int | None = None
    carrier_ref: str = ""


def plan_results(
    claimed: list[ClaimedMessage], results: list[SubmitResult], max_attempts: int
) -> tuple[list[SubmitResult], list[tuple[str, int]], list[tuple[str, int]]]:
    """Split carrier answers into (sent, retry [(id, attempts)], failed [(id, error_code)]).

    Temporary failures are retried until `max_attempts` claims have been made; permanent failures and
    exhausted retries fail the message. A claimed message the carrier did not answer for counts as a
    temporary failure.
    """
    by_id = {r.message_id: r for r in results}
    sent: list[SubmitResult] = []
    retry: list[tuple[str, int]] = []
    failed: list[tuple[str, int]] = []
    for m in claimed:
        r = by_id.get(m.id) or SubmitResult(m.id, accepted=False, error_code=TEMPORARY_FAILURE_ERROR)
        if r.accepted:
            sent.append(r)
        elif r.temporary and m.attempts < max_attempts:
            retry.append((m.id, m.attempts))
        else:
            code = r.error_code if r.error_code is not None and not r.temporary else UNKNOWN_FAILURE_ERROR
            failed.append((m.id, code))
    return sent, retry, failed


# --------------------------------------------------------------------------------------------------------
# History search and sort (ClickSend `q=field:value,...` and `order_by=field:asc|desc`).
#
# Bodies and phone numbers are ciphertext at rest, so the database can neither search nor sort them:
# - `to` is matched exactly through a keyed hash of the normalised number (`to_hash`, keyed per account),
#   across the whole history;
# - `body` (substring, case-insensitive) and sorting by `to` or `body` work on a decrypted window: the
#   newest `SEARCH_WINDOW` messages that pass every other filter are decrypted in memory, then filtered,
#   sorted and paged. Nothing decrypted is ever written back, logged or cached.
# De-identified users (sms_deidentify_message) cannot search or sort by `to` or `body`: a match would tell
# them what they are not allowed to see.
# --------------------------------------------------------------------------------------------------------


class InvalidQuery(InvalidArgument):
    reason = "INVALID_QUERY"


class SearchNotPermitted(PermissionDenied):
    reason = "SEARCH_NOT_PERMITTED"


SEARCH_WINDOW: Final = 1000
HISTORY_FILTER_FIELDS: Final = frozenset(
    {"status", "to", "from", "custom_string", "message_id", "username", "country", "body"}
)
HISTORY_SORT_FIELDS: Final = frozenset({"date", "username", "from", "to", "status", "body"})
_MAX_QUERY_LENGTH: Final = 1000

# ClickSend history status name (case-insensitive) -> internal states shown under that name.
_STATUS_BY_NAME: Final[Mapping[str, frozenset[MessageStatus]]] = MappingProxyType(
    {
        "queued": frozenset({_S.QUEUED, _S.SENDING}),
        "scheduled": frozenset({_S.SCHEDULED}),
        "sent": frozenset({_S.SENT, _S.DELIVERED}),
        "delivered": frozenset({_S.DELIVERED}),  # ours: ClickSend shows these as Sent with code 201
        "failed": frozenset({_S.FAILED}),
        "cancelled": frozenset({_S.CANCELLED}),
    }
)
# The order `status` sorts in: the ClickSend name of each state (alphabetical, as ClickSend sorts text).
STATUS_SORT_NAME: Final[Mapping[MessageStatus, str]] = MappingProxyType(
    {s: ("Failed" if s is _S.FAILED else _HISTORY[s][0]) for s in MessageStatus}
)
_MESSAGE_ID_SHAPE: Final = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


@dataclass(frozen=True, slots=True)
class HistoryFilter:
    statuses: frozenset[MessageStatus] | None = None
    to: str | None = None  # E.164, matched through the keyed hash
    sender: str | None = None
    custom_string: str | None = None
    message_id: str | None = None  # uppercase UUID
    username: str | None = None
    country: str | None = None
    body_contains: str | None = None  # casefolded

    @property
    def touches_content(self) -> bool:
        return self.to is not None or self.body_contains is not None


@dataclass(frozen=True, slots=True)
class HistorySort:
    field: str = "date"
    descending: bool = True

    @property
    def on_content(self) -> bool:
        return self.field in ("to", "body")


def parse_history_filter(q: str) -> HistoryFilter:
    """`q` is `field:value[,field:value...]`, every condition must hold (AND). Values cannot hold commas
    (as at ClickSend). Raises InvalidQuery naming the offending field, never echoing a value."""
    q = q.strip()
    if not q:
        return HistoryFilter()
    if len(q) > _MAX_QUERY_LENGTH:
        raise InvalidQuery(f"q is longer than {_MAX_QUERY_LENGTH} characters.")
    seen: dict[str, str] = {}
    for part in q.split(","):
        name, sep, value = part.partition(":")
        name, value = name.strip().lower(), value.strip()
        if name == "_api_username":
            name = "username"
        if not sep or name not in HISTORY_FILTER_FIELDS:
            raise InvalidQuery(
                f"q must be field:value pairs with fields {', '.join(sorted(HISTORY_FILTER_FIELDS))}.",
                field=name[:40],
            )
        if not value:
            raise InvalidQuery(f"q has an empty value for {name}.", field=name)
        if name in seen:
            raise InvalidQuery(f"q names {name} twice.", field=name)
        seen[name] = value
    statuses = None
    if "status" in seen:
        statuses = _STATUS_BY_NAME.get(seen["status"].lower())
        if statuses is None:
            raise InvalidQuery(
                "status must be one of Queued, Scheduled, Sent, Delivered, Failed, Cancelled.", field="status"
            )
    to = None
    if "to" in seen:
        try:
            to = parse_recipient(seen["to"], None).e164
        except InvalidRecipient:
            raise InvalidQuery("to must be a phone number in E.164 format.", field="to") from None
    mid = seen.get("message_id")
    if mid is not None:
        if not _MESSAGE_ID_SHAPE.fullmatch(mid):
            raise InvalidQuery("message_id must be a message id.", field="message_id")
        mid = mid.upper()
    country = seen.get("country")
    if country is not None:
        country = country.upper()
        if not _REGION_SHAPE.fullmatch(country):
            raise InvalidQuery("country must be an ISO 3166-1 alpha-2 code.", field="country")
    body = seen.get("body")
    return HistoryFilter(
        statuses=statuses, to=to, sender=seen.get("from"), custom_string=seen.get("custom_string"),
        message_id=mid, username=seen.get("username"), country=country,
        body_contains=body.casefold() if body is not None else None,
    )


def parse_history_sort(order_by: str) -> HistorySort:
    """`field:asc|desc` (direction defaults to asc, as at ClickSend); empty means newest first."""
    order_by = order_by.strip()
    if not order_by:
        return HistorySort()
    name, _, direction = order_by.partition(":")
    name, direction = name.strip().lower(), (direction.strip().lower() or "asc")
    if name not in HISTORY_SORT_FIELDS or direction not in ("asc", "desc"):
        raise InvalidQuery(
            f"order_by must be field:asc or field:desc with fields {', '.join(sorted(HISTORY_SORT_FIELDS))}.",
            field="order_by",
        )
    return HistorySort(field=name, descending=direction == "desc")


def check_content_search(f: HistoryFilter, s: HistorySort, *, deidentified: bool) -> None:
    """De-identified users may not search or sort by what they cannot see."""
    if deidentified and (f.touches_content or s.on_content):
        raise SearchNotPermitted("Searching or sorting by to or body is not available to de-identified users.")


def matches_content(f: HistoryFilter, body: str, to: str) -> bool:
    """The decrypted-window part of a filter (the rest ran in the database)."""
    if f.body_contains is not None and f.body_contains not in body.casefold():
        return False
    return f.to is None or f.to == to


# --------------------------------------------------------------------------------------------------------
# Keyed hashes ("blind indexes") of phone numbers, de-identification and retention.
# --------------------------------------------------------------------------------------------------------

INDEX_KEY_RECORD: Final = "sms.index_key"
INDEX_KEY_SIZE: Final = 32


_NUMBER_INDEX_LABEL: Final = b"sendsafe.sms.number.v1\x00"


def number_index(key: bytes, e164: str) -> bytes:
    """HMAC-SHA256 of a normalised number under the account's index key: lets the database match a number
    exactly (history `to:`, opt-outs, inbound matching) without holding it. The key lives encrypted under
    the account's key-encryption key, so destroying the account's keys also makes these unlinkable."""
    return NumberIndexer(key)(e164)


class NumberIndexer:
    """`number_index` with the key schedule done once: the send path hashes every recipient."""

    __slots__ = ("_base",)

    def __init__(self, key: bytes) -> None:
        if len(key) != INDEX_KEY_SIZE:
            raise ValueError("index key must be 32 bytes")
        self._base = hmac.new(key, _NUMBER_INDEX_LABEL, hashlib.sha256)

    def __call__(self, e164: str) -> bytes:
        h = self._base.copy()
        h.update(e164.encode("ascii"))
        return h.digest()


def index_token(key: bytes, purpose: str, value: str) -> str:
    """A short keyed token for Redis key names (a destination prefix, an idempotency key): never the value."""
    return hmac.new(key, f"sendsafe.{purpose}.v1\x00{value}".encode(), hashlib.sha256).hexdigest()[:32]


@functools.lru_cache(maxsize=65_536)
def prefix_token(key: bytes, prefix: str) -> str:
    """`index_token` of a destination prefix, memoised: an account sends to the same prefixes again and
    again, and each token is an HMAC key schedule. (Only rate-limit key names come from it.)"""
    return index_token(key, "prefix", prefix)


MASKED_BODY: Final = ""  # what de-identified users and redacted messages show as the body


def mask_number(number: str) -> str:
    """`+61412345678` -> `+61*******678`: the country calling code and the last three digits stay, so a
    de-identified user can still tell messages apart roughly, never reach the person."""
    raw = number.strip()
    if not raw:
        return ""
    digits = raw.lstrip("+")
    if not digits.isdigit() or len(digits) < 6:
        return "*" * len(raw)
    try:
        cc = str(phonenumbers.parse("+" + digits, None).country_code)
    except phonenumbers.NumberParseException:
        cc = digits[:1]
    keep_end = 3
    middle = len(digits) - len(cc) - keep_end
    if middle < 2:
        return "+" + "*" * len(digits)
    return "+" + cc + "*" * middle + digits[-keep_end:]


MAX_RETENTION_DAYS: Final = 3650


class InvalidSettings(InvalidArgument):
    reason = "INVALID_SETTINGS"


def check_retention_days(days: int) -> int:
    """0 keeps bodies; otherwise bodies are redacted this many days after the message (metadata stays)."""
    if not 0 <= days <= MAX_RETENTION_DAYS:
        raise InvalidSettings(f"body_retention_days must be between 0 and {MAX_RETENTION_DAYS}.")
    return days


# --------------------------------------------------------------------------------------------------------
# Opt-outs (STOP) and inbound keywords.
# --------------------------------------------------------------------------------------------------------

OPT_OUT_KEYWORDS: Final = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT"})
OPT_IN_KEYWORDS: Final = frozenset({"START", "UNSTOP", "SUBSCRIBE"})
_KEYWORD_STRIP: Final = " \t\r\n.!?,;:'\"()"


class OptAction(StrEnum):
    NONE = ""
    OPT_OUT = "OPT_OUT"
    OPT_IN = "OPT_IN"


def opt_action(body: str) -> OptAction:
    """A reply that is exactly one of the opt-out (opt-in) keywords, ignoring case, surrounding spaces and
    punctuation ("Stop.", " unsubscribe "), changes the sender's opt-out state. A sentence that merely
    contains the word ("please don't stop") does not."""
    word = body.strip(_KEYWORD_STRIP).upper().replace("-", "").replace(" ", "")
    if len(word) > 16:
        return OptAction.NONE
    if word in OPT_OUT_KEYWORDS:
        return OptAction.OPT_OUT
    if word in OPT_IN_KEYWORDS:
        return OptAction.OPT_IN
    return OptAction.NONE


def first_word(body: str) -> str:
    """ClickSend's deprecated `_keyword`: the first word of an inbound body."""
    parts = body.split()
    return parts[0] if parts else ""


# --------------------------------------------------------------------------------------------------------
# Idempotency keys: a client retry of the same send gets the first answer, nothing is sent or charged twice.
# --------------------------------------------------------------------------------------------------------

IDEMPOTENCY_RECORD: Final = "sms.idempotency"
IDEMPOTENCY_TTL_S: Final = 24 * 3600
_IDEMPOTENCY_KEY_SHAPE: Final = re.compile(r"[\x21-\x7e]{1,255}")


class InvalidIdempotencyKey(InvalidArgument):
    reason = "INVALID_IDEMPOTENCY_KEY"


class IdempotencyKeyReused(FailedPrecondition):
    reason = "IDEMPOTENCY_KEY_REUSED"


def check_idempotency_key(key: str) -> str:
    """1-255 visible ASCII characters (a UUID is the usual choice)."""
    if not _IDEMPOTENCY_KEY_SHAPE.fullmatch(key):
        raise InvalidIdempotencyKey("Idempotency-Key must be 1 to 255 visible ASCII characters.")
    return key


def idempotency_key_hash(key: str) -> bytes:
    return hashlib.sha256(b"sendsafe.idempotency.v1\x00" + key.encode("ascii")).digest()


def request_fingerprint(index_key: bytes, inputs: Sequence[OutboundInput]) -> bytes:
    """A keyed digest of a send request: the same key with a different request is refused. Keyed, so the
    stored digest cannot be used to guess bodies or numbers."""
    canonical = json.dumps([dataclasses.astuple(m) for m in inputs], separators=(",", ":"), ensure_ascii=False)
    return hmac.new(index_key, b"sendsafe.sms.request.v1\x00" + canonical.encode("utf-8", "surrogatepass"),
                    hashlib.sha256).digest()


def encode_send_result(result: SendResult) -> bytes:
    """The answer to a send, to be encrypted and replayed for a retry with the same idempotency key."""
    items = [
        {
            "input": dataclasses.asdict(i.input), "status": i.status.value, "message_id": i.message_id, "to": i.to,
            "country": i.country, "sender": i.sender, "parts": i.parts, "price": str(i.price), "schedule": i.schedule,
        }
        for i in result.items
    ]
    doc = {"v": 1, "date": result.date, "currency": result.currency.currency_name_short, "items": items}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


def decode_send_result(raw: bytes) -> SendResult:
    doc = json.loads(raw.decode("utf-8", "surrogatepass"))
    if doc.get("v") != 1:
        raise ValueError("unknown stored send result version")
    items = [
        SendItem(
            input=OutboundInput(**i["input"]), status=MessageStatusCode(i["status"]), message_id=i["message_id"],
            to=i["to"], country=i["country"], sender=i["sender"], parts=int(i["parts"]), price=Decimal(i["price"]),
            schedule=int(i["schedule"]),
        )
        for i in doc["items"]
    ]
    return SendResult(date=int(doc["date"]), items=items, currency=currency_for(doc["currency"]))


# --------------------------------------------------------------------------------------------------------
# Send limits and rate limits.
#
# Whole-request limits (token buckets per account and per API key, the key's messages per minute/day)
# refuse the whole request with 429 + Retry-After: nothing is stored or charged, the client retries later.
# Per-destination rules are per message, as ClickSend reports per message: a country the key may not send
# to is COUNTRY_NOT_ALLOWED, a destination prefix over its velocity limit (SMS pumping) is THROTTLED.
# --------------------------------------------------------------------------------------------------------


class RateLimited(ResourceExhausted):
    """Whole request refused; `retry_after_seconds` goes to the client as Retry-After."""

    reason = "TOO_MANY_REQUESTS"


class SendLimitExceeded(ResourceExhausted):
    reason = "SEND_LIMIT_EXCEEDED"


@dataclass(frozen=True, slots=True)
class SendLimits:
    """An API key's own limits (0 / empty = none). `bucket`: the key whose counters they draw from, shared by
    the key's lineage (rolled successors, keys it minted) so rolling never resets them; "" = the key's own."""

    per_minute: int = 0
    per_day: int = 0
    countries: frozenset[str] = frozenset()
    bucket: str = ""

    def allows_country(self, country: str) -> bool:
        return not self.countries or country.upper() in self.countries


@dataclass(frozen=True, slots=True)
class Bucket:
    """A token bucket (`rate` per second, at most `capacity`) or, with `window` > 0, a fixed window of
    `window` seconds allowing `capacity` in each."""

    key: str
    capacity: int
    rate: float = 0.0
    window: int = 0


@dataclass(frozen=True, slots=True)
class Velocity:
    """At most `limit` messages per `window` seconds to one destination prefix (keyed token in `key`)."""

    key: str
    limit: int
    window: int


@dataclass(frozen=True, slots=True)
class LimitRequest:
    """What one send asks of the limiter: `cost` tokens from every bucket (all or nothing), and per
    message the velocity counter it counts against (None: exempt, e.g. a test recipient)."""

    buckets: tuple[Bucket, ...]
    velocity: tuple[Velocity | None, ...]


@dataclass(frozen=True, slots=True)
class LimitVerdict:
    """`retry_after` > 0: the whole request is refused. Otherwise `throttled[i]` marks messages over their
    destination prefix's velocity limit."""

    retry_after: float = 0.0
    throttled: tuple[bool, ...] = ()
    exceeded: str = ""  # which limit refused the request: "account", "api_key", "key_minute", "key_day"


def destination_prefix(e164: str, national_digits: int, region: str = "") -> str:
    """Country calling code plus the first `national_digits` digits of the national number. With the
    number's region (known after validation) the calling code is a table lookup, not a parse."""
    cc = _calling_code(region) if region else ""
    if cc and e164.startswith(cc):
        return e164[: len(cc) + national_digits]
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return e164[: 1 + national_digits]
    national = str(number.national_number)
    return f"+{number.country_code}{national[:national_digits]}"


@functools.lru_cache(maxsize=512)
def _calling_code(region: str) -> str:
    """"+61" for "AU" ("" when unknown)."""
    cc = phonenumbers.country_code_for_region(region)
    return f"+{cc}" if cc else ""


def retry_after_seconds(wait: float) -> int:
    """Retry-After is whole seconds, at least 1."""
    return max(1, math.ceil(wait))


# --------------------------------------------------------------------------------------------------------
# Cancelling.
# --------------------------------------------------------------------------------------------------------


class MessageNotFound(NotFound):
    reason = "MESSAGE_NOT_FOUND"


class NotCancellable(FailedPrecondition):
    reason = "MESSAGE_NOT_CANCELLABLE"


CANCELLABLE: Final = frozenset(sources_of(MessageStatus.CANCELLED))


def check_message_id(message_id: str) -> str:
    """Path ids arrive as text; anything but a message id cannot exist (NOT_FOUND, not a 400)."""
    if not _MESSAGE_ID_SHAPE.fullmatch(message_id.strip()):
        raise MessageNotFound("No such message.")
    return message_id.strip().upper()


# --------------------------------------------------------------------------------------------------------
# Receipts and inbound messages, as read back.
# --------------------------------------------------------------------------------------------------------


class TestModeOnly(PermissionDenied):
    reason = "TEST_MODE_ONLY"

    __test__ = False  # not a pytest class


@dataclass(frozen=True, slots=True)
class ReceiptRecord:
    """One delivery report: a message reached a final state (delivered or failed)."""

    id: int
    account_id: int
    user_id: int
    message_id: str
    status: MessageStatus
    error_code: int | None
    custom_string: str
    timestamp_send: int
    timestamp: int


@dataclass(frozen=True, slots=True)
class ReceiptPage:
    window: PageWindow
    total: int
    items: list[ReceiptRecord]


@dataclass(frozen=True, slots=True)
class InboundRecord:
    """A reply as stored: the sender's number and the body only as ciphertext."""

    id: str
    account_id: int
    original_message_id: str  # "" when the reply could not be tied to a message (test hook)
    from_ct: bytes
    to: str  # our number the reply was sent to
    body_ct: bytes | None  # None once redacted
    custom_string: str
    timestamp: int
    original_body_ct: bytes | None = None
    original_account_id: int = 0


@dataclass(frozen=True, slots=True)
class InboundView:
    record: InboundRecord
    sender: str  # the replying phone ("from")
    body: str
    original_body: str

    @property
    def keyword(self) -> str:
        return first_word(self.body)


@dataclass(frozen=True, slots=True)
class InboundPage:
    window: PageWindow
    total: int
    items: list[InboundView]


@dataclass(frozen=True, slots=True)
class InboundInput:
    """A reply as a carrier reports it (or a test hook makes it)."""

    carrier: str
    carrier_ref: str  # the carrier's id of the inbound message (dedupe key)
    sender: str  # the replying phone
    to: str  # our number
    body: str
    in_reply_to: str  # our message id or the carrier's ref of the outbound message


@dataclass(frozen=True, slots=True)
class OriginalMessage:
    """The outbound message a reply answers."""

    id: str
    account_id: int
    user_id: int
    custom_string: str
    sender: str


@dataclass(frozen=True, slots=True)
class NewInbound:
    id: str
    account_id: int
    original_message_id: str
    from_ct: bytes
    from_hash: bytes
    to: str
    body_ct: bytes
    custom_string: str
    carrier: str
    carrier_ref: str
    is_test: bool
    action: OptAction


# --------------------------------------------------------------------------------------------------------
# Per-account messaging settings (privacy and webhooks) and customer webhooks.
# --------------------------------------------------------------------------------------------------------

WEBHOOK_SECRET_RECORD: Final = "sms.webhook_secret"  # noqa: S105 (a record type name)


@dataclass(frozen=True, slots=True)
class MessagingSettings:
    account_id: int
    receipt_webhook_url: str = ""
    inbound_webhook_url: str = ""
    body_retention_days: int = 0
    staff_content_access: bool = False
    webhook_secret_ct: bytes | None = None
    update_time: int = 0

    @property
    def has_webhook_secret(self) -> bool:
        return self.webhook_secret_ct is not None


@dataclass(frozen=True, slots=True)
class SettingsUpdate:
    """Fields to change (None: leave as is)."""

    receipt_webhook_url: str | None = None
    inbound_webhook_url: str | None = None
    body_retention_days: int | None = None
    staff_content_access: bool | None = None



SIGNATURE_TOLERANCE_S: Final = 300


def webhook_signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """A carrier callback's `X-Carrier-Signature`: `v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`
    (the timestamp is signed with the body so a captured request cannot be replayed later). Customer
    webhooks are signed the Standard Webhooks way instead (svckit.webhooks)."""
    mac = hmac.new(secret, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={mac}"


def verify_signature(secret: bytes, timestamp: str, body: bytes, header: str, now: int,
                     tolerance: int = SIGNATURE_TOLERANCE_S) -> bool:
    """Constant-time check of any `v1=` value in `header` (several are allowed during secret rotation),
    and the timestamp within `tolerance` seconds of now."""
    if not timestamp.isdigit() or len(timestamp) > 12 or abs(now - int(timestamp)) > tolerance:
        return False
    expected = webhook_signature(secret, int(timestamp), body)
    ok = False
    for candidate in header.split(","):
        ok |= hmac.compare_digest(candidate.strip().encode(), expected.encode())
    return ok


class WebhookEvent(StrEnum):
    RECEIPT = "sms.receipt"
    INBOUND = "sms.inbound"


@dataclass(frozen=True, slots=True)
class WebhookJob:
    id: int
    account_id: int
    event: WebhookEvent
    ref: str  # receipt id or inbound message id
    attempts: int
    url: str  # "" = the account's current URL for the event


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    id: int
    event: str
    ref: str
    host: str
    attempt: int
    outcome: str  # DELIVERED | RETRYING | ABANDONED | REFUSED
    http_status: int
    error: str
    duration_ms: int
    time: int


WEBHOOK_MAX_ATTEMPTS: Final = 8


def webhook_backoff(attempt: int, base_seconds: float = 5.0, cap_seconds: float = 3600.0) -> float:
    """Delay before the next webhook attempt after `attempt` failures: 5 s, 10 s, 20 s ... capped."""
    return retry_delay(attempt, base_seconds, cap_seconds)


@dataclass(frozen=True, slots=True)
class RateConfig:
    """Configured limits (0 disables one): messages per second and burst per account and per API key, and
    at most `prefix_limit` messages per `prefix_window` seconds to one destination prefix per account."""

    account_rate: float = 0.0
    account_burst: int = 0
    key_rate: float = 0.0
    key_burst: int = 0
    prefix_limit: int = 0
    prefix_window: int = 60
    prefix_digits: int = 4

    def __post_init__(self) -> None:
        for name in ("account", "key"):
            rate, burst = getattr(self, f"{name}_rate"), getattr(self, f"{name}_burst")
            if rate < 0 or burst < 0 or (rate > 0) != (burst > 0):
                raise ValueError(f"{name} rate and burst must both be positive, or both 0 (off)")
            if burst and burst < MAX_MESSAGES_PER_REQUEST:
                raise ValueError(f"{name} burst must allow one full request ({MAX_MESSAGES_PER_REQUEST} messages)")
        if self.prefix_limit < 0 or self.prefix_window <= 0 or not 1 <= self.prefix_digits <= 8:
            raise ValueError("prefix velocity needs limit >= 0, window > 0 and 1-8 digits")


def limit_request(config: RateConfig, caller: Caller, prefix_tokens: Sequence[str | None]) -> LimitRequest:
    """The buckets one send draws from and, per message, its destination-prefix counter (None: exempt)."""
    acct = caller.account_id
    buckets: list[Bucket] = []
    if config.account_rate > 0:
        buckets.append(Bucket(f"account:{acct}", config.account_burst, config.account_rate))
    if caller.api_key_id:
        kid = caller.api_key_id
        if config.key_rate > 0:
            buckets.append(Bucket(f"api_key:{kid}", config.key_burst, config.key_rate))
        # The key's own limits, counted per lineage: each key is held to its own cap on the shared count.
        lineage = caller.limits.bucket or kid
        if caller.limits.per_minute > 0:
            buckets.append(Bucket(f"key_minute:{lineage}", caller.limits.per_minute, window=60))
        if caller.limits.per_day > 0:
            buckets.append(Bucket(f"key_day:{lineage}", caller.limits.per_day, window=86_400))
    velocity = tuple(
        None if token is None or config.prefix_limit <= 0
        else Velocity(f"prefix:{acct}:{token}", config.prefix_limit, config.prefix_window)
        for token in prefix_tokens
    )
    return LimitRequest(tuple(buckets), velocity)


def limit_error(verdict: LimitVerdict, limits: SendLimits) -> ResourceExhausted:
    """The whole-request refusal for a verdict with `retry_after` set."""
    which = verdict.exceeded
    if verdict.retry_after < 0:
        what = {"key_minute": f"{limits.per_minute} messages per minute",
                "key_day": f"{limits.per_day} messages per day"}.get(which, "its rate limit")
        return SendLimitExceeded(f"This request has more messages than the API key allows ({what}).", limit=which)
    wait = str(retry_after_seconds(verdict.retry_after))
    if which in ("key_minute", "key_day"):
        return SendLimitExceeded("The API key's send limit is used up; retry later.", limit=which,
                                 retry_after_seconds=wait)
    return RateLimited("Too many messages; retry later.", limit=which, retry_after_seconds=wait)


def receipt_payload(r: ReceiptRecord) -> dict[str, object]:
    """A receipt as /v3/sms/receipts shows it (and as its webhook carries it)."""
    view = clicksend_receipt_view(r.status, r.error_code)
    return {
        "timestamp_send": r.timestamp_send, "timestamp": r.timestamp, "message_id": r.message_id,
        "status_code": view.status_code, "status_text": view.status_text, "error_code": view.error_code,
        "error_text": view.error_text, "custom_string": r.custom_string, "subaccount_id": r.user_id,
        "message_type": "sms",
    }


def inbound_payload(v: InboundView) -> dict[str, object]:
    """A reply as /v3/sms/inbound shows it (and as its webhook carries it)."""
    r = v.record
    return {
        "timestamp": r.timestamp, "from": v.sender, "body": v.body, "original_body": v.original_body,
        "original_message_id": r.original_message_id, "to": r.to, "custom_string": r.custom_string,
        "message_id": r.id, "_keyword": v.keyword,
    }


# -- notification destinations ------------------------------------------------------------------------------

ALERT_DELIVERY: Final = "alert_delivery"  # Caller.cause of alert notifications (see audit's Event.cause)
# Caller.cause of verification codes: their bodies never show in history (whoever can read the account's
# history could otherwise verify a number they do not hold).
DESTINATION_VERIFICATION: Final = "destination_verification"
DESTINATION_CODE_TTL_SECONDS: Final = 600
DESTINATION_CODE_ATTEMPTS: Final = 5
DESTINATION_CODES_PER_HOUR: Final = 5
_CODE_LABEL: Final = b"sendsafe.destination.code.v1\x00"


class DestinationNotVerified(FailedPrecondition):
    reason = "DESTINATION_NOT_VERIFIED"


class DestinationNotFound(NotFound):
    reason = "DESTINATION_NOT_FOUND"


class DestinationCodeInvalid(InvalidArgument):
    reason = "DESTINATION_CODE_INVALID"


class DestinationCodeExpired(FailedPrecondition):
    reason = "DESTINATION_CODE_EXPIRED"


class DestinationAttemptsExceeded(ResourceExhausted):
    reason = "DESTINATION_ATTEMPTS_EXCEEDED"


class DestinationCodesExceeded(ResourceExhausted):
    reason = "DESTINATION_CODES_EXCEEDED"


class DestinationInvalid(InvalidArgument):
    reason = "DESTINATION_INVALID"


class AlertOwnerNotAllowed(FailedPrecondition):
    reason = "ALERT_OWNER_NOT_ALLOWED"


class IdentityNotConfigured(FailedPrecondition):
    reason = "IDENTITY_NOT_CONFIGURED"


SEND_PERMISSION: Final = "sms.send"
ALL_SCOPES: Final = "*"  # a key scoped "*" (or to nothing) carries every permission of its user
SESSION_SCOPES: Final = (ALL_SCOPES,)  # a rule set in a session: only the user's own permissions count


@dataclass(frozen=True, slots=True)
class OwnerUser:
    """An alert rule's owner as identity has it at delivery."""

    account_id: int
    active: bool
    permissions: frozenset[str]


def owner_refusal(account_id: int, user: OwnerUser | None, key_scopes: Sequence[str] | None) -> str:
    """Why an alert rule's owner may no longer send as itself ("" when it may): `user` as identity has it now
    (None: deleted or unknown), `key_scopes` the scopes of the key that still stands for the API key the rule
    was set with (None: none does, e.g. it was revoked; SESSION_SCOPES for a rule set in a session). The
    reasons go into the audit event of the refusal, never to the customer as the error's reason."""
    if user is None or user.account_id != account_id:
        return "user_not_found"
    if not user.active:
        return "user_inactive"
    if SEND_PERMISSION not in user.permissions:
        return "sms_send_missing"
    if key_scopes is None:
        return "api_key_inactive"
    if key_scopes and ALL_SCOPES not in key_scopes and SEND_PERMISSION not in key_scopes:
        return "api_key_scope"
    return ""


@dataclass(frozen=True, slots=True)
class Destination:
    destination_id: str
    account_id: int
    channel: int
    to_masked: str
    verified: bool
    create_time: int
    verify_time: int | None = None


def new_destination_code() -> str:
    """Six random digits."""
    return f"{secrets.randbelow(1_000_000):06d}"


def verification_text(code: str) -> str:
    """The only text a verification SMS carries."""
    return f"SendSafe verification code: {code}"


def destination_code_hash(key: bytes, destination_id: str, code: str) -> bytes:
    """The code as stored: keyed (the account's index key) and bound to the destination."""
    return hmac.new(key, _CODE_LABEL + f"{destination_id}:{code}".encode(), hashlib.sha256).digest()


def check_destination_code(code: str) -> str:
    """Six ASCII digits, or DESTINATION_CODE_INVALID (nothing is counted for input that cannot match)."""
    code = code.strip()
    if len(code) != 6 or not code.isascii() or not code.isdigit():
        raise DestinationCodeInvalid("the code is the 6 digits of the verification SMS")
    return code
