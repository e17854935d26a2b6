"""Default senders (issue 21, ClickSend's /v3/senders/default-senders shapes): the `from` a message with an empty
`from` is sent as, per account and optionally per user (ClickSend's subaccount_id), per destination country, for
the product SMS, as an ordered list of strategies (each a sender of the account: a dedicated number, a verified own
number, an approved alpha tag, or the shared number).

Pure rules only: checking what a customer asks for, and choosing the sender at send time. Which senders are the
account's active identities, and which the caller may use, are decided elsewhere and passed in as predicates."""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from svckit.errors import FailedPrecondition, InvalidArgument

PRODUCT_SMS: Final = "SMS"
MAX_STRATEGIES: Final = 5
MAX_NOTE: Final = 200
_COUNTRY: Final = re.compile(r"[A-Z]{2}")
_NUMBER: Final = re.compile(r"\+?[0-9]{2,15}")
_ALPHA: Final = re.compile(r"[A-Za-z0-9 ]{3,11}")


class SenderType(enum.Enum):
    """ClickSend's sender types this platform has: dedicated numbers are `longcode`, verified numbers
    `own_number`, approved tags `alpha_tag`; `shared_longcode` is the shared system number (no sender id)."""

    LONGCODE = "longcode"
    OWN_NUMBER = "own_number"
    ALPHA_TAG = "alpha_tag"
    SHARED_LONGCODE = "shared_longcode"


class StrategyStatus(enum.Enum):
    ENABLED = "ENABLED"
    DISABLED = "DISABLED"


class InvalidDefaultSender(InvalidArgument):
    reason = "INVALID_DEFAULT_SENDER"


class DefaultSenderNotActive(FailedPrecondition):
    """A strategy names a sender that is not one of the account's active identities (HTTP 400)."""

    reason = "DEFAULT_SENDER_NOT_ACTIVE"


@dataclass(frozen=True, slots=True)
class Strategy:
    sender_type: SenderType
    sender_id: str  # "" for the shared number
    sender_country: str = ""
    status: StrategyStatus = StrategyStatus.ENABLED
    note: str = ""


@dataclass(frozen=True, slots=True)
class DefaultSender:
    id: str
    account_id: int
    user_id: int  # who set it
    subaccount_id: int  # the user it applies to; 0 = every user of the account
    country: str
    strategies: tuple[Strategy, ...]
    product: str = PRODUCT_SMS
    create_time: float = 0.0
    update_time: float = 0.0

    @property
    def enabled(self) -> bool:
        return any(s.status is StrategyStatus.ENABLED for s in self.strategies)


def check_country(value: str) -> str:
    c = (value or "").strip().upper()
    if not _COUNTRY.fullmatch(c):
        raise InvalidDefaultSender("country_code must be an ISO 3166-1 alpha-2 code, e.g. AU")
    return c


def check_product(value: str) -> str:
    p = (value or PRODUCT_SMS).strip().upper()
    if p != PRODUCT_SMS:
        raise InvalidDefaultSender("product_type must be SMS")
    return p


def check_strategy(sender_type: str, sender_id: str, sender_country: str = "", status: str = "",
                   note: str = "") -> Strategy:
    try:
        kind = SenderType((sender_type or "").strip())
    except ValueError:
        allowed = ", ".join(t.value for t in SenderType)
        raise InvalidDefaultSender(f"sender_type must be one of {allowed}") from None
    try:
        state = StrategyStatus((status or "ENABLED").strip().upper())
    except ValueError:
        raise InvalidDefaultSender("a strategy's status must be ENABLED or DISABLED") from None
    value = (sender_id or "").strip()
    if kind is SenderType.SHARED_LONGCODE:
        if value:
            raise InvalidDefaultSender("a shared_longcode strategy names no sender_id")
    elif kind is SenderType.ALPHA_TAG:
        if not _ALPHA.fullmatch(value) or not any(c.isalpha() for c in value):
            raise InvalidDefaultSender("an alpha_tag sender_id is 3-11 letters, digits or spaces with a letter")
    else:
        compact = value.replace(" ", "")
        if not _NUMBER.fullmatch(compact):
            raise InvalidDefaultSender(f"a {kind.value} sender_id is a phone number, e.g. +61411111111")
        value = "+" + compact.lstrip("+")
    if len(note or "") > MAX_NOTE:
        raise InvalidDefaultSender(f"a strategy's note is at most {MAX_NOTE} characters")
    country = (sender_country or "").strip().upper()
    if country and not _COUNTRY.fullmatch(country):
        raise InvalidDefaultSender("sender_country_code must be an ISO 3166-1 alpha-2 code, e.g. AU")
    return Strategy(kind, value, country, state, note or "")


def check_strategies(strategies: Sequence[Strategy]) -> tuple[Strategy, ...]:
    if not 1 <= len(strategies) <= MAX_STRATEGIES:
        raise InvalidDefaultSender(f"default_sender_strategies must hold 1-{MAX_STRATEGIES} strategies")
    named = [s.sender_id for s in strategies if s.sender_id]
    if len(set(named)) != len(named):
        raise InvalidDefaultSender("a sender appears twice in default_sender_strategies")
    return tuple(strategies)


def named_senders(strategies: Iterable[Strategy]) -> list[str]:
    """The senders a default names (the shared number is not one of them): each must be an active identity."""
    return [s.sender_id for s in strategies if s.sender_id]


def choose_sender(defaults: Iterable[DefaultSender], subaccount_id: int, country: str,
                  active: Callable[[str], bool], permitted: Callable[[str], bool]) -> str:
    """The `from` for a message with none to `country`: the caller's own default for the country beats the
    account's; within one, the first ENABLED strategy whose sender is still an active identity of the account
    (`active`) and one the caller may send from (`permitted`: its key's and user's sender limits); a user's
    default with none usable falls back to the account's. A shared number strategy, or nothing usable, gives ""
    (the shared number)."""
    mine = [d for d in defaults if d.country == country and d.product == PRODUCT_SMS
            and d.subaccount_id in (subaccount_id, 0)]
    mine.sort(key=lambda d: d.subaccount_id == 0)  # the user's own first
    for d in mine:
        for s in d.strategies:
            if s.status is not StrategyStatus.ENABLED:
                continue
            if s.sender_type is SenderType.SHARED_LONGCODE:
                return ""
            if active(s.sender_id) and permitted(s.sender_id):
                return s.sender_id
    return ""


@dataclass(frozen=True, slots=True)
class StoredDefault:
    """A default sender as stored: its strategies sealed under the account's key."""

    id: str
    account_id: int
    user_id: int
    subaccount_id: int
    country: str
    product: str
    strategies_ct: bytes
    create_time: float = 0.0
    update_time: float = 0.0


def strategies_json(strategies: Iterable[Strategy]) -> bytes:
    return json.dumps([{"t": s.sender_type.value, "s": s.sender_id, "c": s.sender_country, "st": s.status.value,
                        "n": s.note} for s in strategies], separators=(",", ":")).encode()


def strategies_of(raw: bytes) -> tuple[Strategy, ...]:
    return tuple(Strategy(SenderType(d["t"]), d["s"], d["c"], StrategyStatus(d["st"]), d["n"])
                 for d in json.loads(raw))
