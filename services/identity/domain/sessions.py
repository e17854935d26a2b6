"""Who logs in (a customer user or a staff member), sessions and their settings, second-factor records,
and login throttling. Pure."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from svckit.netaddr import client_network

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
    allowed_senders: tuple[str, ...] = ()  # users only: the sender ids they may send as (empty: any)

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.id}"

    @property
    def is_staff(self) -> bool:
        return self.kind == STAFF


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
    # Answer-only (not stored): the account's policy lets this session do nothing but enrol a second factor.
    enrolment_only: bool = False


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


@dataclass(frozen=True)
class SessionSettings:
    lifetime_seconds: int = 12 * 3600
    staff_lifetime_seconds: int = 8 * 3600
    idle_seconds: int = 3600
    step_up_max_age_seconds: int = 300
    totp_issuer: str = "SendSafe"
    audit_strict_timeout: float = 5.0


@dataclass(frozen=True)
class TotpFactor:
    account_id: int
    secret_blob: bytes
    confirmed: bool
    last_step: int


@dataclass(frozen=True)
class SecondFactorUse:
    """What a login or step-up consumes, atomically with what it grants: a TOTP step (accepted only by moving
    `last_step` forward; `confirm` also confirms a pending factor) or one unused recovery code."""

    totp_step: int | None = None
    confirm: bool = False
    recovery_hash: bytes | None = None
