"""A whole outbound message and a whole send request: validated in ClickSend's order, reported per message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from services.messaging.domain.encoding import SmsParts, validate_body
from services.messaging.domain.errors import (
    EmptyMessage,
    InvalidMessageBody,
    InvalidRecipient,
    InvalidSchedule,
    InvalidSenderId,
    MessageStatusCode,
    MessageTooLong,
)
from services.messaging.domain.recipients import Recipient, parse_recipient, validate_schedule, validate_sender
from svckit.errors import InvalidArgument


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


MAX_MESSAGES_PER_REQUEST: Final = 1000


class MissingRequiredFields(InvalidArgument):
    reason = "MISSING_REQUIRED_FIELDS"


class TooManyRecipients(InvalidArgument):
    reason = "TOO_MANY_RECIPIENTS"


def check_batch_size(count: int) -> None:
    """A send/price request carries 1-1000 messages; anything else is refused whole (nothing stored)."""
    if count <= 0:
        raise MissingRequiredFields("The request has no messages.")
    if count > MAX_MESSAGES_PER_REQUEST:
        raise TooManyRecipients(
            f"A request may carry at most {MAX_MESSAGES_PER_REQUEST} messages.",
            max_messages=str(MAX_MESSAGES_PER_REQUEST),
        )
