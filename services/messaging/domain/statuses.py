"""The internal message state machine and its mapping onto ClickSend's history/receipt vocabulary
(research §4), with the carriers' error codes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from services.messaging.domain.errors import InvalidStatusTransition


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
HISTORY_VIEWS: Final[Mapping[MessageStatus, tuple[str, int, str]]] = MappingProxyType(
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
    name, status_code, status_text = HISTORY_VIEWS[status]
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


def sources_of(new: MessageStatus) -> frozenset[MessageStatus]:
    """The states from which `new` may be entered: the guard of an idempotent, ordered UPDATE."""
    return frozenset(old for old, targets in _TRANSITIONS.items() if new in targets)


CANCELLABLE: Final = frozenset(sources_of(MessageStatus.CANCELLED))
