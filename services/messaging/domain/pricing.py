"""Per-part prices (per country), credit allocation, currencies, and the string formats ClickSend uses for
prices and balances."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from types import MappingProxyType
from typing import Final

from services.messaging.domain.recipients import REGION_SHAPE


def _check_amount(what: str, value: Decimal) -> None:
    if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
        raise ValueError(f"{what} must be a finite, non-negative Decimal, got {value!r}")


@dataclass(frozen=True)
class PriceTable:
    """Price per SMS part by recipient country (ISO2), with a default for countries not listed."""

    default: Decimal
    per_country: Mapping[str, Decimal] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        _check_amount("default price", self.default)
        prices: dict[str, Decimal] = {}
        for key, price in self.per_country.items():
            region = key.strip().upper()
            if not REGION_SHAPE.fullmatch(region):
                raise ValueError(f"price table key must be an ISO 3166-1 alpha-2 code, got {key!r}")
            if region in prices:
                raise ValueError(f"price table has {region} twice")
            _check_amount(f"price for {region}", price)
            prices[region] = price
        object.__setattr__(self, "per_country", MappingProxyType(prices))

    @classmethod
    def from_mapping(cls, prices: Mapping[str, Decimal], default: Decimal) -> PriceTable:
        return cls(default=default, per_country=dict(prices))

    def price_per_part(self, country: str) -> Decimal:
        return self.per_country.get(country.strip().upper(), self.default)

    def price_for(self, country: str, parts: int) -> Decimal:
        """Price of `parts` SMS parts to `country` (test recipients are free: the caller decides)."""
        if parts < 0:
            raise ValueError(f"parts must be >= 0, got {parts}")
        return self.price_per_part(country) * parts


_PRICE_QUANTUM: Final = Decimal("0.0001")
_BALANCE_QUANTUM: Final = Decimal("0.000001")


def _format_fixed(value: Decimal, quantum: Decimal) -> str:
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValueError(f"expected a finite Decimal, got {value!r}")
    rounded = value.quantize(quantum, rounding=ROUND_HALF_UP)
    if rounded.is_zero():
        rounded = abs(rounded)  # never "-0.0000"
    return f"{rounded:f}"


@functools.lru_cache(maxsize=1024)
def format_price(value: Decimal) -> str:
    """ClickSend's per-message price string: 4 decimals, half-up ("0.0770"). Memoised: a send prices
    every message, and prices come from a short table."""
    return _format_fixed(value, _PRICE_QUANTUM)


def format_balance(value: Decimal) -> str:
    """ClickSend's account balance string: 6 decimals, half-up ("12.500000")."""
    return _format_fixed(value, _BALANCE_QUANTUM)


def allocate_credit(balance: Decimal, prices: list[Decimal]) -> list[bool]:
    """Which messages the balance pays for, in request order, without ever going negative.

    A message that does not fit is refused (INSUFFICIENT_CREDIT) and the next, possibly cheaper,
    message is still considered: each message is judged on its own, as ClickSend reports per message.
    """
    remaining = balance
    out: list[bool] = []
    for price in prices:
        _check_amount("price", price)
        if price <= remaining:
            remaining -= price
            out.append(True)
        else:
            out.append(False)
    return out


def parse_price_table(spec: str, default: Decimal) -> PriceTable:
    """`"AU=0.0770,US=0.0500"` (ISO2=price per part) plus the default for every other country."""
    prices: dict[str, Decimal] = {}
    for item in spec.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"price table entry must be CC=price, got {item.strip()!r}")
        region = key.strip().upper()
        if region in prices:
            raise ValueError(f"price table has {region} twice")
        try:
            prices[region] = Decimal(value.strip())
        except ArithmeticError as exc:
            raise ValueError(f"price for {region} is not a number") from exc
    return PriceTable(default=default, per_country=prices)


@dataclass(frozen=True, slots=True)
class Currency:
    """ClickSend's `_currency` block."""

    currency_name_short: str
    currency_prefix_d: str
    currency_prefix_c: str
    currency_name_long: str


CURRENCIES: Final[Mapping[str, Currency]] = MappingProxyType(
    {
        "AUD": Currency("AUD", "$", "c", "Australian Dollars"),
        "USD": Currency("USD", "$", "c", "US Dollars"),
        "GBP": Currency("GBP", "£", "p", "British Pounds"),
        "EUR": Currency("EUR", "€", "c", "Euros"),
        "NZD": Currency("NZD", "$", "c", "New Zealand Dollars"),
    }
)


def currency_for(code: str) -> Currency:
    try:
        return CURRENCIES[code.strip().upper()]
    except KeyError:
        raise ValueError(f"unknown currency {code!r}; known: {', '.join(sorted(CURRENCIES))}") from None
