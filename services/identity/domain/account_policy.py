"""An account's sign-in policy (issue 15): what its main user may set and what it means for a login and for each
use of a session. Pure.

- require_second_factor: a user with a confirmed second factor must give it at login (as always); a user
  without one still logs in with the password, but the session holds only ENROLMENT_PERMISSIONS (one's own
  factors, password and sessions, and reading the account and this policy) until a second factor is verified
  on it (a step-up after enrolling, or the next login with the code).
- allowed_networks: a password login, and every use of a session, must come from inside one of them (empty:
  anywhere). When the list is set, sessions logged in from outside it are revoked. The list must hold the
  address of the main user setting it (no lock-out by mistake).
- session_lifetime_seconds: a session of the account ends this long after its login at most (0: the platform's
  own lifetime and idle limits alone); a shorter value cuts existing sessions too.
API keys are machine credentials: none of this applies to them (they have their own allow-lists and scopes)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from svckit.errors import FailedPrecondition, InvalidArgument, PermissionDenied

MAX_NETWORKS: Final = 20
MAX_SESSION_LIFETIME_SECONDS: Final = 30 * 24 * 3600  # as the proto's range option
DEFAULT_MIN_SESSION_LIFETIME_SECONDS: Final = 300
# What a session may still do while its user must enrol a second factor first.
ENROLMENT_PERMISSIONS: Final = frozenset({"self.manage", "account.read"})
# Sessions revoked by a policy change carry this reason.
REVOKE_REASON: Final = "account_policy"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class NetworkInvalid(InvalidArgument):
    reason = "NETWORK_INVALID"


class TooManyNetworks(InvalidArgument):
    reason = "TOO_MANY_NETWORKS"


class SessionLifetimeInvalid(InvalidArgument):
    reason = "SESSION_LIFETIME_INVALID"


class CallerOutsideNetworks(FailedPrecondition):
    """The main user would lock themselves out: the new list leaves out the address they call from."""

    reason = "CALLER_OUTSIDE_NETWORKS"


class NetworkNotAllowed(PermissionDenied):
    """A login or a session's use from outside the account's allowed networks."""

    reason = "NETWORK_NOT_ALLOWED"


@dataclass(frozen=True)
class AccountPolicy:
    require_second_factor: bool = False
    allowed_networks: tuple[Network, ...] = ()
    session_lifetime_seconds: int = 0
    update_time: datetime | None = None

    @property
    def network_texts(self) -> list[str]:
        return [str(n) for n in self.allowed_networks]

    def allows_address(self, address: str) -> bool:
        """Whether `address` may sign in / use a session: any address when no network is listed; otherwise only
        an IP inside one of them (an IPv4-mapped IPv6 address counts as its IPv4 address). An address that is
        not an IP (or none) is outside every list."""
        if not self.allowed_networks:
            return True
        ip = parse_address(address)
        return ip is not None and any(ip.version == n.version and ip in n for n in self.allowed_networks)

    def session_expiry(self, create_time: datetime, platform_expiry: datetime) -> datetime:
        """When a session created at `create_time` ends: the platform's expiry, cut by the account's lifetime."""
        if not self.session_lifetime_seconds:
            return platform_expiry
        return min(platform_expiry, create_time + timedelta(seconds=self.session_lifetime_seconds))

    def outlived(self, create_time: datetime, now: datetime) -> bool:
        """Whether a session created at `create_time` is past the account's lifetime at `now`."""
        return bool(self.session_lifetime_seconds) and self.session_expiry(create_time, now + timedelta(1)) <= now

    def restricts(self, has_verified_second_factor: bool) -> bool:
        """Whether a session without a second factor verified on it holds only ENROLMENT_PERMISSIONS."""
        return self.require_second_factor and not has_verified_second_factor


@dataclass(frozen=True)
class PolicyChange:
    """The audit details of a change: which fields moved, as facts (no personal data: networks are network
    facts, the rest flags and numbers)."""

    details: dict[str, str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.details.get("changed"))


def parse_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_networks(texts: list[str]) -> tuple[Network, ...]:
    """The allowed networks as given: IPv4/IPv6 CIDRs or single addresses, at most MAX_NETWORKS, with no host
    bits set after the prefix ("10.0.0.1/8" is refused: it is probably not what was meant); duplicates go."""
    if len(texts) > MAX_NETWORKS:
        raise TooManyNetworks(f"at most {MAX_NETWORKS} allowed networks", max=str(MAX_NETWORKS))
    out: list[Network] = []
    for i, text in enumerate(texts):
        try:
            net = ipaddress.ip_network(text.strip(), strict=True)
        except ValueError:
            raise NetworkInvalid(
                f"allowed_networks[{i}] is not an IPv4 or IPv6 network (CIDR, no host bits after the prefix)",
                field=f"allowed_networks[{i}]",
            ) from None
        if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None:
            raise NetworkInvalid(f"allowed_networks[{i}]: give an IPv4-mapped network as IPv4",
                                 field=f"allowed_networks[{i}]")
        if net not in out:
            out.append(net)
    return tuple(out)


def new_policy(
    require_second_factor: bool, networks: list[str], session_lifetime_seconds: int, *,
    min_session_lifetime_seconds: int = DEFAULT_MIN_SESSION_LIFETIME_SECONDS,
) -> AccountPolicy:
    """A policy from what the main user sent, validated."""
    lifetime = session_lifetime_seconds
    if lifetime and not min_session_lifetime_seconds <= lifetime <= MAX_SESSION_LIFETIME_SECONDS:
        raise SessionLifetimeInvalid(
            f"session_lifetime_seconds must be 0 (the platform's limits) or between {min_session_lifetime_seconds}"
            f" and {MAX_SESSION_LIFETIME_SECONDS}",
            min=str(min_session_lifetime_seconds), max=str(MAX_SESSION_LIFETIME_SECONDS),
        )
    return AccountPolicy(bool(require_second_factor), parse_networks(networks), lifetime)


def check_not_locking_out(policy: AccountPolicy, caller_address: str) -> None:
    """The main user setting the policy must stay able to sign in from where they are now."""
    if not policy.allows_address(caller_address):
        raise CallerOutsideNetworks(
            "allowed_networks must include the address you are calling from, or you could not sign in again"
        )


def sessions_to_end(policy: AccountPolicy, sessions: list[tuple[str, str, datetime]], now: datetime) -> list[str]:
    """Ids of the live (session id, login address, login time) sessions the policy ends at once: logged in from
    outside its networks, or older than its lifetime."""
    return [
        sid for sid, address, created in sessions
        if not policy.allows_address(address) or policy.outlived(created, now)
    ]


def describe_change(old: AccountPolicy, new: AccountPolicy) -> PolicyChange:
    """What changed, for the audit record."""
    changed: list[str] = []
    details: dict[str, str] = {}
    if old.require_second_factor != new.require_second_factor:
        changed.append("require_second_factor")
    if set(old.allowed_networks) != set(new.allowed_networks):
        changed.append("allowed_networks")
    if old.session_lifetime_seconds != new.session_lifetime_seconds:
        changed.append("session_lifetime_seconds")
    details["changed"] = ",".join(changed)
    details["require_second_factor"] = str(new.require_second_factor).lower()
    details["allowed_networks"] = ",".join(new.network_texts)
    details["session_lifetime_seconds"] = str(new.session_lifetime_seconds)
    if "allowed_networks" in changed:
        details["previous_allowed_networks"] = ",".join(old.network_texts)
    if "session_lifetime_seconds" in changed:
        details["previous_session_lifetime_seconds"] = str(old.session_lifetime_seconds)
    return PolicyChange(details)
