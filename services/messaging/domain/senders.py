"""Sender identities: the `from` an account may send with (issue 21).

An account sends from the shared system number (empty `from`), or from one of its ACTIVE sender identities:
a dedicated number it bought from the platform's inventory, a number of its own it verified with a code, or an
alpha tag staff approved (domain/alpha_tags.py). Anything else is refused per message as INVALID_SENDER_ID.

Comparison (`sender_key`): a numeric `from` ("+61411...", "61411...", " +61 411 ...") is compared as E.164,
"+" and its digits; an alphanumeric one as alpha_tags.normalize does (upper case, letters and digits only, so
"My Shop" == "MYSHOP" == "my-shop"). Numbers are compared through `sender_hash`, a platform-wide keyed hash, so
a verified number (personal data, sealed under its account's key) is matched without its clear text.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Final

from services.messaging.domain.alpha_tags import normalize as normalize_alpha
from svckit.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted

SENDER_NUMBER_RECORD: Final = "sender.number"  # AAD record type of a verified number's sealed value
SENDER_ACTIVATED: Final = "messaging.sender.activated"  # also recorded by alpha tag approval
SENDER_INDEX_KEY_SIZE: Final = 32
SENDER_CODES_PER_HOUR: Final = 5  # verification codes an account may send an hour
NUMBER_CODES_PER_HOUR: Final = 3  # codes one number may receive an hour, whichever accounts ask
_HASH_LABEL: Final = b"sendsafe.sender.number.v1\x00"
_NUMERIC: Final = re.compile(r"\+?[0-9]{1,15}")
_E164: Final = re.compile(r"\+[1-9][0-9]{5,14}")
_COUNTRY: Final = re.compile(r"[A-Z]{2}")
_ID: Final = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
MAX_LABEL: Final = 100
MAX_PRICE: Final = Decimal("100000")


class SenderKind(enum.Enum):
    DEDICATED_NUMBER = "dedicated_number"
    VERIFIED_NUMBER = "verified_number"


class SenderState(enum.Enum):
    PENDING = "pending"  # a verified number whose code was not entered yet
    ACTIVE = "active"
    RELEASED = "released"


class NumberNotAvailable(FailedPrecondition):
    reason = "NUMBER_NOT_AVAILABLE"


class SenderNotFound(NotFound):
    reason = "SENDER_NOT_FOUND"


class SenderNumberTaken(FailedPrecondition):
    """Another account holds this number as a sender identity now (a number has one holder at a time)."""

    reason = "SENDER_NUMBER_TAKEN"


class SenderAlreadyActive(FailedPrecondition):
    """The account sends from this number already (nothing to verify)."""

    reason = "SENDER_ALREADY_ACTIVE"


class SenderCodeInvalid(InvalidArgument):
    reason = "SENDER_CODE_INVALID"


class SenderCodeExpired(FailedPrecondition):
    reason = "SENDER_CODE_EXPIRED"


class SenderAttemptsExceeded(ResourceExhausted):
    reason = "SENDER_ATTEMPTS_EXCEEDED"


class SenderCodesExceeded(ResourceExhausted):
    reason = "SENDER_CODES_EXCEEDED"


class InvalidSenderNumber(InvalidArgument):
    reason = "INVALID_SENDER_NUMBER"


class InventoryInvalid(InvalidArgument):
    reason = "INVENTORY_INVALID"


@dataclass(frozen=True, slots=True)
class InventoryNumber:
    number: str  # E.164
    country: str
    capabilities: tuple[str, ...] = ("sms",)
    price_setup: Decimal = Decimal(0)
    price_monthly: Decimal = Decimal(0)
    holder_account_id: int = 0


@dataclass(frozen=True, slots=True)
class SenderIdentity:
    id: str
    account_id: int
    user_id: int
    kind: SenderKind
    state: SenderState
    value: str  # E.164 of a dedicated number; the masked number of a verified one (its clear value is sealed)
    country: str
    label: str
    create_time: float
    activate_time: float | None = None
    release_time: float | None = None


@dataclass(frozen=True, slots=True)
class Verification:
    id: str
    identity_id: str
    expire_time: float
    attempts_left: int
    create_time: float
    verified: bool = False


@dataclass(frozen=True, slots=True)
class ActiveSenders:
    """An account's active sender identities in their compared forms: numbers as platform hashes, alpha tags
    normalised."""

    number_hashes: frozenset[bytes] = frozenset()
    alpha: frozenset[str] = frozenset()


def is_numeric(sender: str) -> bool:
    return bool(_NUMERIC.fullmatch(sender.replace(" ", "")))


def sender_key(sender: str) -> str:
    """The compared form of a `from` (module doc): "+digits" for a number, normalised letters for a tag."""
    compact = sender.strip().replace(" ", "")
    if _NUMERIC.fullmatch(compact):
        return "+" + compact.lstrip("+")
    return normalize_alpha(sender)


def sender_hash(key: bytes, e164: str) -> bytes:
    """The platform-wide keyed hash of a number (its "+digits" form)."""
    return hmac.new(key, _HASH_LABEL + sender_key(e164).encode(), hashlib.sha256).digest()


def allowed(sender: str, active: ActiveSenders, key: bytes) -> bool:
    """Whether a non-empty `from` is one of the account's active identities."""
    if is_numeric(sender):
        return sender_hash(key, sender) in active.number_hashes
    return sender_key(sender) in active.alpha


def check_e164(number: str, what: str = "number") -> str:
    compact = number.strip().replace(" ", "")
    if compact and not compact.startswith("+"):
        compact = "+" + compact
    if not _E164.fullmatch(compact):
        raise InvalidSenderNumber(f"the {what} must be a phone number in E.164 form, e.g. +61411111111")
    return compact


def check_country(country: str) -> str:
    c = country.strip().upper()
    if not _COUNTRY.fullmatch(c):
        raise InvalidArgument("country must be a two-letter ISO 3166 code, e.g. AU")
    return c


def check_label(label: str) -> str:
    value = label.strip()
    if len(value) > MAX_LABEL:
        raise InvalidArgument(f"label is at most {MAX_LABEL} characters")
    return value


def check_id(value: str, what: str = "id") -> str:
    if not _ID.fullmatch(value.strip()):
        raise SenderNotFound(f"no such {what} in this account")
    return value.strip().lower()


def _price(value: str, line: str) -> Decimal:
    try:
        price = Decimal(value.strip() or "0")
    except InvalidOperation:
        raise InventoryInvalid(f"{line}: a price must be a decimal number") from None
    if not price.is_finite() or price < 0 or price > MAX_PRICE:
        raise InventoryInvalid(f"{line}: a price must be between 0 and {MAX_PRICE}")
    return price


def inventory_number(number: str, country: str, capabilities: Iterable[str] = ("sms",), price_setup: str = "0",
                     price_monthly: str = "0", *, line: str = "number") -> InventoryNumber:
    """One inventory row, checked (the operator's file is input like any other)."""
    try:
        e164 = check_e164(number)
        cc = check_country(country)
    except InvalidArgument as exc:
        raise InventoryInvalid(f"{line}: {exc}") from None
    caps = tuple(sorted({c.strip().lower() for c in capabilities if c.strip()})) or ("sms",)
    if any(c not in ("sms", "mms", "voice") for c in caps):
        raise InventoryInvalid(f"{line}: capabilities are sms, mms or voice")
    return InventoryNumber(e164, cc, caps, _price(price_setup, line), _price(price_monthly, line))
