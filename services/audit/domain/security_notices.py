"""Security notifications to an account's owners (issue 14): which logged events notify, the fixed email
templates, the "new sign-in from an address not seen before" rule, and what a delivery outcome means.

A notice is written from a fixed template and a short list of event fields that are checked or reduced to
plain characters: the time (UTC), the acting user's id, the network address and user agent of the call,
the API key's id (its public half), the event id. Event details are never copied wholesale: they may hold
customer-written text, and the only details a template reads are numbers and timestamps it re-formats.
So no key secret, TOTP secret, password, code, message body or phone number can reach an email.

Which events notify (outcome SUCCESS only, in the account's own feed):
  api_key_created            keys.api_key.created, keys.api_key.rolled, keys.api_key.issued
  new_sign_in                auth.login of a customer user, from an address not seen before (see below)
  mfa_enrolled / mfa_removed auth.mfa.enrol (the factor confirmed), auth.mfa.remove
  password_changed           auth.password.change; subaccount.update whose `fields` name the password (reset
                             by another user of the account)
  staff_access               staff.customer_access (the customer's copy), audit.events.read_by_staff,
                             messaging.staff.history_read
  key_destruction_scheduled  keys.account_keys.destruction_scheduled
  sender_identity_added      messaging.sender.activated (a number bought or verified, an alpha tag approved)

New sign-in: a successful customer sign-in notifies when none of the same user's successful sign-ins in the
SIGN_IN_WINDOW (90 days) before it came from the same network: the same IPv4 address, or the same IPv6 /64
(privacy addresses rotate inside a /64). The user's first successful sign-in ever sets the baseline and does
not notify (a new account's, or a new user's, first sign-in is expected; the account creation or the user
creation is itself in the log). A sign-in without a readable client address does not notify.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

API_KEY_CREATED = "api_key_created"
NEW_SIGN_IN = "new_sign_in"
MFA_ENROLLED = "mfa_enrolled"
MFA_REMOVED = "mfa_removed"
PASSWORD_CHANGED = "password_changed"  # noqa: S105 - a notice kind, not a password
STAFF_ACCESS = "staff_access"
KEY_DESTRUCTION_SCHEDULED = "key_destruction_scheduled"
SENDER_IDENTITY_ADDED = "sender_identity_added"

SIGN_IN_ACTION = "auth.login"
SIGN_IN_WINDOW = timedelta(days=90)
OUTCOME_SUCCESS = 1

# action -> kind (auth.login and subaccount.update need a closer look: notice_kind)
_KINDS: Mapping[str, str] = {
    "keys.api_key.created": API_KEY_CREATED,
    "keys.api_key.rolled": API_KEY_CREATED,
    "keys.api_key.issued": API_KEY_CREATED,
    SIGN_IN_ACTION: NEW_SIGN_IN,
    "auth.mfa.enrol": MFA_ENROLLED,
    "auth.mfa.remove": MFA_REMOVED,
    "auth.password.change": PASSWORD_CHANGED,
    "subaccount.update": PASSWORD_CHANGED,
    "staff.customer_access": STAFF_ACCESS,
    "audit.events.read_by_staff": STAFF_ACCESS,
    "messaging.staff.history_read": STAFF_ACCESS,
    "keys.account_keys.destruction_scheduled": KEY_DESTRUCTION_SCHEDULED,
    "messaging.sender.activated": SENDER_IDENTITY_ADDED,
}
CANDIDATE_ACTIONS = frozenset(_KINDS)

# Delivery states (the listing's SecurityNotificationStatus numbers).
PENDING, SENT, FAILED, NOT_SENT = 1, 2, 3, 4
MAX_NOTICE_ATTEMPTS = 8  # with delivery.retry_delay: 5 s doubling, about an hour in all
EMAIL_NOT_CONFIGURED = "EMAIL_NOT_CONFIGURED"
CHANNEL_NOT_AVAILABLE = "CHANNEL_NOT_AVAILABLE"  # messaging's reason when it has no email channel


@dataclass(frozen=True)
class NoticeEvent:
    """The fields of a logged event a security notice may use."""

    sequence: int
    event_id: str
    account_id: int  # the feed account: whose owners are told
    event_time: datetime
    action: str
    outcome: int
    actor_type: str = ""
    actor_id: str = ""
    resource_type: str = ""
    resource_id: str = ""
    client_address: str = ""
    user_agent: str = ""
    details: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SignInAsk:
    """What the new-address rule asks the log about one sign-in: the user's successful sign-ins before it,
    and whether one since `since` came from `network`."""

    account_id: int
    actor_id: str
    before_sequence: int
    since: datetime
    network: str


@dataclass(frozen=True)
class Notice:
    """A notice to record: the rendered email and the event it is about."""

    account_id: int
    kind: str
    event_id: str
    event_sequence: int
    event_time: datetime
    subject: str
    body: str


@dataclass(frozen=True)
class StoredNotice:
    notice_id: int
    account_id: int
    kind: str
    event_id: str
    event_time: datetime
    subject: str
    body: str
    status: int
    attempts: int
    last_error: str
    create_time: datetime
    update_time: datetime


def notice_kind(ev: NoticeEvent) -> str:
    """The kind of notice the event calls for ("" none). A sign-in is only a candidate: is_new_sign_in decides."""
    kind = _KINDS.get(ev.action, "")
    if not kind or ev.outcome != OUTCOME_SUCCESS or ev.account_id <= 0:
        return ""
    if kind == NEW_SIGN_IN and ev.actor_type != "user":
        return ""  # staff sign in to the platform account, not to a customer's
    if ev.action == "subaccount.update" and "password" not in ev.details.get("fields", "").split(","):
        return ""
    if ev.action == "staff.customer_access" and "customer_account_id" in ev.details:
        return ""  # the platform feed's copy of a staff access; the customer's copy notifies
    return kind


def sign_in_network(address: str) -> str:
    """The network a sign-in address is compared by ("" when it is not an IP address): an IPv4 address
    (IPv4-mapped IPv6 included) as /32, an IPv6 address as its /64."""
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return ""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"{ip.ipv4_mapped}/32"
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return f"{ip}/32"


def sign_in_ask(ev: NoticeEvent) -> SignInAsk | None:
    """The question for a sign-in (None when its address is not an IP address: no notice)."""
    network = sign_in_network(ev.client_address)
    if not network:
        return None
    return SignInAsk(ev.account_id, ev.actor_id, ev.sequence, ev.event_time - SIGN_IN_WINDOW, network)


def is_new_sign_in(signed_in_before: bool, seen_in_window: bool) -> bool:
    """Whether a sign-in notifies: the user had signed in before (else this one is the baseline) and not
    from this network within the window."""
    return signed_in_before and not seen_in_window


# -- templates ----------------------------------------------------------------------------------------------

_ID = re.compile(r"[^A-Za-z0-9._:-]")
_AGENT = re.compile(r"[^\x20-\x7e]")
_SUBJECTS: Mapping[str, str] = {
    API_KEY_CREATED: "SendSafe security notice: a new API key",
    NEW_SIGN_IN: "SendSafe security notice: a sign-in from a new address",
    MFA_ENROLLED: "SendSafe security notice: two-factor authentication turned on",
    MFA_REMOVED: "SendSafe security notice: two-factor authentication turned off",
    PASSWORD_CHANGED: "SendSafe security notice: a password was changed",
    STAFF_ACCESS: "SendSafe security notice: SendSafe staff accessed your account",
    KEY_DESTRUCTION_SCHEDULED: "SendSafe security notice: your account's keys are scheduled for destruction",
    SENDER_IDENTITY_ADDED: "SendSafe security notice: a new sender identity",
}
_ADVICE: Mapping[str, str] = {
    API_KEY_CREATED: "If you do not know this key, revoke it (POST /v1/api-keys/{key_id}/revoke) and review "
                     "who has access to the account.",
    NEW_SIGN_IN: "If this was not you or someone you trust, change the user's password, revoke its sessions "
                 "and turn on two-factor authentication.",
    MFA_ENROLLED: "If nobody in your account did this, change the user's password and contact support.",
    MFA_REMOVED: "If nobody in your account did this, turn two-factor authentication back on, change the "
                 "user's password and revoke its sessions.",
    PASSWORD_CHANGED: "If nobody in your account did this, reset the password and revoke the user's sessions.",
    STAFF_ACCESS: "The reason staff gave is in your audit log (GET /v1/audit/events, action "
                  "staff.customer_access); contact support with any question.",
    KEY_DESTRUCTION_SCHEDULED: "When the keys are destroyed, every message and secret encrypted under them "
                               "becomes unreadable for good. If you did not ask for this, cancel the "
                               "destruction before that time and contact support.",
    SENDER_IDENTITY_ADDED: "If nobody in your account added it, release it (/v3/numbers, /v3/own-numbers, "
                           "/v3/alpha-tags) and review who has access to the account.",
}


def clean_id(value: str, limit: int = 64) -> str:
    """An identifier as a template may print it: plain characters only, bounded."""
    return _ID.sub("", value)[:limit]


def clean_agent(value: str, limit: int = 120) -> str:
    """A user agent as a template may print it: printable ASCII on one line, bounded."""
    return " ".join(_AGENT.sub("", value).split())[:limit]


def _utc(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso_time(raw: str) -> str:
    """A detail that must be a timestamp, re-formatted ("" if it is not one)."""
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        return ""
    return _utc(when if when.tzinfo else when.replace(tzinfo=UTC))


_SENDER_TYPES: Mapping[str, str] = {"dedicated_number": "dedicated number", "verified_number": "verified number",
                                     "alpha_tag": "alpha tag"}


def _what(kind: str, ev: NoticeEvent) -> str:
    actor = clean_id(ev.actor_id)
    target = clean_id(ev.resource_id)
    if kind == API_KEY_CREATED:
        verb = "rolled over to a new key" if ev.action == "keys.api_key.rolled" else "created"
        return f"An API key was {verb} in your SendSafe account. API key id: {target or 'unknown'}."
    if kind == NEW_SIGN_IN:
        return f"User {actor or 'unknown'} signed in to your SendSafe account from an address not seen for " \
               f"this user in the last {SIGN_IN_WINDOW.days} days."
    if kind == MFA_ENROLLED:
        return f"Two-factor authentication (TOTP) was turned on for user {target or actor or 'unknown'}."
    if kind == MFA_REMOVED:
        return f"Two-factor authentication (TOTP) was turned off for user {target or actor or 'unknown'}."
    if kind == PASSWORD_CHANGED:
        if ev.action == "subaccount.update":
            return f"The password of user {target or 'unknown'} was reset by user {actor or 'unknown'}."
        return f"The password of user {target or actor or 'unknown'} was changed."
    if kind == STAFF_ACCESS:
        op = clean_id(ev.details.get("operation", "") or ev.action, 48)
        return f"A member of SendSafe staff (staff id {actor or 'unknown'}) accessed your account's data " \
               f"({op})."
    if kind == SENDER_IDENTITY_ADDED:  # the sender itself (a number, a tag) is never printed: only its type
        what = _SENDER_TYPES.get(ev.details.get("sender_type", ""), "sender")
        return f"A new {what} can now be used as a sender of your SendSafe account. Sender identity id: " \
               f"{target or 'unknown'}."
    when = _iso_time(ev.details.get("destroy_time", ""))
    return "Destruction of your SendSafe account's encryption keys was scheduled" + \
        (f"; they will be destroyed at {when}." if when else ".")


def render(kind: str, ev: NoticeEvent) -> Notice:
    """The email for a notice of `kind` about `ev`: a fixed template, nothing copied from the event but
    checked identifiers, the time, the address and a cleaned user agent."""
    lines = [_what(kind, ev), "", f"When: {_utc(ev.event_time)}"]
    address = sign_in_network(ev.client_address) and ev.client_address.strip()
    if address:
        lines.append(f"From address: {address}")
    agent = clean_agent(ev.user_agent)
    if agent and kind != STAFF_ACCESS and kind != KEY_DESTRUCTION_SCHEDULED:
        lines.append(f"User agent: {agent}")
    if kind != NEW_SIGN_IN and kind != STAFF_ACCESS and ev.actor_type == "user" and ev.actor_id:
        lines.append(f"By user: {clean_id(ev.actor_id)}")
    lines += [f"Audit event: {clean_id(ev.event_id)}", "", _ADVICE[kind], "",
              "You receive this because you own this SendSafe account. SendSafe never asks for a password, "
              "API key or code by email."]
    return Notice(ev.account_id, kind, ev.event_id, ev.sequence, ev.event_time, _SUBJECTS[kind], "\n".join(lines))


def delivery_outcome(reason: str, retryable: bool, attempts: int) -> tuple[int, str]:
    """(state, reason shown) after a failed attempt: messaging without an email channel means "not sent",
    at once and for good; a permanent refusal fails; a passing one is retried up to MAX_NOTICE_ATTEMPTS."""
    if reason in (CHANNEL_NOT_AVAILABLE, EMAIL_NOT_CONFIGURED, "MESSAGING_NOT_CONFIGURED"):
        return NOT_SENT, EMAIL_NOT_CONFIGURED if reason == CHANNEL_NOT_AVAILABLE else reason
    if not retryable or attempts >= MAX_NOTICE_ATTEMPTS:
        return FAILED, reason
    return PENDING, reason
