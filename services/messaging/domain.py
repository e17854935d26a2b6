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

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from types import MappingProxyType
from typing import Final

import phonenumbers

from svckit.errors import FailedPrecondition, InvalidArgument

__all__ = [
    "CARRIER_ERROR_TEXT",
    "GSM7_BASIC",
    "GSM7_EXTENSION",
    "GSM7_MULTI_PART",
    "GSM7_SINGLE_PART",
    "MAX_GSM7_UNITS",
    "MAX_PARTS",
    "MAX_UCS2_UNITS",
    "SCHEDULE_MAX_AHEAD_S",
    "SCHEDULE_PAST_TOLERANCE_S",
    "TEMPORARY_FAILURE_ERROR",
    "TEST_RECIPIENTS",
    "UCS2_MULTI_PART",
    "UCS2_SINGLE_PART",
    "UNKNOWN_FAILURE_ERROR",
    "EmptyMessage",
    "Encoding",
    "HistoryStatus",
    "InvalidMessageBody",
    "InvalidRecipient",
    "InvalidSchedule",
    "InvalidSenderId",
    "InvalidStatusTransition",
    "MessageStatus",
    "MessageStatusCode",
    "MessageTooLong",
    "PriceTable",
    "ReceiptStatus",
    "Recipient",
    "Rejected",
    "SmsParts",
    "ValidatedMessage",
    "can_transition",
    "check_transition",
    "clicksend_history_view",
    "clicksend_receipt_code",
    "clicksend_receipt_view",
    "count_parts",
    "format_balance",
    "format_price",
    "is_gsm7",
    "is_noop",
    "is_terminal",
    "is_test_recipient",
    "normalize_recipient",
    "parse_recipient",
    "split_parts",
    "validate_body",
    "validate_outbound",
    "validate_schedule",
    "validate_sender",
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


def is_gsm7(body: str) -> bool:
    """True when every character is in the GSM 03.38 default alphabet or its extension table."""
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in body)


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
    the parts that are actually sent and billed.
    """
    if is_gsm7(body):
        encoding, cost, single, multi = Encoding.GSM7, _gsm7_cost, GSM7_SINGLE_PART, GSM7_MULTI_PART
    else:
        encoding, cost, single, multi = Encoding.UCS2, _ucs2_cost, UCS2_SINGLE_PART, UCS2_MULTI_PART
    costs = [cost(ch) for ch in body]
    units = sum(costs)
    if units == 0:
        return encoding, 0, []
    if units <= single:
        return encoding, units, [0]
    starts = [0]
    used = 0
    for i, c in enumerate(costs):
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
    return any(0xD800 <= ord(ch) <= 0xDFFF for ch in body)


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


def parse_recipient(to: str, country: str | None) -> Recipient:
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
    if not phonenumbers.is_valid_number(number):
        raise InvalidRecipient("The recipient is not a valid phone number.")
    number_region = phonenumbers.region_code_for_number(number)
    if number_region is None or not _REGION_SHAPE.fullmatch(number_region):
        # Non-geographic numbers (+800, +882, ...: region "001") have no country to route or price by.
        raise InvalidRecipient("The recipient is not a phone number in a country we can send to.")
    return Recipient(e164, number_region)


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


def format_price(value: Decimal) -> str:
    """ClickSend's per-message price string: 4 decimals, half-up ("0.0770")."""
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
