"""Identity rules: accounts, users (ClickSend sub-accounts), their access flags and the permissions
those flags grant, what a valid new account or sub-account looks like, the staff directory's roles,
sessions, login throttling and step-up. Pure: no I/O.

Permissions are the names the protos declare in `(sendsafe.options.v1.access).permission`. Which flag or
staff role grants which permission lives in one table, `svckit.permissions.PERMISSIONS`; a permission a proto
declares but the table does not name is granted to nobody (fail closed), and a unit test fails until it is
mapped.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Final

import phonenumbers

from svckit.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from svckit.netaddr import client_network
from svckit.permissions import ALWAYS, PERMISSION_FLAGS, ROLE_PERMISSIONS, STAFF_ROLES

# ---------------------------------------------------------------------------------------------------
# Errors (stable UPPER_SNAKE reasons; svckit maps the kinds to gRPC codes)


class UsernameInvalid(InvalidArgument):
    reason = "USERNAME_INVALID"


class EmailInvalid(InvalidArgument):
    reason = "EMAIL_INVALID"


class PhoneInvalid(InvalidArgument):
    reason = "PHONE_INVALID"


class CountryInvalid(InvalidArgument):
    reason = "COUNTRY_INVALID"


class NameInvalid(InvalidArgument):
    reason = "NAME_INVALID"


class UserLookupInvalid(InvalidArgument):
    reason = "USER_LOOKUP_INVALID"


class UserNotFound(NotFound):
    reason = "USER_NOT_FOUND"


class UsernameTaken(AlreadyExists):
    # ClickSend answers a duplicate api_username with ALREADY_EXISTS; so do we.
    reason = "ALREADY_EXISTS"


class PrincipalRequired(PermissionDenied):
    reason = "PRINCIPAL_REQUIRED"


class UserDisabled(PermissionDenied):
    reason = "USER_DISABLED"


class BalanceUnavailable(Unavailable):
    reason = "BALANCE_UNAVAILABLE"


class MissingRequiredFields(InvalidArgument):
    # ClickSend's application code for a request without its required fields.
    reason = "MISSING_REQUIRED_FIELDS"


class FlagInvalid(InvalidArgument):
    reason = "FLAG_INVALID"


class PagingInvalid(InvalidArgument):
    reason = "INVALID_PAGING"


class SubaccountNotFound(NotFound):
    reason = "NOT_FOUND"


class MainUserProtected(PermissionDenied):
    reason = "MAIN_USER_PROTECTED"


class DelegationExceedsActor(PermissionDenied):
    reason = "DELEGATION_EXCEEDS_ACTOR"


class RestrictionNotLiftable(PermissionDenied):
    reason = "RESTRICTION_NOT_LIFTABLE"


class OwnAccessUnchangeable(PermissionDenied):
    reason = "OWN_ACCESS_UNCHANGEABLE"


class InvalidCredentials(Unauthenticated):
    """One answer for an unknown user, a wrong password or code, a replayed code and a locked user."""

    reason = "INVALID_CREDENTIALS"

    def __init__(self) -> None:
        super().__init__("Invalid username, password or code.")


class MfaRequired(Unauthenticated):
    """The password was right; a second factor (TOTP or recovery code) must come with it."""

    reason = "MFA_REQUIRED"


class LoginThrottled(ResourceExhausted):
    reason = "LOGIN_THROTTLED"


class SessionInvalid(Unauthenticated):
    reason = "SESSION_INVALID"


class SessionRequired(PermissionDenied):
    reason = "SESSION_REQUIRED"


class PasswordRejected(InvalidArgument):
    reason = "PASSWORD_REJECTED"


class MfaAlreadyEnrolled(FailedPrecondition):
    reason = "MFA_ALREADY_ENROLLED"


class MfaNotPending(FailedPrecondition):
    reason = "MFA_NOT_PENDING"


class MfaNotEnrolled(FailedPrecondition):
    reason = "MFA_NOT_ENROLLED"


class MfaCodeInvalid(InvalidArgument):
    reason = "MFA_CODE_INVALID"


class StaffMfaMandatory(FailedPrecondition):
    reason = "STAFF_MFA_MANDATORY"


class ReasonRequired(InvalidArgument):
    reason = "REASON_REQUIRED"


class RoleInvalid(InvalidArgument):
    reason = "ROLE_INVALID"


class StaffNotFound(NotFound):
    reason = "STAFF_NOT_FOUND"


class AccountNotFound(NotFound):
    reason = "ACCOUNT_NOT_FOUND"


class OwnRoleChange(PermissionDenied):
    reason = "OWN_ROLE_CHANGE"


class RoleNotGrantable(PermissionDenied):
    reason = "ROLE_NOT_GRANTABLE"


class StaffOnly(PermissionDenied):
    reason = "STAFF_ONLY"


# ---------------------------------------------------------------------------------------------------
# Access flags and permissions


@dataclass(frozen=True)
class AccessFlags:
    """The ClickSend sub-account flags. Defaults are least privilege: a new non-main user can do
    nothing but read its own account until flags are granted (ClickSend defaults several to 1)."""

    access_users: bool = False
    access_billing: bool = False
    access_reporting: bool = False
    access_contacts: bool = False
    access_settings: bool = False
    access_sms: bool = False
    access_email: bool = False
    access_voice: bool = False
    access_fax: bool = False
    access_post: bool = False
    access_mms: bool = False
    access_reseller: bool = False
    access_smpp: bool = False
    access_global_sending: bool = False
    hide_pricing: bool = False
    share_campaigns: bool = False
    sms_deidentify_message: bool = False

    @classmethod
    def all_granted(cls) -> AccessFlags:
        """The main user's flags: every access_* on; the preference flags stay off."""
        return cls(**{name: True for name in ACCESS_FLAG_NAMES})


FLAG_NAMES: Final[tuple[str, ...]] = tuple(f.name for f in fields(AccessFlags))
ACCESS_FLAG_NAMES: Final[tuple[str, ...]] = tuple(n for n in FLAG_NAMES if n.startswith("access_"))

# Who may hand out which role: nobody grants a role above their own.
GRANTABLE_ROLES: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "support_readonly": frozenset(),
        "support_agent": frozenset(),
        "security_admin": frozenset({"support_readonly", "support_agent", "security_admin"}),
        "platform_admin": frozenset(STAFF_ROLES),
    }
)


def check_role(role: str) -> str:
    if role not in ROLE_PERMISSIONS:
        raise RoleInvalid(f"role must be one of {', '.join(STAFF_ROLES)}")
    return role


def derive_permissions(flags: AccessFlags, *, is_main: bool, enabled: bool) -> frozenset[str]:
    """Permissions a user holds. Disabled (inactive or banned) users hold none; the main user holds
    every permission; other users hold what their flags grant."""
    if not enabled:
        return frozenset()
    if is_main:
        return frozenset(PERMISSION_FLAGS)
    return frozenset(perm for perm, flag in PERMISSION_FLAGS.items() if flag is ALWAYS or getattr(flags, flag))


# ---------------------------------------------------------------------------------------------------
# Entities


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    country: str
    timezone: str
    test_mode: bool
    create_time: datetime


@dataclass(frozen=True)
class User:
    """A ClickSend sub-account. The account's main user is the one ClickSend calls the account."""

    id: int
    account_id: int
    api_username: str
    email: str
    phone_number: str
    first_name: str
    last_name: str
    is_main: bool
    notes: str | None
    flags: AccessFlags
    active: bool
    banned: bool
    create_time: datetime
    update_time: datetime

    @property
    def enabled(self) -> bool:
        return self.active and not self.banned

    @property
    def permissions(self) -> frozenset[str]:
        return derive_permissions(self.flags, is_main=self.is_main, enabled=self.enabled)


@dataclass(frozen=True)
class Currency:
    currency_name_short: str
    currency_prefix_d: str
    currency_prefix_c: str
    currency_name_long: str
    min_recharge_amount: str
    max_recharge_amount: str


@dataclass(frozen=True)
class AccountSettings:
    """Per-account sending settings of the ClickSend account object. Not stored yet: every account
    has these values until settings become editable."""

    setting_unicode_sms: int = 0
    setting_fix_sender_id: int = 0
    # Longest message, in parts, messaging accepts (GSM 03.38 concatenation, 8 parts).
    setting_sms_message_char_limit: int = 8
    on_trial: int = 0
    auto_recharge: int = 0
    low_credit_amount: str = "0.00"


@dataclass(frozen=True)
class AccountDetails:
    """Everything `GET /v3/account` shows: the account, the calling user, and the balance."""

    account: Account
    user: User
    balance: str
    currency: Currency
    settings: AccountSettings


MASKED_API_KEY: Final = "********"
"""What the sub-account object shows for `api_key`: keys are owned (hashed) by the keys service."""


# ---------------------------------------------------------------------------------------------------
# Validation of new accounts

USERNAME_RE: Final = re.compile(r"[A-Za-z0-9._@-]{3,64}")
# RFC 5322 dot-atom local part (ASCII) and an LDH domain with at least one dot.
_EMAIL_RE: Final = re.compile(
    r"(?P<local>[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)"
    r"@(?P<domain>(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63})"
)
MAX_EMAIL = 254
MAX_NAME = 100


@dataclass(frozen=True)
class NewAccount:
    """A validated request to create an account and its main user."""

    account_name: str
    api_username: str
    email: str
    phone_number: str  # E.164 or ""
    first_name: str
    last_name: str
    country: str
    timezone: str
    test_mode: bool


def check_username(raw: str) -> str:
    if not USERNAME_RE.fullmatch(raw):
        raise UsernameInvalid("api_username must be 3-64 characters from A-Z a-z 0-9 . _ @ -")
    return raw


def username_key(name: str) -> str:
    """Usernames are unique ignoring case."""
    return name.lower()


def check_email(raw: str) -> str:
    value = raw.strip()
    m = _EMAIL_RE.fullmatch(value)
    if m is None or len(value) > MAX_EMAIL or len(m.group("local")) > 64:
        raise EmailInvalid("email is not a valid address")
    return f"{m.group('local')}@{m.group('domain').lower()}"


def check_country(raw: str, default: str) -> str:
    value = (raw.strip() or default).upper()
    if value not in phonenumbers.SUPPORTED_REGIONS:
        raise CountryInvalid("country must be an ISO 3166-1 alpha-2 code")
    return value


def check_phone(raw: str, country: str) -> str:
    """Optional; a national number is read in `country`. Stored as E.164."""
    value = raw.strip()
    if not value:
        return ""
    if len(value) > 32 or not re.fullmatch(r"\+?[0-9 ()./-]+", value):
        raise PhoneInvalid("phone_number must be an E.164 number such as +61411111111")
    try:
        number = phonenumbers.parse(value, country)
    except phonenumbers.NumberParseException:
        raise PhoneInvalid("phone_number must be an E.164 number such as +61411111111") from None
    if not phonenumbers.is_valid_number(number):
        raise PhoneInvalid("phone_number is not a valid number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def check_name(raw: str, field: str, *, required: bool) -> str:
    value = " ".join(raw.split())
    if required and not value:
        raise NameInvalid(f"{field} is required", field=field)
    if len(value) > MAX_NAME or not value.isprintable():
        raise NameInvalid(f"{field} must be at most {MAX_NAME} printable characters", field=field)
    return value


def new_account(
    *,
    account_name: str,
    api_username: str,
    email: str,
    phone_number: str,
    first_name: str,
    last_name: str,
    country: str,
    test_mode: bool,
    default_country: str,
    default_timezone: str,
) -> NewAccount:
    """Validate and normalise a CreateAccount request."""
    country_code = check_country(country, default_country)
    return NewAccount(
        account_name=check_name(account_name, "account_name", required=True),
        api_username=check_username(api_username),
        email=check_email(email),
        phone_number=check_phone(phone_number, country_code),
        first_name=check_name(first_name, "first_name", required=False),
        last_name=check_name(last_name, "last_name", required=False),
        country=country_code,
        timezone=default_timezone,
        test_mode=test_mode,
    )


def check_balance(raw: str) -> str:
    """The balance messaging reported, as ClickSend shows it (6 decimal places). Anything that is
    not a finite decimal means we do not know the balance: never show an invented number."""
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise BalanceUnavailable("the balance is unavailable right now") from None
    if not raw or not value.is_finite():
        raise BalanceUnavailable("the balance is unavailable right now")
    return f"{value:.6f}"


# ---------------------------------------------------------------------------------------------------
# Sub-accounts


DEFAULT_PAGE_LIMIT: Final = 15
MIN_PAGE_LIMIT: Final = 15
MAX_PAGE_LIMIT: Final = 100
MAX_NOTES = 1000


@dataclass(frozen=True)
class PageWindow:
    page: int
    limit: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.limit

    def last_page(self, total: int) -> int:
        return max(1, -(-total // self.limit))


def page_window(page: int, limit: int) -> PageWindow:
    """ClickSend paging: page defaults to 1, limit to 15; limit must be 15-100."""
    if page < 0:
        raise PagingInvalid("page must be 1 or more.")
    if limit < 0 or (limit and not MIN_PAGE_LIMIT <= limit <= MAX_PAGE_LIMIT):
        raise PagingInvalid(f"limit must be between {MIN_PAGE_LIMIT} and {MAX_PAGE_LIMIT}.")
    return PageWindow(page=page or 1, limit=limit or DEFAULT_PAGE_LIMIT)


def check_flag(name: str, value: int) -> bool:
    """ClickSend flags are the integers 0 and 1."""
    if value not in (0, 1):
        raise FlagInvalid(f"{name} must be 0 or 1", field=name)
    return bool(value)


def check_notes(raw: str | None) -> str | None:
    if raw is None:
        return None
    if len(raw) > MAX_NOTES:
        raise NameInvalid(f"notes must be at most {MAX_NOTES} characters", field="notes")
    return raw


@dataclass(frozen=True)
class NewSubaccount:
    """A validated request to create a sub-account (password already checked against the policy)."""

    account_id: int
    api_username: str
    email: str
    phone_number: str
    first_name: str
    last_name: str
    notes: str | None
    flags: AccessFlags


@dataclass(frozen=True)
class SubaccountChanges:
    """Validated changes; None means "keep". `password_hash` is set when a new password was given."""

    email: str | None = None
    phone_number: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    notes: str | None = None
    set_notes: bool = False
    flags: AccessFlags | None = None
    password_hash: str | None = None

    def changed_fields(self) -> list[str]:
        out = [f for f in ("email", "phone_number", "first_name", "last_name") if getattr(self, f) is not None]
        if self.set_notes:
            out.append("notes")
        if self.flags is not None:
            out.append("flags")
        if self.password_hash is not None:
            out.append("password")
        return out


RESTRICTION_FLAGS: Final[tuple[str, ...]] = ("sms_deidentify_message", "hide_pricing")
"""Flags that take something away from a user (masked bodies and numbers, no prices). Every other flag grants."""
GRANT_FLAGS: Final[tuple[str, ...]] = tuple(n for n in FLAG_NAMES if n not in RESTRICTION_FLAGS)


def _granted(flags: AccessFlags, is_main: bool) -> frozenset[str]:
    return frozenset(GRANT_FLAGS if is_main else (n for n in GRANT_FLAGS if getattr(flags, n)))


def _restricted(flags: AccessFlags) -> frozenset[str]:
    return frozenset(n for n in RESTRICTION_FLAGS if getattr(flags, n))


def delegate(actor: User, target: User | None, requested: Mapping[str, bool] | None = None) -> AccessFlags:
    """The delegation rule, for every path that creates, changes, re-keys, resets or deletes a user: the
    target's flags after the change, or a PermissionDenied saying why the actor may not do it.

    `target` None creates a user with the `requested` flags; otherwise `requested` holds the flags a change
    sets (None or empty: the flags stay, as for a delete, a new API key, a password or a contact change).

    - The main user is changed only by itself, and its access never through this path.
    - Restrictions are inherited: a user created by an actor under a restriction is under it too, whatever
      was requested; an actor under a restriction never lifts it, from anyone.
    - Nobody changes their own access flags or restrictions through this path.
    - The target's resulting grants (the flags, and the permissions `derive_permissions` gives them, as if
      enabled) must be a subset of the actor's own, and the target must stay under every restriction the
      actor is under: an actor acts only on users who can do no more than itself.
    """
    wanted = dict(requested or {})
    unknown = sorted(set(wanted) - set(FLAG_NAMES))
    if unknown:
        raise FlagInvalid(f"unknown flag {unknown[0]}", field=unknown[0])
    is_main = target is not None and target.is_main
    if target is not None and target.is_main and not actor.is_main:
        raise MainUserProtected("only the main user may change the main user")
    if is_main and wanted:
        raise MainUserProtected("the main user's access flags cannot be changed")
    actor_restrictions = _restricted(actor.flags)
    if target is None:
        wanted.update({name: True for name in actor_restrictions})  # inherited, whatever the request says
        base = AccessFlags()
    else:
        base = target.flags
        for name in sorted(actor_restrictions):
            if name in wanted and not wanted[name] and getattr(base, name):
                raise RestrictionNotLiftable(
                    f"you cannot turn {name} off: you are under it yourself; ask a user who is not", field=name
                )
    resulting = AccessFlags(**{name: wanted.get(name, getattr(base, name)) for name in FLAG_NAMES})
    if target is not None and target.id == actor.id and resulting != target.flags:
        raise OwnAccessUnchangeable("you cannot change your own access flags; ask the account's main user")
    beyond = sorted(
        (_granted(resulting, is_main) - _granted(actor.flags, actor.is_main))
        | (derive_permissions(resulting, is_main=is_main, enabled=True) - actor.permissions)
    )
    if beyond:
        who = "the new user" if target is None else f"user {target.api_username}"
        raise DelegationExceedsActor(
            f"{who} would hold {', '.join(beyond)}, which you do not hold: only a user who holds them may do this"
        )
    unrestricted = sorted(actor_restrictions - _restricted(resulting))
    if target is not None and unrestricted:  # a new user inherited them above
        raise DelegationExceedsActor(
            f"user {target.api_username} is not under {', '.join(unrestricted)}, which you are under:"
            " only a user who is not may do this"
        )
    return resulting


# ---------------------------------------------------------------------------------------------------
# Who logs in: a customer user or a staff member


USER: Final = "user"
STAFF: Final = "staff"


@dataclass(frozen=True)
class Subject:
    """Someone who can hold a session: a customer user or a staff member."""

    kind: str  # USER | STAFF
    id: int
    account_id: int  # a staff member's is the platform account
    username: str
    email: str
    password_hash: str | None
    enabled: bool
    permissions: frozenset[str]
    test_mode: bool = False
    role: str = ""  # staff only
    sms_deidentify_message: bool = False  # users only: bodies and numbers masked for them

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.id}"

    @property
    def is_staff(self) -> bool:
        return self.kind == STAFF


@dataclass(frozen=True)
class StaffMember:
    id: int
    username: str
    email: str
    display_name: str
    role: str
    active: bool
    create_time: datetime

    @property
    def permissions(self) -> frozenset[str]:
        return ROLE_PERMISSIONS[self.role] if self.active else frozenset()


def check_reason(raw: str) -> str:
    """Staff state why they touch a customer's data (a ticket id, a sentence); the customer sees it."""
    value = " ".join(raw.split())
    if not value:
        raise ReasonRequired("give a reason (it is shown to the customer in their audit feed)")
    if len(value) > 200 or not value.isprintable():
        raise ReasonRequired("the reason must be at most 200 printable characters")
    return value


# ---------------------------------------------------------------------------------------------------
# Sessions, throttling and step-up


# RFC 8176 authentication method references.
AMR_PASSWORD: Final = "pwd"  # noqa: S105 - a method name
AMR_OTP: Final = "otp"
AMR_RECOVERY: Final = "recovery"


@dataclass(frozen=True)
class SessionRecord:
    id: str
    subject_kind: str
    subject_id: int
    account_id: int
    amr: tuple[str, ...]
    mfa_time: datetime | None
    client_address: str
    user_agent: str
    create_time: datetime
    expire_time: datetime
    last_seen_time: datetime


@dataclass(frozen=True)
class ThrottlePolicy:
    """Per-user lockout and per-client-address throttling of failed logins.

    A user's counter is incremented *before* the password is checked (and reset by a full success), so
    concurrent guesses cannot outrun it: with `max_failures` = 10, at most 10 passwords are ever checked
    per window however many requests arrive at once. From the `max_failures`-th failure the user is
    locked for `lock_seconds`; attempts while locked still count and get the same answer as a wrong
    password. A client address with `address_max_failures` failures in its window gets 429 for the rest
    of the window (that reveals nothing about any user), and so does its network: the IPv6 /64 (one
    subscriber's, who can rotate addresses inside it at will) at `ipv6_network_max_failures`, the IPv4 /24
    (often many people behind NAT, so looser) at `ipv4_network_max_failures`."""

    max_failures: int = 10
    window_seconds: int = 900
    lock_seconds: int = 900
    address_max_failures: int = 100
    address_window_seconds: int = 900
    ipv6_network_max_failures: int = 100
    ipv4_network_max_failures: int = 300


def throttle_counters(address: str, policy: ThrottlePolicy) -> list[tuple[str, str, int]]:
    """The (scope, key, max_failures) counters a login attempt from `address` counts against: the exact
    address, and its network (`svckit.netaddr`: the IPv6 /64 or IPv4 /24; an IPv4-mapped IPv6 address is its
    IPv4 address). An address that is not an IP (a test's, a Unix socket's) is counted as given."""
    if not address:
        return []
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return [("address", address, policy.address_max_failures)]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    limit = policy.ipv6_network_max_failures if ip.version == 6 else policy.ipv4_network_max_failures
    return [("address", str(ip), policy.address_max_failures), ("network", client_network(str(ip)), limit)]


@dataclass(frozen=True)
class Attempt:
    """The counter after this attempt was counted."""

    failures: int
    locked: bool
