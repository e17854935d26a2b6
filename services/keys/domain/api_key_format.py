"""The API-key format: base62, prefix, checksum and the keyed hash of the secret. Pure: no I/O.

Customer API keys look like ``ss_live_<key id: 12>_<secret: 22><checksum: 6>`` (base62; ``ss_test_`` for test
mode). The secret carries 22 * log2(62) ≈ 131 bits; the checksum is the CRC32 of everything before it, so a
leaked key can be recognised offline and garbage is rejected without a database lookup. Only an
HMAC-SHA256 of the key (pepper derived from the root key) is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from dataclasses import dataclass

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
