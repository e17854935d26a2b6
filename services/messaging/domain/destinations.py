"""Notification destinations: alert SMS go only to numbers the account verified with a code, as sends by
the alert rule's owner, whose rights are checked again at every delivery."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from svckit.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted

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
        raise DestinationCodeInvalid("the code is the 6 digits of the verification message")
    return code


class ChannelNotAvailable(FailedPrecondition):
    reason = "CHANNEL_NOT_AVAILABLE"


class NotificationRejected(FailedPrecondition):
    reason = "NOTIFICATION_REJECTED"
