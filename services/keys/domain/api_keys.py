"""API-key rules: who may create which key (scopes, lifetimes, no stronger than the calling key), rolling,
lineages, verification outcomes. Pure: no I/O."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.keys.domain.api_key_format import ApiKeyParts, hmac_matches, valid_key_id
from services.keys.domain.errors import (
    AddressNotAllowed,
    ApiKeyAlreadyRolled,
    ApiKeyExpired,
    ApiKeyInactive,
    ApiKeyRevoked,
    ExceedsCallingKey,
    ExpiryInvalid,
    InvalidCredentials,
    RequestInvalid,
    ScopeInvalid,
    ScopeNotHeld,
)
from services.keys.domain.restrictions import (
    NO_LIMITS,
    SendLimits,
    address_allowed,
    check_cidrs,
    cidrs_within,
    limit_within,
)
from svckit.errors import PermissionDenied, Unauthenticated
from svckit.senders import senders_within

MAX_NAME_LEN = 100
ALL_SCOPES = "*"
DEFAULT_SCOPES = (ALL_SCOPES,)  # keys issued internally (sub-account keys): every permission the user has

MAX_SCOPES = 100
MAX_ROLL_OVERLAP_SECONDS = 24 * 3600


@dataclass(frozen=True)
class Caller:
    """The authenticated end user behind an external call (from the gateway's principal)."""

    account_id: int
    user_id: int
    permissions: frozenset[str]
    test_mode: bool = False
    api_key_id: str = ""  # set when the caller authenticated with an API key


@dataclass(frozen=True)
class KeyRules:
    """Service-wide rules for API keys (from the settings and the protos)."""

    declared_permissions: frozenset[str]
    max_lifetime: timedelta = timedelta(days=366)
    default_lifetime: timedelta = timedelta(days=90)


@dataclass(frozen=True)
class ApiKeyRecord:
    """What is stored about a key: never the secret, only its keyed hash."""

    key_id: str
    account_id: int
    user_id: int
    name: str
    test_mode: bool
    scopes: tuple[str, ...]
    secret_hmac: bytes
    pepper_id: str
    create_time: datetime
    expire_time: datetime | None = None
    revoke_time: datetime | None = None
    last_used_time: datetime | None = None
    last_used_address: str = ""
    allowed_cidrs: tuple[str, ...] = ()
    send_limits: SendLimits = NO_LIMITS
    rolled_from: str = ""
    rolled_to: str = ""
    created_by: str = ""
    limits_root: str = ""  # the first key of its send-limits lineage; "" = itself
    # Stored form only: the numbers of send_limits.senders, sealed under the account's key (the service opens it).
    sealed_numbers: bytes | None = None

    def __repr__(self) -> str:  # the keyed hash is not a secret, but it has no business in logs either
        return f"ApiKeyRecord(key_id={self.key_id!r}, account_id={self.account_id}, user_id={self.user_id})"

    @property
    def limits_bucket(self) -> str:
        """The key whose send-limit counters this key draws from."""
        return self.limits_root or self.key_id

    def revoked(self, now: datetime) -> bool:
        return self.revoke_time is not None and self.revoke_time <= now

    def expired(self, now: datetime) -> bool:
        return self.expire_time is not None and self.expire_time <= now

    def active(self, now: datetime) -> bool:
        return not self.revoked(now) and not self.expired(now)

    def state(self, now: datetime) -> str:
        return "revoked" if self.revoked(now) else "expired" if self.expired(now) else "active"


@dataclass(frozen=True)
class VerifiedKey:
    key_id: str
    account_id: int
    user_id: int
    scopes: tuple[str, ...]
    send_limits: SendLimits = NO_LIMITS
    expire_time: datetime | None = None
    valid_for_seconds: float = 0.0
    limits_bucket: str = ""  # the key whose send-limit counters it shares (its lineage root)


@dataclass(frozen=True)
class KeySpec:
    """The settings of a key about to be created (validated)."""

    name: str
    scopes: tuple[str, ...]
    expire_time: datetime
    allowed_cidrs: tuple[str, ...] = ()
    send_limits: SendLimits = NO_LIMITS


def check_name(name: str) -> str:
    name = name.strip()
    if len(name) > MAX_NAME_LEN or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise RequestInvalid(f"name must be at most {MAX_NAME_LEN} printable characters")
    return name


def check_issue_request(account_id: int, user_id: int, name: str) -> str:
    """The cleaned key name, or RequestInvalid."""
    if account_id <= 0:
        raise RequestInvalid("account_id must be positive")
    if user_id <= 0:
        raise RequestInvalid("user_id must be positive")
    return check_name(name)


def check_scopes(
    scopes: Iterable[str], caller: Caller, parent: ApiKeyRecord | None, rules: KeyRules
) -> tuple[str, ...]:
    """Sorted unique scopes that the protos declare and the caller holds, or ["*"] for an unrestricted caller."""
    wanted = sorted({s.strip() for s in scopes})
    if not wanted:
        raise ScopeInvalid('scopes are required: permission names, or ["*"] for all of yours')
    if len(wanted) > MAX_SCOPES:
        raise ScopeInvalid(f"at most {MAX_SCOPES} scopes")
    if ALL_SCOPES in wanted:
        if len(wanted) > 1:
            raise ScopeInvalid('"*" stands alone: it already means every permission you hold')
        if parent is not None and ALL_SCOPES not in parent.scopes:
            raise ExceedsCallingKey('a key made with a restricted API key cannot have the scope "*"')
        return (ALL_SCOPES,)
    unknown = [s for s in wanted if s not in rules.declared_permissions]
    if unknown:
        raise ScopeInvalid(f"not permission names: {', '.join(repr(s[:40]) for s in unknown[:5])}")
    missing = [s for s in wanted if s not in caller.permissions]
    if missing:
        raise ScopeNotHeld(f"you do not hold: {', '.join(missing[:10])}")
    return tuple(wanted)


def check_expiry(requested: datetime | None, now: datetime, default: timedelta, rules: KeyRules) -> datetime:
    latest = now + rules.max_lifetime
    if requested is None:
        return now + min(default, rules.max_lifetime)
    if requested <= now:
        raise ExpiryInvalid("expire_time must be in the future")
    if requested > latest:
        days = rules.max_lifetime.total_seconds() / 86400
        raise ExpiryInvalid(f"expire_time must be within the maximum lifetime of {days:g} days")
    return requested


def check_within_calling_key(spec: KeySpec, parent: ApiKeyRecord | None) -> None:
    """A key minted through an API key never outlives it and never loosens its allow-list or limits."""
    if parent is None:
        return
    if parent.expire_time is not None and spec.expire_time > parent.expire_time:
        raise ExceedsCallingKey("a key made with an API key cannot outlive it (expire_time)")
    if not cidrs_within(spec.allowed_cidrs, parent.allowed_cidrs):
        raise ExceedsCallingKey("allowed_cidrs must lie within those of the API key you call with")
    p, c = parent.send_limits, spec.send_limits
    if not (limit_within(c.per_minute, p.per_minute) and limit_within(c.per_day, p.per_day)):
        raise ExceedsCallingKey("send limits must not be looser than those of the API key you call with")
    if p.countries and (not c.countries or not set(c.countries) <= set(p.countries)):
        raise ExceedsCallingKey("allowed_countries must be within those of the API key you call with")
    if not senders_within(c.senders, p.senders):
        raise ExceedsCallingKey("allowed_senders must be within those of the API key you call with")


def check_new_key(
    caller: Caller,
    parent: ApiKeyRecord | None,
    *,
    name: str,
    scopes: Iterable[str],
    expire_time: datetime | None,
    allowed_cidrs: Iterable[str],
    send_limits: SendLimits,
    rules: KeyRules,
    now: datetime,
    default_lifetime: timedelta | None = None,
) -> KeySpec:
    expires = check_expiry(expire_time, now, default_lifetime or rules.default_lifetime, rules)
    if expire_time is None and parent is not None and parent.expire_time is not None:
        expires = min(expires, parent.expire_time)  # by default, as long as allowed; asking for more is an error
    spec = KeySpec(
        name=check_name(name),
        scopes=check_scopes(scopes, caller, parent, rules),
        expire_time=expires,
        allowed_cidrs=check_cidrs(allowed_cidrs),
        send_limits=inherited_limits(send_limits, parent),
    )
    check_within_calling_key(spec, parent)
    return spec


def inherited_limits(asked: SendLimits, parent: ApiKeyRecord | None) -> SendLimits:
    """A key minted with a limited API key takes each limit it leaves unset (0 / no countries) from that key,
    so by default it is exactly as limited; a looser value it asks for is refused (check_within_calling_key)."""
    if parent is None or parent.send_limits.unlimited:
        return asked
    p = parent.send_limits
    return SendLimits(asked.per_minute or p.per_minute, asked.per_day or p.per_day, asked.countries or p.countries,
                      asked.senders or p.senders)


def limits_root(parent: ApiKeyRecord | None, rolled: ApiKeyRecord | None = None) -> str:
    """The lineage whose send-limit counters a new key shares ("" = a lineage of its own).

    A rolled successor stays in its predecessor's lineage; a key minted with an API key that has a per-minute
    or per-day limit joins that key's lineage (its own limits are no looser, so the shared counters bind both).
    Otherwise, e.g. a key created in a session, or with an unlimited key, starts afresh."""
    if rolled is not None:
        return rolled.limits_bucket
    if parent is not None and (parent.send_limits.per_minute or parent.send_limits.per_day):
        return parent.limits_bucket
    return ""


def check_roll(old: ApiKeyRecord, overlap_seconds: int, now: datetime) -> datetime:
    """The old key's new expiry: `overlap_seconds` from now, never later than it already expires."""
    if not 0 <= overlap_seconds <= MAX_ROLL_OVERLAP_SECONDS:
        raise RequestInvalid(f"overlap_seconds must be between 0 and {MAX_ROLL_OVERLAP_SECONDS}")
    if old.rolled_to:
        raise ApiKeyAlreadyRolled(f"the key was already rolled to {old.rolled_to}")
    if not old.active(now):
        raise ApiKeyInactive(f"the key is {old.state(now)}: create a new key instead")
    end = now + timedelta(seconds=overlap_seconds)
    return end if old.expire_time is None or end < old.expire_time else old.expire_time


def rolled_lifetime(old: ApiKeyRecord, rules: KeyRules) -> timedelta:
    """The lifetime a rolled key gets by default: the old key's, within the maximum."""
    if old.expire_time is None:
        return rules.max_lifetime
    return min(max(old.expire_time - old.create_time, timedelta(seconds=1)), rules.max_lifetime)


MAX_LINEAGE_HOPS = 50  # rolls followed from one key to the key that stands for it


def check_key_check_request(account_id: int, user_id: int, key_id: str) -> None:
    """RequestInvalid unless a key of one user of one account is named."""
    if account_id <= 0:
        raise RequestInvalid("account_id must be positive")
    if user_id <= 0:
        raise RequestInvalid("user_id must be positive")
    if not valid_key_id(key_id):
        raise RequestInvalid("key_id is not a key id")


def key_in_effect(
    chain: Sequence[ApiKeyRecord], account_id: int, user_id: int, now: datetime
) -> ApiKeyRecord | None:
    """The key that still stands for the first of `chain` (a key, then the keys it was rolled to, in order):
    the first active one, reached only through keys that expired after being rolled (a roll renews the same
    credential). A revoked key ends it, rolled or not (revoking says the credential is dead), as does an
    expired key that was never rolled, or a key of another user or account."""
    for record in chain:
        if record.account_id != account_id or record.user_id != user_id or record.revoked(now):
            return None
        if record.active(now):
            return record
        if not record.rolled_to:
            return None
    return None


_REVOKE_REASON_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")


def check_revoke_user_request(account_id: int, user_id: int | None, keep_key_id: str, reason: str) -> str:
    """The audit reason for revoking a user's keys (None: every user's) ("unspecified" when none is given), or
    RequestInvalid."""
    if account_id <= 0:
        raise RequestInvalid("account_id must be positive")
    if user_id is not None and user_id <= 0:
        raise RequestInvalid("user_id must be positive")
    if keep_key_id and not valid_key_id(keep_key_id):
        raise RequestInvalid("keep_key_id is not a key id")
    if reason and not _REVOKE_REASON_RE.fullmatch(reason):
        raise RequestInvalid("reason must be lower_snake_case, at most 40 characters")
    return reason or "unspecified"


# Failure (for the audit log) -> what the caller is told. Before the secret is proven, one answer for all.
VERIFY_ERRORS: Mapping[str, Callable[[], Unauthenticated | PermissionDenied]] = {
    "malformed": InvalidCredentials,
    "unknown_key": InvalidCredentials,
    "secret_mismatch": InvalidCredentials,
    "mode_mismatch": InvalidCredentials,
    "pepper_unknown": InvalidCredentials,
    "revoked": ApiKeyRevoked,
    "expired": ApiKeyExpired,
    "address_not_allowed": AddressNotAllowed,
}


def verify_failure(
    record: ApiKeyRecord | None, parts: ApiKeyParts, pepper: bytes, now: datetime, client_address: str = ""
) -> str:
    """Why `parts` does not verify against `record` ("" when it does): a key of VERIFY_ERRORS."""
    if record is None:
        # Spend the same HMAC as a real comparison so a missing key id is not faster than a wrong secret.
        hmac_matches(pepper, parts, bytes(32))
        return "unknown_key"
    if not hmac_matches(pepper, parts, record.secret_hmac):
        return "secret_mismatch"
    if record.test_mode != parts.test_mode:  # cannot happen with a matching HMAC; kept as a second lock
        return "mode_mismatch"
    if record.revoked(now):
        return "revoked"
    if record.expired(now):
        return "expired"
    if not address_allowed(record.allowed_cidrs, client_address):
        return "address_not_allowed"
    return ""


def valid_for(record: ApiKeyRecord, now: datetime) -> float:
    """Seconds until the key stops working (0.0 when it never expires)."""
    if record.expire_time is None:
        return 0.0
    return max((record.expire_time - now).total_seconds(), 0.0)
