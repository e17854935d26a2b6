"""Self-service sign-up: what a valid sign-up is, how it is throttled, and the emailed verification code. Pure.

A sign-up opens an account in test mode; entering the code emailed to the main user's address takes it out. The
code is 8 random digits, stored only as a hash (argon2id, as passwords), valid `code_ttl_seconds`, good for
`max_attempts` wrong entries, and replaced by a resend at most `max_codes` times per account, no sooner than
`resend_interval_seconds` after the last one. Sign-ups and code entries count per client address and network
(`svckit.netaddr` via `domain.sessions.throttle_counters`, the login throttle's counters) in scopes of their own."""

from __future__ import annotations

import secrets
import zoneinfo
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Final

from services.identity.domain.sessions import ThrottlePolicy, throttle_counters
from svckit.errors import InvalidArgument, ResourceExhausted

SIGNUP: Final = "signup"  # the origin of a verification: the person opened the account
STAFF_OPENED: Final = "staff"  # staff opened it for the customer (no password until the code is entered)
CODE_DIGITS: Final = 8


class SignupThrottled(ResourceExhausted):
    reason = "SIGNUP_THROTTLED"


class SignupCodeInvalid(InvalidArgument):
    """Wrong, expired, used up or already verified, or no such pending sign-up: one answer for all."""

    reason = "SIGNUP_CODE_INVALID"


class TimezoneInvalid(InvalidArgument):
    reason = "TIMEZONE_INVALID"


class PasswordRequired(InvalidArgument):
    """An account staff opened has no password: entering its code must set one."""

    reason = "PASSWORD_REQUIRED"


@dataclass(frozen=True)
class SignupPolicy:
    window_seconds: int = 3600
    address_max: int = 20  # sign-ups per client address per window
    ipv4_network_max: int = 60  # per IPv4 /24 (NAT: looser)
    ipv6_network_max: int = 20  # per IPv6 /64 (one subscriber's)
    code_attempts_max: int = 60  # code entries and resends per client address and network per window
    code_ttl_seconds: int = 1800
    max_attempts: int = 5  # wrong entries of one code
    max_codes: int = 5  # codes sent per account (the first included)
    resend_interval_seconds: int = 60

    def counters(self, address: str, scope: str) -> list[tuple[str, str, int]]:
        """(scope, key, limit) for a sign-up (`scope` "signup") or a code entry or resend ("signup_code") from
        `address`: its exact address and its network, as the login throttle counts them."""
        if scope == SIGNUP:
            limits = ThrottlePolicy(address_max_failures=self.address_max,
                                    ipv4_network_max_failures=self.ipv4_network_max,
                                    ipv6_network_max_failures=self.ipv6_network_max)
        else:
            n = self.code_attempts_max
            limits = ThrottlePolicy(address_max_failures=n, ipv4_network_max_failures=n, ipv6_network_max_failures=n)
        return [(f"{scope}_{kind}", key, limit) for kind, key, limit in throttle_counters(address, limits)]


@dataclass(frozen=True)
class Verification:
    """A sign-up's verification state, with the main user it belongs to."""

    account_id: int
    user_id: int
    username: str
    origin: str
    has_password: bool
    code_hash: str | None
    code_expire_time: datetime | None
    attempts: int
    codes_sent: int
    last_send_time: datetime | None
    verify_time: datetime | None

    def code_usable(self, now: datetime, policy: SignupPolicy) -> bool:
        """Whether a code entered now can still be checked against the stored hash."""
        return (
            self.verify_time is None and self.code_hash is not None and self.code_expire_time is not None
            and now < self.code_expire_time and self.attempts < policy.max_attempts
        )

    def may_resend(self, now: datetime, policy: SignupPolicy) -> bool:
        if self.verify_time is not None or self.codes_sent >= policy.max_codes:
            return False
        return self.last_send_time is None or now - self.last_send_time >= timedelta(
            seconds=policy.resend_interval_seconds)


def new_code() -> str:
    return f"{secrets.randbelow(10 ** CODE_DIGITS):0{CODE_DIGITS}d}"


def check_code(raw: str) -> str:
    """The code's shape (spaces and dashes people copy are dropped); nothing is counted for input that cannot
    match."""
    code = raw.replace(" ", "").replace("-", "")
    if len(code) != CODE_DIGITS or not code.isascii() or not code.isdigit():
        raise SignupCodeInvalid(f"the code is the {CODE_DIGITS} digits of the sign-up email")
    return code


@cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def check_timezone(raw: str, default: str) -> str:
    value = raw.strip() or default
    if value not in _zones():
        raise TimezoneInvalid("timezone must be an IANA time zone name such as Australia/Melbourne")
    return value


def split_name(name: str) -> tuple[str, str]:
    """The person's name as the main user's first and last name: the last word is the last name."""
    words = name.split()
    if len(words) < 2:
        return " ".join(words), ""
    return " ".join(words[:-1]), words[-1]


def verification_email(username: str, code: str, ttl_seconds: int, *, staff_opened: bool) -> tuple[str, str]:
    """Subject and body of the code email (a fixed template: the username and the code are the only values)."""
    minutes = max(1, ttl_seconds // 60)
    if staff_opened:
        intro = (f"SendSafe staff opened an account for you with the username {username}. To choose your password "
                 "and start sending, enter this code with your new password at POST /v1/signup/verify:")
    else:
        intro = (f"Welcome to SendSafe. Your account {username} is in test mode (sends are free and not delivered) "
                 "until you enter this code at POST /v1/signup/verify:")
    body = (f"{intro}\n\n    {code}\n\nThe code works for {minutes} minutes. If you did not ask for this account, "
            "ignore this email: nothing is sent from an account whose email is not verified.\n")
    return "SendSafe sign-up code", body
