"""Email notifications: which addresses are accepted, how they are masked, what a notification email may say,
and how a mail server's failures are classified (retry later, or refused for good). Pure."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

from svckit.errors import FailedPrecondition, InvalidArgument, Unavailable

EMAIL: Final = 2  # sendsafe.messaging.v1.NotificationChannel.NOTIFICATION_CHANNEL_EMAIL
MAX_ADDRESS: Final = 254
MAX_SUBJECT: Final = 200
MAX_BODY: Final = 20_000
DEFAULT_SUBJECT: Final = "SendSafe notification"
VERIFICATION_SUBJECT: Final = "SendSafe verification code"
SECURITY_NOTIFICATION: Final = "security_notification"  # Event.cause of the emails to an account's owners

# ASCII only (no SMTPUTF8): a dot-atom local part and a domain of LDH labels with a letter TLD (IDNs in
# their xn-- form). Stricter than RFC 5322 on purpose: whatever passes is safe in an SMTP envelope.
_LOCAL: Final = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_LABEL: Final = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_ADDRESS: Final = re.compile(rf"(?P<local>{_LOCAL})@(?P<domain>(?:{_LABEL}\.)+(?:[a-z]{{2,63}}|xn--[a-z0-9-]{{1,59}}))")
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class EmailAddressInvalid(InvalidArgument):
    reason = "EMAIL_ADDRESS_INVALID"


class EmailContentInvalid(InvalidArgument):
    reason = "EMAIL_CONTENT_INVALID"


class EmailUnavailable(Unavailable):
    """The mail server could not take the message now (unreachable, timed out, 4xx, TLS or login failed):
    the caller retries later."""

    reason = "EMAIL_UNAVAILABLE"


class EmailRejected(FailedPrecondition):
    """The mail server refused the recipient or the message for good (5xx): retrying cannot help."""

    reason = "EMAIL_REJECTED"


class NoAccountOwners(FailedPrecondition):
    reason = "NO_ACCOUNT_OWNERS"


def check_address(raw: str) -> str:
    """The address lowercased (local part too: one destination, one hash), or EMAIL_ADDRESS_INVALID."""
    value = raw.strip().lower()
    m = _ADDRESS.fullmatch(value)
    if m is None or len(value) > MAX_ADDRESS or len(m.group("local")) > 64:
        raise EmailAddressInvalid("the destination must be an email address, e.g. ops@example.com")
    return value


def mask_address(address: str) -> str:
    """First letter of the local part and the domain: 'o***@example.com'."""
    local, _, domain = address.partition("@")
    return f"{local[:1]}***@{domain}"


def check_content(subject: str, body: str) -> tuple[str, str]:
    """A one-line subject (DEFAULT_SUBJECT when empty) and a text body, both bounded and free of control
    characters (a subject can never smuggle a header), or EMAIL_CONTENT_INVALID."""
    subject = subject.strip() or DEFAULT_SUBJECT
    if len(subject) > MAX_SUBJECT or _CONTROL.search(subject) or "\n" in subject or "\t" in subject:
        raise EmailContentInvalid(f"the subject must be one line of at most {MAX_SUBJECT} characters")
    if not body.strip() or len(body) > MAX_BODY or _CONTROL.search(body):
        raise EmailContentInvalid(f"the body must be text of 1 to {MAX_BODY} characters")
    return subject, body


def verification_email(code: str) -> tuple[str, str]:
    """Subject and body of a destination verification email: the code and nothing else of the account's."""
    return VERIFICATION_SUBJECT, (
        f"SendSafe verification code: {code}\n\n"
        "Enter this code to confirm this address for SendSafe alert notifications. It expires in 10 minutes.\n"
        "If you did not ask for it, ignore this email: nothing is sent here until the code is entered.\n")


def message_id_local(account_id: int, notification_id: str, recipient: str) -> str:
    """The local part of a notification's Message-ID: the same for every retry of one notification to one
    recipient (mail systems can recognise a resend), naming neither the recipient nor the account."""
    digest = hashlib.sha256(f"{account_id}\x00{notification_id}\x00{recipient}".encode()).hexdigest()
    return f"n.{digest[:40]}"


@dataclass(frozen=True, slots=True)
class SmtpReply:
    """What a mail server answered when it refused something."""

    code: int
    stage: str  # "connect" | "tls" | "auth" | "sender" | "recipient" | "data"


def classify(reply: SmtpReply | None) -> type[EmailUnavailable] | type[EmailRejected]:
    """No reply (refused, unreachable, timed out, dropped), a 4xx, or a failure on our side of the session
    (TLS, login, sender: configuration an operator fixes) -> retry later; a 5xx to the recipient or the
    message itself -> refused for good."""
    if reply is None or reply.code < 500 or reply.stage not in ("recipient", "data"):
        return EmailUnavailable
    return EmailRejected
