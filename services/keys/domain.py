"""Keys rules: API-key format and hashing, the root-key provider, account key wrapping. Pure: no I/O.

Key hierarchy::

    root key (RootKeyProvider: local file/env now, a KMS or HSM later; named by a key id)
      └─ wraps  per-account key-encryption keys (KEK), versioned: AES-256-GCM, AAD = account id + version
           └─ wrap  data keys (32 random bytes) handed to callers: AES-256-GCM, AAD = account id + KEK version
                └─ encrypt records (svckit.envelope, in the calling service)

Wrapped data key (self-describing, 65 bytes)::

    format (1, =1) | KEK version (4, big-endian) | nonce (12) | AES-256-GCM(data key) + tag (48)

Customer API keys look like ``ss_live_<key id: 12>_<secret: 22><checksum: 6>`` (base62; ``ss_test_`` for test
mode). The secret carries 22 * log2(62) ≈ 131 bits; the checksum is the CRC32 of everything before it, so a
leaked key can be recognised offline and garbage is rejected without a database lookup. Only an
HMAC-SHA256 of the key (pepper derived from the root key) is stored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import struct
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Protocol, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from svckit.errors import FailedPrecondition, InvalidArgument, Unauthenticated

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16

# -- errors -----------------------------------------------------------------------------------------------


class InvalidCredentials(Unauthenticated):
    """Every way an API key can fail to verify, with one message: no oracle for the caller."""

    reason = "INVALID_CREDENTIALS"

    def __init__(self) -> None:
        super().__init__("the API key is not valid")


class DecryptFailed(InvalidArgument):
    reason = "DECRYPT_FAILED"

    def __init__(self) -> None:
        super().__init__("the wrapped key cannot be decrypted for this account")


class KeyVersionUnknown(FailedPrecondition):
    reason = "KEY_VERSION_UNKNOWN"

    def __init__(self) -> None:
        super().__init__("the wrapped key names a key version this account does not have")


class RequestInvalid(InvalidArgument):
    reason = "INVALID_ARGUMENT"


class RootKeyInvalid(InvalidArgument):
    reason = "ROOT_KEY_INVALID"


# -- base62 and the API-key format -------------------------------------------------------------------------

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_B62_INDEX = {c: i for i, c in enumerate(BASE62)}
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
DEFAULT_SCOPES = ("*",)  # every permission the owning user has; narrower scopes arrive with issue 4


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
        return f"{TEST_PREFIX if self.test_mode else LIVE_PREFIX}{self.key_id}_{self.secret}"

    def format(self) -> str:
        body = self.body
        return body + checksum(body)


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


@dataclass(frozen=True)
class VerifiedKey:
    key_id: str
    account_id: int
    user_id: int
    scopes: tuple[str, ...]


def check_issue_request(account_id: int, user_id: int, name: str) -> str:
    """The cleaned key name, or RequestInvalid."""
    if account_id <= 0:
        raise RequestInvalid("account_id must be positive")
    if user_id <= 0:
        raise RequestInvalid("user_id must be positive")
    name = name.strip()
    if len(name) > MAX_NAME_LEN or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise RequestInvalid(f"name must be at most {MAX_NAME_LEN} printable characters")
    return name


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


def verify_failure(record: ApiKeyRecord | None, parts: ApiKeyParts, pepper: bytes, now: datetime) -> str:
    """Why `parts` does not verify against `record` ("" when it does). The caller always sees the same
    INVALID_CREDENTIALS; the reason is only for the audit log."""
    if record is None:
        # Spend the same HMAC as a real comparison so a missing key id is not faster than a wrong secret.
        hmac_matches(pepper, parts, bytes(32))
        return "unknown_key"
    if not hmac_matches(pepper, parts, record.secret_hmac):
        return "secret_mismatch"
    if record.test_mode != parts.test_mode:  # cannot happen with a matching HMAC; kept as a second lock
        return "mode_mismatch"
    if record.revoke_time is not None and record.revoke_time <= now:
        return "revoked"
    if record.expire_time is not None and record.expire_time <= now:
        return "expired"
    return ""


# -- root key --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RootWrapped:
    key_id: str
    blob: bytes  # nonce || ciphertext+tag


class RootKeyProvider(Protocol):
    """The top of the hierarchy. A cloud KMS or HSM implements the same three calls.

    Everything wrapped or derived records the `key_id` it used, so a rotated root key only changes what
    new wraps use; older ids stay resolvable for unwrapping until everything is rewrapped (issue 4).
    """

    @property
    def current_key_id(self) -> str: ...

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


# -- account key-encryption keys and data keys -------------------------------------------------------------


@dataclass(frozen=True)
class StoredKek:
    """One version of an account's KEK as stored: wrapped by the root key."""

    account_id: int
    version: int
    wrapped: RootWrapped


WRAPPED_DATA_KEY_FORMAT = 1
_WRAPPED_HEADER = struct.Struct(">BI")
WRAPPED_DATA_KEY_LEN = _WRAPPED_HEADER.size + NONCE_SIZE + KEY_SIZE + TAG_SIZE
_ACCOUNT_VERSION = struct.Struct(">qI")
MAX_KEK_VERSION = 0x7FFFFFFF  # key_version is an int32 on the wire


def kek_aad(account_id: int, version: int) -> bytes:
    """Associated data when the root key wraps an account's KEK: the KEK is bound to its account and version."""
    return b"sendsafe.kek.v1\x00" + _ACCOUNT_VERSION.pack(account_id, version)


def data_key_aad(account_id: int, version: int) -> bytes:
    return b"sendsafe.dek.v1\x00" + bytes((WRAPPED_DATA_KEY_FORMAT,)) + _ACCOUNT_VERSION.pack(account_id, version)


def new_key() -> bytes:
    return secrets.token_bytes(KEY_SIZE)


def wrap_data_key(kek: AESGCM, account_id: int, version: int, data_key: bytes) -> bytes:
    nonce = secrets.token_bytes(NONCE_SIZE)
    sealed = kek.encrypt(nonce, data_key, data_key_aad(account_id, version))
    return _WRAPPED_HEADER.pack(WRAPPED_DATA_KEY_FORMAT, version) + nonce + sealed


def wrapped_key_version(wrapped: bytes) -> int:
    """The KEK version a wrapped data key names; DecryptFailed when it is not a wrapped key at all."""
    if len(wrapped) != WRAPPED_DATA_KEY_LEN:
        raise DecryptFailed()
    fmt, version = _WRAPPED_HEADER.unpack_from(wrapped)
    if fmt != WRAPPED_DATA_KEY_FORMAT or not 0 < version <= MAX_KEK_VERSION:
        raise DecryptFailed()
    return int(version)


def unwrap_data_key(kek: AESGCM, account_id: int, wrapped: bytes) -> bytes:
    version = wrapped_key_version(wrapped)
    nonce = wrapped[_WRAPPED_HEADER.size : _WRAPPED_HEADER.size + NONCE_SIZE]
    try:
        key = kek.decrypt(nonce, wrapped[_WRAPPED_HEADER.size + NONCE_SIZE :], data_key_aad(account_id, version))
    except InvalidTag:
        raise DecryptFailed() from None
    if len(key) != KEY_SIZE:
        raise DecryptFailed()
    return key


def check_account_id(account_id: int) -> None:
    if account_id <= 0:
        raise RequestInvalid("account_id must be positive")


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

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
