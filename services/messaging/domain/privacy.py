"""Keyed hashes ("blind indexes") of phone numbers, de-identification (masking) and body retention."""

from __future__ import annotations

import functools
import hashlib
import hmac
from typing import Final

import phonenumbers

from svckit.errors import InvalidArgument

INDEX_KEY_RECORD: Final = "sms.index_key"
INDEX_KEY_SIZE: Final = 32


_NUMBER_INDEX_LABEL: Final = b"sendsafe.sms.number.v1\x00"


def number_index(key: bytes, e164: str) -> bytes:
    """HMAC-SHA256 of a normalised number under the account's index key: lets the database match a number
    exactly (history `to:`, opt-outs, inbound matching) without holding it. The key lives encrypted under
    the account's key-encryption key, so destroying the account's keys also makes these unlinkable."""
    return NumberIndexer(key)(e164)


class NumberIndexer:
    """`number_index` with the key schedule done once: the send path hashes every recipient."""

    __slots__ = ("_base",)

    def __init__(self, key: bytes) -> None:
        if len(key) != INDEX_KEY_SIZE:
            raise ValueError("index key must be 32 bytes")
        self._base = hmac.new(key, _NUMBER_INDEX_LABEL, hashlib.sha256)

    def __call__(self, e164: str) -> bytes:
        h = self._base.copy()
        h.update(e164.encode("ascii"))
        return h.digest()


CUSTOM_STRING_RECORD: Final = "sms.custom_string"
_CUSTOM_STRING_INDEX_LABEL: Final = b"sendsafe.sms.custom_string.v1\x00"


def custom_string_index(key: bytes, value: str) -> bytes:
    """HMAC-SHA256 of a message's custom string under the account's index key (as `number_index`): history's
    `q=custom_string:` and cancel-by-custom-string match it exactly without the database holding the text."""
    return hmac.new(key, _CUSTOM_STRING_INDEX_LABEL + value.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()


def index_token(key: bytes, purpose: str, value: str) -> str:
    """A short keyed token for Redis key names (a destination prefix, an idempotency key): never the value."""
    return hmac.new(key, f"sendsafe.{purpose}.v1\x00{value}".encode(), hashlib.sha256).hexdigest()[:32]


@functools.lru_cache(maxsize=65_536)
def prefix_token(key: bytes, prefix: str) -> str:
    """`index_token` of a destination prefix, memoised: an account sends to the same prefixes again and
    again, and each token is an HMAC key schedule. (Only rate-limit key names come from it.)"""
    return index_token(key, "prefix", prefix)


def deidentified_number(country: str) -> str:
    """What a number past retention shows: its country calling code alone (`AU` -> `+61`), "" if unknown."""
    code = phonenumbers.country_code_for_region(country.upper()) if country else 0
    return f"+{code}" if code else ""


MASKED_BODY: Final = ""  # what de-identified users and redacted messages show as the body


def mask_number(number: str) -> str:
    """`+61412345678` -> `+61*******678`: the country calling code and the last three digits stay, so a
    de-identified user can still tell messages apart roughly, never reach the person."""
    raw = number.strip()
    if not raw:
        return ""
    digits = raw.lstrip("+")
    if not digits.isdigit() or len(digits) < 6:
        return "*" * len(raw)
    try:
        cc = str(phonenumbers.parse("+" + digits, None).country_code)
    except phonenumbers.NumberParseException:
        cc = digits[:1]
    keep_end = 3
    middle = len(digits) - len(cc) - keep_end
    if middle < 2:
        return "+" + "*" * len(digits)
    return "+" + cc + "*" * middle + digits[-keep_end:]


MAX_RETENTION_DAYS: Final = 3650


class InvalidSettings(InvalidArgument):
    reason = "INVALID_SETTINGS"


def check_retention_days(days: int) -> int:
    """0 keeps bodies; otherwise bodies are redacted this many days after the message (metadata stays)."""
    if not 0 <= days <= MAX_RETENTION_DAYS:
        raise InvalidSettings(f"body_retention_days must be between 0 and {MAX_RETENTION_DAYS}.")
    return days
