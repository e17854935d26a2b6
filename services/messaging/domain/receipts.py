"""Receipts and inbound messages (replies), as read back and as received."""

from __future__ import annotations

from dataclasses import dataclass

from services.messaging.domain.optouts import OptAction, first_word
from services.messaging.domain.statuses import MessageStatus
from svckit.errors import PermissionDenied
from svckit.paging import PageWindow


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
    custom_ct: bytes | None = None  # the message's sealed custom string (custom_string is then "")


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
    from_ct: bytes | None  # None once de-identified (retention)
    to: str  # our number the reply was sent to
    body_ct: bytes | None  # None once redacted
    custom_string: str
    timestamp: int
    original_body_ct: bytes | None = None
    original_account_id: int = 0
    custom_ct: bytes | None = None  # the original message's sealed custom string
    original_country: str = ""  # the original message's country (what a de-identified sender still shows)


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
