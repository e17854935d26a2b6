"""Per-message status codes (ClickSend's application status vocabulary, research §2) and the domain
errors every topic shares."""

from __future__ import annotations

from enum import StrEnum

from svckit.errors import FailedPrecondition, InvalidArgument, NotFound


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


class InvalidAccountId(InvalidArgument):
    reason = "INVALID_ACCOUNT_ID"


class MessageNotFound(NotFound):
    reason = "MESSAGE_NOT_FOUND"


class NotCancellable(FailedPrecondition):
    reason = "MESSAGE_NOT_CANCELLABLE"
