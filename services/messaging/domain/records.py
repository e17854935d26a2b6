"""Plain values passed between the service, its store, queue and carriers: who calls, what a send asks
for and answers, what is stored; message ids."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final

from services.messaging.domain.errors import MessageNotFound, MessageStatusCode
from services.messaging.domain.limits import SendLimits
from services.messaging.domain.pricing import Currency
from services.messaging.domain.statuses import MessageStatus

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
    custom_ct: bytes | None = None  # the custom string sealed (CUSTOM_STRING_RECORD); custom_string is then ""
    custom_hash: bytes | None = None  # its keyed hash (custom_string_index)
    traceparent: str = ""  # W3C traceparent of the request that sent it: receipts and webhooks link to it


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
    to_ct: bytes | None  # None once de-identified (retention)
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
    custom_ct: bytes | None = None  # the sealed custom string (rows before 0008 keep it in custom_string)


MESSAGE_ID_SHAPE: Final = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def check_message_id(message_id: str) -> str:
    """Path ids arrive as text; anything but a message id cannot exist (NOT_FOUND, not a 400)."""
    if not MESSAGE_ID_SHAPE.fullmatch(message_id.strip()):
        raise MessageNotFound("No such message.")
    return message_id.strip().upper()
