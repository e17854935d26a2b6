"""Keys rules: API keys (format, hashing, scopes, lifetimes, allow-lists, send limits, rolling), the root-key
provider, account key rings (versions, retirement, destruction), wrapping and receipts. Pure: no I/O.

Key hierarchy::

    root key (RootKeyProvider: local file/env now, a KMS or HSM later; named by a key id)
      └─ wraps  per-account key-encryption keys (KEK), versioned: AES-256-GCM, AAD = account id + version
           ├─ wrap  data keys (32 random bytes) handed to callers (svckit.envelope encrypts records with them)
           └─ (through an HKDF subkey) encrypt small secrets directly (Encrypt/Decrypt)

Self-describing blobs (all integers big-endian); the header is authenticated as associated data::

    wrapped data key, format 1 (legacy, read only): 1 | version (4) | nonce (12) | sealed key + tag (48)
    wrapped data key, format 2:                     2 | version (4) | account (8) | nonce (12) | sealed (48)
    ciphertext (Encrypt), format 3:                 3 | version (4) | account (8) | nonce (12) | sealed (n + 16)

The optional encryption context (a string map) is bound as associated data in a canonical encoding, so
decryption must present exactly the same map. Carrying the account in the header gives a clear
KEY_ACCOUNT_MISMATCH instead of a bare authentication failure when a blob is sent for the wrong account.

Customer API keys look like ``ss_live_<key id: 12>_<secret: 22><checksum: 6>`` (base62; ``ss_test_`` for test
mode). The secret carries 22 * log2(62) ≈ 131 bits; the checksum is the CRC32 of everything before it, so a
leaked key can be recognised offline and garbage is rejected without a database lookup. Only an
HMAC-SHA256 of the key (pepper derived from the root key) is stored.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import struct
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Generic, Protocol, TypeVar

import phonenumbers
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from svckit.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Unauthenticated

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16

# -- errors -----------------------------------------------------------------------------------------------


class InvalidCredentials(Unauthenticated):
    """Every way a key can fail before its secret is proven, with one message: no oracle for guessers."""

    reason = "INVALID_CREDENTIALS"

    def __init__(self) -> None:
        super().__init__("the API key is not valid")


class ApiKeyRevoked(Unauthenticated):
    """Shown only to someone who holds the real secret: telling them why is safe and helps them."""

    reason = "API_KEY_REVOKED"

    def __init__(self) -> None:
        super().__init__("the API key has been revoked")


class ApiKeyExpired(Unauthenticated):
    reason = "API_KEY_EXPIRED"

    def __init__(self) -> None:
        super().__init__("the API key has expired")


class AddressNotAllowed(PermissionDenied):
    reason = "API_KEY_ADDRESS_NOT_ALLOWED"

    def __init__(self) -> None:
        super().__init__("the API key may not be used from this address (see its allowed_cidrs)")


class ApiKeyNotFound(NotFound):
    reason = "API_KEY_NOT_FOUND"

    def __init__(self) -> None:
        super().__init__("no such API key")


class ApiKeyInactive(FailedPrecondition):
    reason = "API_KEY_INACTIVE"


class ApiKeyAlreadyRolled(FailedPrecondition):
    reason = "API_KEY_ALREADY_ROLLED"


class ScopeInvalid(InvalidArgument):
    reason = "SCOPE_INVALID"


class ScopeNotHeld(PermissionDenied):
    reason = "SCOPE_NOT_HELD"


class ExceedsCallingKey(PermissionDenied):
    """A key made with an API key may not be stronger than that key (no escalation by minting)."""

    reason = "EXCEEDS_CALLING_KEY"


class ExpiryInvalid(InvalidArgument):
    reason = "EXPIRY_INVALID"


class CidrInvalid(InvalidArgument):
    reason = "ALLOWED_CIDR_INVALID"


class SendLimitsInvalid(InvalidArgument):
    reason = "SEND_LIMITS_INVALID"


class PrincipalRequired(PermissionDenied):
    reason = "PRINCIPAL_REQUIRED"


class DecryptFailed(InvalidArgument):
    reason = "DECRYPT_FAILED"

    def __init__(
        self,
        message: str = "the data failed authentication: it was altered, or the encryption context differs",
    ) -> None:
        super().__init__(message)


class KeyAccountMismatch(InvalidArgument):
    reason = "KEY_ACCOUNT_MISMATCH"

    def __init__(self) -> None:
        super().__init__("the data belongs to another account")


class KeyVersionUnknown(FailedPrecondition):
    reason = "KEY_VERSION_UNKNOWN"

    def __init__(self) -> None:
        super().__init__("the data names a key version this account does not have")


class KeyVersionRetired(FailedPrecondition):
    reason = "KEY_VERSION_RETIRED"

    def __init__(self, version: int, minimum: int) -> None:
        super().__init__(
            f"key version {version} is retired (the minimum decryption version is {minimum})",
            version=str(version), min_decryption_version=str(minimum),
        )


class KeysDestroyed(FailedPrecondition):
    reason = "KEYS_DESTROYED"

    def __init__(self) -> None:
        super().__init__("the account's keys were destroyed: its data can never be decrypted again")


class KeysPendingDestruction(FailedPrecondition):
    reason = "KEYS_PENDING_DESTRUCTION"

    def __init__(self) -> None:
        super().__init__("the account's keys are scheduled for destruction: every use fails until it is cancelled")


class AccountKeysNotFound(NotFound):
    reason = "ACCOUNT_KEYS_NOT_FOUND"

    def __init__(self) -> None:
        super().__init__("this account has no keys yet")


class NotPendingDestruction(FailedPrecondition):
    reason = "NOT_PENDING_DESTRUCTION"


class KeyPolicyInvalid(InvalidArgument):
    reason = "KEY_POLICY_INVALID"


class ContextInvalid(InvalidArgument):
    reason = "ENCRYPTION_CONTEXT_INVALID"


class PlaintextTooLarge(InvalidArgument):
    reason = "PLAINTEXT_TOO_LARGE"


class BatchTooLarge(InvalidArgument):
    reason = "BATCH_TOO_LARGE"


class RequestInvalid(InvalidArgument):
    reason = "INVALID_ARGUMENT"


class RootKeyInvalid(InvalidArgument):
    reason = "ROOT_KEY_INVALID"


# -- base62 and the API-key format -------------------------------------------------------------------------

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
LIVE_PREFIX = "ss_live_"
TEST_PREFIX = "ss_test_"
KEY_ID_LEN = 12
SECRET_LEN = 22  # 22 * log2(62) = 130.99 bits
CHECKSUM_LEN = 6  # 62**6 > 2**32: any CRC32 fits
API_KEY_LEN = len(LIVE_PREFIX) + KEY_ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN
_API_KEY_RE = re.compile(
    rf"ss_(live|test)_([0-9A-Za-z]{{{KEY_ID_LEN}}})_([0-9A-Za-z]{{{SECRET_LEN}}})([0-9A-Za-z]{{{CHECKSUM_LEN}}})"
)
_KEY_ID_RE = re.compile(rf"[0-9A-Za-z]{{{KEY_ID_LEN}}}")
PEPPER_INFO = b"sendsafe api-key pepper v1"
MAX_NAME_LEN = 100
ALL_SCOPES = "*"
DEFAULT_SCOPES = (ALL_SCOPES,)  # keys issued internally (sub-account keys): every permission the user has


def random_base62(n: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(n))


def base62_fixed(value: int, width: int) -> str:
    if value < 0 or value >= 62**width:
        raise ValueError("value does not fit")
    out = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        out.append(BASE62[digit])
    return "".join(reversed(out))


def checksum(body: str) -> str:
    """6 base62 characters of CRC32(body): detects typos and lets scanners recognise real keys offline."""
    return base62_fixed(zlib.crc32(body.encode("ascii")), CHECKSUM_LEN)


@dataclass(frozen=True)
class ApiKeyParts:
    test_mode: bool
    key_id: str
    secret: str

    def __repr__(self) -> str:  # never show the secret, even in a debugger or a traceback
        return f"ApiKeyParts(test_mode={self.test_mode}, key_id={self.key_id!r}, secret=<redacted>)"

    @property
    def body(self) -> str:
        """Everything but the checksum; this is what is HMAC'd (binds mode, key id and secret)."""
        return f"{key_prefix(self.test_mode, self.key_id)}{self.secret}"

    def format(self) -> str:
        body = self.body
        return body + checksum(body)


def key_prefix(test_mode: bool, key_id: str) -> str:
    """The visible, non-secret start of a key: ``ss_live_<key id>_``."""
    return f"{TEST_PREFIX if test_mode else LIVE_PREFIX}{key_id}_"


def new_api_key(test_mode: bool) -> ApiKeyParts:
    return ApiKeyParts(test_mode, random_base62(KEY_ID_LEN), random_base62(SECRET_LEN))


def parse_api_key(text: str) -> ApiKeyParts | None:
    """The parts of a well-formed key with a valid checksum, else None. Cheap: no I/O."""
    if len(text) != API_KEY_LEN:
        return None
    m = _API_KEY_RE.fullmatch(text)
    if m is None:
        return None
    mode, key_id, secret, check = m.groups()
    parts = ApiKeyParts(mode == "test", key_id, secret)
    if not hmac.compare_digest(checksum(parts.body), check):
        return None
    return parts


def looks_like_api_key(text: str) -> bool:
    """True when `text` has a SendSafe key's prefix, shape and checksum (for leak scanners)."""
    return parse_api_key(text) is not None


def valid_key_id(key_id: str) -> bool:
    return _KEY_ID_RE.fullmatch(key_id) is not None


def secret_hmac(pepper: bytes, parts: ApiKeyParts) -> bytes:
    return hmac.new(pepper, parts.body.encode("ascii"), hashlib.sha256).digest()


def hmac_matches(pepper: bytes, parts: ApiKeyParts, stored: bytes) -> bool:
    return hmac.compare_digest(secret_hmac(pepper, parts), stored)


# -- API-key settings ----------------------------------------------------------------------------------------

MAX_SEND_PER_MINUTE = 100_000
MAX_SEND_PER_DAY = 10_000_000
MAX_CIDRS = 50
MAX_COUNTRIES = 250
MAX_SCOPES = 100
MAX_ROLL_OVERLAP_SECONDS = 24 * 3600
_REGIONS = frozenset(phonenumbers.SUPPORTED_REGIONS)


@dataclass(frozen=True)
class SendLimits:
    """What a key may send; 0 / empty = no limit of that kind (the messaging service enforces them)."""

    per_minute: int = 0
    per_day: int = 0
    countries: tuple[str, ...] = ()

    @property
    def unlimited(self) -> bool:
        return not (self.per_minute or self.per_day or self.countries)


NO_LIMITS = SendLimits()


def check_send_limits(per_minute: int, per_day: int, countries: Iterable[str]) -> SendLimits:
    if not 0 <= per_minute <= MAX_SEND_PER_MINUTE:
        raise SendLimitsInvalid(f"messages_per_minute must be between 0 (no limit) and {MAX_SEND_PER_MINUTE}")
    if not 0 <= per_day <= MAX_SEND_PER_DAY:
        raise SendLimitsInvalid(f"messages_per_day must be between 0 (no limit) and {MAX_SEND_PER_DAY}")
    if per_minute and per_day and per_day < per_minute:
        raise SendLimitsInvalid("messages_per_day must not be below messages_per_minute")
    cleaned = sorted({c.strip().upper() for c in countries})
    if len(cleaned) > MAX_COUNTRIES:
        raise SendLimitsInvalid(f"at most {MAX_COUNTRIES} allowed_countries")
    unknown = [c for c in cleaned if c not in _REGIONS]
    if unknown:
        shown = ", ".join(repr(c[:8]) for c in unknown[:5])
        raise SendLimitsInvalid(f"allowed_countries must be ISO 3166-1 alpha-2 codes of phone regions: {shown}")
    return SendLimits(per_minute, per_day, tuple(cleaned))


def check_cidrs(values: Iterable[str]) -> tuple[str, ...]:
    """Normalised networks ("203.0.113.7" becomes "203.0.113.7/32"), sorted and unique."""
    nets: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
    for value in values:
        text = value.strip()
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise CidrInvalid(f"{text[:50]!r} is not an IP address or CIDR network") from None
        nets.add(net)
    if len(nets) > MAX_CIDRS:
        raise CidrInvalid(f"at most {MAX_CIDRS} allowed_cidrs")
    return tuple(str(n) for n in sorted(nets, key=lambda n: (n.version, n)))


def address_allowed(cidrs: Sequence[str], address: str) -> bool:
    """True when the key has no allow-list, or `address` is inside one of its networks."""
    if not cidrs:
        return True
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr, strict=False)
        if ip.version == net.version and ip in net:
            return True
    return False


def _within(child: Sequence[str], parent: Sequence[str]) -> bool:
    """Every network of `child` lies inside some network of `parent` (parent empty = anything)."""
    if not parent:
        return True
    if not child:
        return False
    pnets = [ipaddress.ip_network(p) for p in parent]
    for c in child:
        cnet = ipaddress.ip_network(c)
        if not any(cnet.version == p.version and cnet.subnet_of(p) for p in pnets):  # type: ignore[arg-type]
            return False
    return True


def _limit_within(child: int, parent: int) -> bool:
    return parent == 0 or 0 < child <= parent


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
    if not _within(spec.allowed_cidrs, parent.allowed_cidrs):
        raise ExceedsCallingKey("allowed_cidrs must lie within those of the API key you call with")
    p, c = parent.send_limits, spec.send_limits
    if not (_limit_within(c.per_minute, p.per_minute) and _limit_within(c.per_day, p.per_day)):
        raise ExceedsCallingKey("send limits must not be looser than those of the API key you call with")
    if p.countries and (not c.countries or not set(c.countries) <= set(p.countries)):
        raise ExceedsCallingKey("allowed_countries must be within those of the API key you call with")


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
    return SendLimits(asked.per_minute or p.per_minute, asked.per_day or p.per_day, asked.countries or p.countries)


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


def check_revoke_user_request(account_id: int, user_id: int, keep_key_id: str, reason: str) -> str:
    """The audit reason for revoking a user's keys ("unspecified" when none is given), or RequestInvalid."""
    if account_id <= 0:
        raise RequestInvalid("account_id must be positive")
    if user_id <= 0:
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


# -- paging -------------------------------------------------------------------------------------------------

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100


def page_size(requested: int) -> int:
    if requested < 0:
        raise RequestInvalid("page_size must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def page_token(create_time: datetime, key_id: str) -> str:
    micros = int(create_time.timestamp() * 1_000_000)
    return base64.urlsafe_b64encode(f"{micros}.{key_id}".encode()).decode().rstrip("=")


def parse_page_token(token: str) -> tuple[datetime, str] | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        micros, key_id = raw.split(".", 1)
        when = datetime.fromtimestamp(int(micros) / 1_000_000, UTC)
    except (ValueError, UnicodeDecodeError, binascii.Error, OverflowError, OSError):
        raise RequestInvalid("page_token is not valid") from None
    if not valid_key_id(key_id):
        raise RequestInvalid("page_token is not valid")
    return when, key_id


# -- root key --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RootWrapped:
    key_id: str
    blob: bytes  # nonce || ciphertext+tag


class RootKeyProvider(Protocol):
    """The top of the hierarchy. A cloud KMS or HSM implements the same calls (wrap/unwrap map to its
    Encrypt/Decrypt with the associated data as encryption context; derive_secret to an HMAC or derive-key
    operation), so root key material never has to leave it.

    Everything wrapped or derived records the `key_id` it used, so rotating the root key only changes what
    new wraps use; older ids stay resolvable for unwrapping until the rewrap job has moved everything to the
    current one (GetRootKeyStatus shows what is left), after which they can be removed.
    """

    @property
    def current_key_id(self) -> str: ...

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every id this provider can unwrap with (the current one first)."""
        ...

    async def wrap(self, plaintext: bytes, aad: bytes) -> RootWrapped: ...

    async def unwrap(self, wrapped: RootWrapped, aad: bytes) -> bytes: ...

    async def derive_secret(self, info: bytes, key_id: str | None = None) -> tuple[str, bytes]:
        """A stable 32-byte secret for `info` under `key_id` (default: current). (key_id, secret)."""
        ...


def parse_root_key(text: str) -> bytes:
    """32 bytes from 64 hex characters or base64 (standard or URL-safe). Errors never echo the input."""
    text = text.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text)
    try:
        raw = base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_SIZE:
        raise RootKeyInvalid("the root key must be 32 bytes, as 64 hex characters or base64")
    return raw


def _hkdf(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=info).derive(key)


_ROOT_WRAP_INFO = b"sendsafe root kek-wrap v1"


class LocalRootKey:
    """Root keys held in process memory (development, or a key mounted from a secret store).

    The raw root key is only ever used as HKDF input: one derived key wraps KEKs (AES-256-GCM), other
    derived secrets (e.g. the API-key pepper) come from `derive_secret`, so no key serves two purposes.
    """

    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        if current not in keys:
            raise RootKeyInvalid("the current root key id has no key")
        for k in keys.values():
            if len(k) != KEY_SIZE:
                raise RootKeyInvalid("root keys are 32 bytes")
        self._keys = dict(keys)
        self._current = current
        self._aead = {kid: AESGCM(_hkdf(k, _ROOT_WRAP_INFO)) for kid, k in self._keys.items()}

    def __repr__(self) -> str:
        return f"LocalRootKey(ids={sorted(self._keys)}, current={self._current!r})"

    @property
    def current_key_id(self) -> str:
        return self._current

    @property
    def key_ids(self) -> tuple[str, ...]:
        return (self._current, *sorted(k for k in self._keys if k != self._current))

    async def wrap(self, plaintext: bytes, aad: bytes) -> RootWrapped:
        nonce = secrets.token_bytes(NONCE_SIZE)
        return RootWrapped(self._current, nonce + self._aead[self._current].encrypt(nonce, plaintext, aad))

    async def unwrap(self, wrapped: RootWrapped, aad: bytes) -> bytes:
        aead = self._aead.get(wrapped.key_id)
        if aead is None:
            raise KeyVersionUnknown()
        if len(wrapped.blob) < NONCE_SIZE + TAG_SIZE:
            raise DecryptFailed()
        try:
            return aead.decrypt(wrapped.blob[:NONCE_SIZE], wrapped.blob[NONCE_SIZE:], aad)
        except InvalidTag:
            raise DecryptFailed() from None

    async def derive_secret(self, info: bytes, key_id: str | None = None) -> tuple[str, bytes]:
        kid = self._current if key_id is None else key_id
        key = self._keys.get(kid)
        if key is None:
            raise KeyVersionUnknown()
        return kid, _hkdf(key, info)


# -- account key rings ---------------------------------------------------------------------------------------


class RingState(enum.StrEnum):
    ENABLED = "enabled"
    PENDING_DESTRUCTION = "pending_destruction"
    DESTROYED = "destroyed"


MIN_ROTATION_PERIOD = timedelta(hours=1)
MAX_PENDING_WINDOW = timedelta(days=30)
MAX_KEK_VERSION = 0x7FFFFFFF  # key_version is an int32 on the wire


@dataclass(frozen=True)
class AccountRing:
    """An account's key ring: which version new data uses, which versions still decrypt, its lifecycle."""

    account_id: int
    current_version: int
    min_decryption_version: int = 1
    state: RingState = RingState.ENABLED
    rotation_period_seconds: int = 0  # 0: the service default
    destroy_time: datetime | None = None  # pending: when it will be destroyed; destroyed: when it was
    current_create_time: datetime | None = None

    def check_usable(self) -> None:
        if self.state is RingState.DESTROYED:
            raise KeysDestroyed()
        if self.state is RingState.PENDING_DESTRUCTION:
            raise KeysPendingDestruction()

    def check_decrypt(self, version: int) -> None:
        self.check_usable()
        if not 0 < version <= self.current_version:
            raise KeyVersionUnknown()
        if version < self.min_decryption_version:
            raise KeyVersionRetired(version, self.min_decryption_version)

    def version_state(self, version: int, destroyed: bool) -> str:
        if destroyed or self.state is RingState.DESTROYED:
            return "destroyed"
        if version == self.current_version:
            return "primary"
        return "retired" if version < self.min_decryption_version else "enabled"

    def next_rotation_time(self, default_period: timedelta) -> datetime | None:
        period = timedelta(seconds=self.rotation_period_seconds) if self.rotation_period_seconds else default_period
        if not period or self.current_create_time is None or self.state is not RingState.ENABLED:
            return None
        return self.current_create_time + period


@dataclass(frozen=True)
class StoredKek:
    """One version of an account's KEK as stored: wrapped by the root key (None once destroyed)."""

    account_id: int
    version: int
    wrapped: RootWrapped | None
    create_time: datetime | None = None


def check_account_id(account_id: int) -> None:
    if account_id <= 0:
        raise RequestInvalid("account_id must be positive")


def check_policy(
    ring: AccountRing, rotation_period_seconds: int | None, min_decryption_version: int | None
) -> tuple[int, int]:
    """(rotation period, minimum decryption version) after a policy change, or KeyPolicyInvalid."""
    ring.check_usable()
    period = ring.rotation_period_seconds if rotation_period_seconds is None else rotation_period_seconds
    if period and period < MIN_ROTATION_PERIOD.total_seconds():
        raise KeyPolicyInvalid("rotation_period_seconds must be 0 (the default) or at least 3600")
    minimum = ring.min_decryption_version if min_decryption_version is None else min_decryption_version
    if not 1 <= minimum <= ring.current_version:
        raise KeyPolicyInvalid(f"min_decryption_version must be between 1 and {ring.current_version} (current)")
    return period, minimum


def check_pending_window(seconds: int, minimum: timedelta) -> timedelta:
    window = timedelta(seconds=seconds)
    if not minimum <= window <= MAX_PENDING_WINDOW:
        raise KeyPolicyInvalid(
            f"pending_window_seconds must be between {int(minimum.total_seconds())} and"
            f" {int(MAX_PENDING_WINDOW.total_seconds())}"
        )
    return window


# -- encryption context --------------------------------------------------------------------------------------

MAX_CONTEXT_PAIRS = 32
MAX_CONTEXT_BYTES = 4096
MAX_PLAINTEXT = 4096
MAX_BATCH = 1000


def canonical_context(context: Mapping[str, str]) -> bytes:
    """An unambiguous encoding of the context: pairs sorted by key, each part length-prefixed."""
    if len(context) > MAX_CONTEXT_PAIRS:
        raise ContextInvalid(f"at most {MAX_CONTEXT_PAIRS} encryption context pairs")
    out = [struct.pack(">H", len(context))]
    for key in sorted(context):
        if not key:
            raise ContextInvalid("encryption context keys must not be empty")
        k, v = key.encode(), context[key].encode()
        out += [struct.pack(">I", len(k)), k, struct.pack(">I", len(v)), v]
    encoded = b"".join(out)
    if len(encoded) > MAX_CONTEXT_BYTES:
        raise ContextInvalid(f"the encryption context must encode to at most {MAX_CONTEXT_BYTES} bytes")
    return encoded


# -- wrapping and blobs ----------------------------------------------------------------------------------------

FORMAT_DATA_KEY_V1 = 1
FORMAT_DATA_KEY = 2
FORMAT_CIPHERTEXT = 3
WRAPPED_DATA_KEY_FORMAT = FORMAT_DATA_KEY
_HEADER_V1 = struct.Struct(">BI")
_HEADER = struct.Struct(">BIq")
_ACCOUNT_VERSION = struct.Struct(">qI")
WRAPPED_DATA_KEY_V1_LEN = _HEADER_V1.size + NONCE_SIZE + KEY_SIZE + TAG_SIZE
WRAPPED_DATA_KEY_LEN = _HEADER.size + NONCE_SIZE + KEY_SIZE + TAG_SIZE
_ENCRYPT_INFO = b"sendsafe kek encrypt v1"


@dataclass(frozen=True)
class BlobHeader:
    fmt: int
    version: int
    account_id: int | None  # None: a legacy format-1 wrapped key (account bound only through the AAD)
    size: int  # header length

    @property
    def is_data_key(self) -> bool:
        return self.fmt in (FORMAT_DATA_KEY_V1, FORMAT_DATA_KEY)


def parse_blob(blob: bytes) -> BlobHeader:
    """The header of a wrapped data key or ciphertext; DecryptFailed when `blob` is neither."""
    if not blob:
        raise DecryptFailed("the data is empty")
    fmt = blob[0]
    if fmt == FORMAT_DATA_KEY_V1:
        if len(blob) != WRAPPED_DATA_KEY_V1_LEN:
            raise DecryptFailed("the data is not a wrapped key: wrong length")
        _, version = _HEADER_V1.unpack_from(blob)
        header = BlobHeader(fmt, int(version), None, _HEADER_V1.size)
    elif fmt in (FORMAT_DATA_KEY, FORMAT_CIPHERTEXT):
        minimum = WRAPPED_DATA_KEY_LEN if fmt == FORMAT_DATA_KEY else _HEADER.size + NONCE_SIZE + TAG_SIZE
        if len(blob) < minimum or (fmt == FORMAT_DATA_KEY and len(blob) != WRAPPED_DATA_KEY_LEN):
            raise DecryptFailed("the data is truncated or padded")
        _, version, account = _HEADER.unpack_from(blob)
        header = BlobHeader(fmt, int(version), int(account), _HEADER.size)
    else:
        raise DecryptFailed("the data is not a SendSafe wrapped key or ciphertext (unknown format)")
    if not 0 < header.version <= MAX_KEK_VERSION:
        raise DecryptFailed("the data names an impossible key version")
    return header


def check_blob_account(header: BlobHeader, account_id: int) -> None:
    if header.account_id is not None and header.account_id != account_id:
        raise KeyAccountMismatch()


def kek_aad(account_id: int, version: int) -> bytes:
    """Associated data when the root key wraps an account's KEK: the KEK is bound to its account and version."""
    return b"sendsafe.kek.v1\x00" + _ACCOUNT_VERSION.pack(account_id, version)


def data_key_aad_v1(account_id: int, version: int) -> bytes:
    return b"sendsafe.dek.v1\x00" + bytes((FORMAT_DATA_KEY_V1,)) + _ACCOUNT_VERSION.pack(account_id, version)


def _aad(label: bytes, header: bytes, context: Mapping[str, str]) -> bytes:
    return label + header + canonical_context(context)


def new_key() -> bytes:
    return secrets.token_bytes(KEY_SIZE)


@dataclass(frozen=True)
class Kek:
    """One unwrapped KEK version, as two purpose-bound AEADs (never exported, never logged)."""

    account_id: int
    version: int
    wrap: AESGCM = field(repr=False)  # wraps data keys (the KEK itself, as in format 1)
    seal: AESGCM = field(repr=False)  # encrypts small secrets (an HKDF subkey of the KEK)

    @classmethod
    def of(cls, account_id: int, version: int, raw: bytes) -> Kek:
        return cls(account_id, version, AESGCM(raw), AESGCM(_hkdf(raw, _ENCRYPT_INFO)))


def wrap_data_key(kek: Kek, data_key: bytes, context: Mapping[str, str] | None = None) -> bytes:
    header = _HEADER.pack(FORMAT_DATA_KEY, kek.version, kek.account_id)
    nonce = secrets.token_bytes(NONCE_SIZE)
    sealed = kek.wrap.encrypt(nonce, data_key, _aad(b"sendsafe.dek.v2\x00", header, context or {}))
    return header + nonce + sealed


def unwrap_data_key(kek: Kek, blob: bytes, context: Mapping[str, str] | None = None) -> bytes:
    header = parse_blob(blob)
    if not header.is_data_key:
        raise DecryptFailed("the data is a ciphertext, not a wrapped data key")
    check_blob_account(header, kek.account_id)
    nonce = blob[header.size : header.size + NONCE_SIZE]
    if header.fmt == FORMAT_DATA_KEY_V1:
        if context:
            raise DecryptFailed()  # format 1 had no context: a non-empty one cannot match
        aad = data_key_aad_v1(kek.account_id, header.version)
    else:
        aad = _aad(b"sendsafe.dek.v2\x00", blob[: header.size], context or {})
    try:
        key = kek.wrap.decrypt(nonce, blob[header.size + NONCE_SIZE :], aad)
    except InvalidTag:
        raise DecryptFailed() from None
    if len(key) != KEY_SIZE:
        raise DecryptFailed()
    return key


def encrypt_small(kek: Kek, plaintext: bytes, context: Mapping[str, str] | None = None) -> bytes:
    if len(plaintext) > MAX_PLAINTEXT:
        raise PlaintextTooLarge(f"at most {MAX_PLAINTEXT} bytes: encrypt larger data with a data key")
    header = _HEADER.pack(FORMAT_CIPHERTEXT, kek.version, kek.account_id)
    nonce = secrets.token_bytes(NONCE_SIZE)
    return header + nonce + kek.seal.encrypt(nonce, plaintext, _aad(b"sendsafe.ct.v1\x00", header, context or {}))


def decrypt_small(kek: Kek, blob: bytes, context: Mapping[str, str] | None = None) -> bytes:
    header = parse_blob(blob)
    if header.fmt != FORMAT_CIPHERTEXT:
        raise DecryptFailed("the data is a wrapped data key, not a ciphertext")
    check_blob_account(header, kek.account_id)
    nonce = blob[header.size : header.size + NONCE_SIZE]
    try:
        return kek.seal.decrypt(
            nonce, blob[header.size + NONCE_SIZE :], _aad(b"sendsafe.ct.v1\x00", blob[: header.size], context or {})
        )
    except InvalidTag:
        raise DecryptFailed() from None


# -- destruction receipts --------------------------------------------------------------------------------------

RECEIPT_TYPE = "sendsafe.keys.destruction_receipt.v1"
RECEIPT_SIGNING_INFO = b"sendsafe destruction-receipt signing v1"


@dataclass(frozen=True)
class ReceiptSigner:
    key_id: str
    private: Ed25519PrivateKey = field(repr=False)

    @property
    def public_bytes(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def sign(self, receipt: bytes) -> bytes:
        return self.private.sign(receipt)


def receipt_signer(root_key_id: str, seed: bytes) -> ReceiptSigner:
    """The Ed25519 key that signs receipts, derived from the root key: it lives only inside the keys service."""
    private = Ed25519PrivateKey.from_private_bytes(seed)
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return ReceiptSigner(f"{root_key_id}.{hashlib.sha256(public).hexdigest()[:16]}", private)


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def destruction_receipt(
    *,
    account_id: int,
    destroyed: Sequence[tuple[int, bytes]],
    scheduled_time: datetime | None,
    destroy_time: datetime,
    requested_by: str,
    signing_key_id: str,
) -> bytes:
    """Canonical JSON (sorted keys, no spaces) naming what was destroyed: each KEK version with the SHA-256 of
    its wrapped form (a commitment to exactly which key material is gone, revealing nothing about it)."""
    body = {
        "type": RECEIPT_TYPE,
        "account_id": str(account_id),
        "destroyed_key_versions": [
            {"version": v, "wrapped_sha256": hashlib.sha256(blob).hexdigest()} for v, blob in sorted(destroyed)
        ],
        "scheduled_time": _rfc3339(scheduled_time) if scheduled_time else "",
        "destroy_time": _rfc3339(destroy_time),
        "requested_by": requested_by,
        "signing_key_id": signing_key_id,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def verify_receipt(public_key: bytes, receipt: bytes, signature: bytes) -> bool:
    """True when `signature` is the Ed25519 signature of `receipt` by `public_key` (what customers run)."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, receipt)
    except (InvalidSignature, ValueError):
        return False
    return True


# -- a small bounded, time-limited cache ------------------------------------------------------------------

K = TypeVar("K")
V = TypeVar("V")


class TtlLru(Generic[K, V]):
    """At most `max_entries` entries, each for at most `ttl` seconds; least recently used evicted first."""

    def __init__(self, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        item = self._data.get(key)
        if item is None:
            return None
        if self._clock() - item[0] >= self._ttl:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return item[1]

    def put(self, key: K, value: V) -> None:
        self._data[key] = (self._clock(), value)
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    def pop(self, key: K) -> None:
        self._data.pop(key, None)

    def pop_where(self, predicate: Callable[[K], bool]) -> None:
        for key in [k for k in self._data if predicate(k)]:
            del self._data[key]

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
