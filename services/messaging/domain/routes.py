"""Carrier routes: which carrier serves a destination, and the fallback when that carrier is down.

A route table is written `KEY[,KEY...]=carrier;...;*=carrier`, e.g. `AU,NZ=smpp;1=http;*=simulator`.
A key is an ISO 3166-1 alpha-2 country (the region `phonenumbers` gives the E.164 destination), a digit
prefix of the E.164 number without its `+` (`1`, `6141`), or `*` (every other destination). The most
specific match wins: a longer digit prefix beats a shorter one, and a country beats a digit prefix no longer
than its calling code (`CA` beats `1`, `1416` beats `CA`). `*` is required, so every destination has a
carrier and a table that forgets one is refused at start-up rather than at send time.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

import phonenumbers

from services.messaging.domain.recipients import REGION_SHAPE

DEFAULT_KEY: Final = "*"
_PREFIX_SHAPE: Final = re.compile(r"[1-9][0-9]{0,14}")
_CARRIER_SHAPE: Final = re.compile(r"[a-z][a-z0-9_-]{0,31}")


class RouteTableError(ValueError):
    """A route table or fallback setting that cannot be used; the message names the problem (and never a
    destination number: the table holds only countries, prefixes and carrier names)."""


@dataclass(frozen=True)
class RouteTable:
    """Destination -> carrier name. `fallback` ("" for none) takes a batch its routed carrier refused
    untouched (CarrierDown)."""

    default: str
    countries: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    prefixes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    fallback: str = ""

    @property
    def carriers(self) -> frozenset[str]:
        """Every carrier the table can send through (routes and the fallback)."""
        names = {self.default, *self.countries.values(), *self.prefixes.values()}
        if self.fallback:
            names.add(self.fallback)
        return frozenset(names)

    def carrier_for(self, e164: str) -> str:
        """The carrier of one destination (`+` and digits). Never fails: an unparseable number has no
        region and goes by its digit prefix or the default."""
        return _match(self, e164)

    def fallback_for(self, carrier: str) -> str:
        """The carrier that takes over from `carrier` when it is down ("" when none would help)."""
        return self.fallback if self.fallback and self.fallback != carrier else ""


def single(carrier: str) -> RouteTable:
    """Everything through one carrier, no fallback: what MESSAGING_CARRIER alone means."""
    return RouteTable(default=_carrier_name(carrier, "MESSAGING_CARRIER"))


def parse_routes(spec: str, fallback: str = "", known: Iterable[str] | None = None) -> RouteTable:
    """Parse MESSAGING_CARRIER_ROUTES and MESSAGING_CARRIER_FALLBACK. `known`: the carrier names this
    build can construct; any other name is refused. Raises RouteTableError naming the problem."""
    known_set = frozenset(known) if known is not None else None
    countries: dict[str, str] = {}
    prefixes: dict[str, str] = {}
    default = ""
    if not spec.strip():
        raise RouteTableError("MESSAGING_CARRIER_ROUTES is empty")
    entries = spec.split(";")
    for n, raw in enumerate(entries, start=1):
        entry = raw.strip()
        if not entry:
            if n == len(entries):
                continue  # a trailing ';'
            raise RouteTableError(f"route {n} is empty (two ';' in a row)")
        keys, sep, name = entry.partition("=")
        if not sep or not keys.strip():
            raise RouteTableError(f"route {n} must be KEY[,KEY...]=carrier, got {entry!r}")
        carrier = _carrier_name(name.strip(), f"route {n}", known_set)
        for key in (k.strip() for k in keys.split(",")):
            if key == DEFAULT_KEY:
                if default:
                    raise RouteTableError("route table has '*' twice")
                default = carrier
            elif REGION_SHAPE.fullmatch(key.upper()) and not key.isdigit():
                region = key.upper()
                if not phonenumbers.country_code_for_region(region):
                    raise RouteTableError(f"route {n}: {key!r} is not a country phonenumbers knows")
                if region in countries:
                    raise RouteTableError(f"route table has {region} twice")
                countries[region] = carrier
            elif _PREFIX_SHAPE.fullmatch(key.lstrip("+")):
                digits = key.lstrip("+")
                if digits in prefixes:
                    raise RouteTableError(f"route table has prefix {digits} twice")
                prefixes[digits] = carrier
            else:
                raise RouteTableError(
                    f"route {n}: key {key!r} is neither a country (AU), a digit prefix (614) nor '*'")
    if not default:
        raise RouteTableError("route table has no default route ('*=carrier')")
    fb = _carrier_name(fallback.strip(), "MESSAGING_CARRIER_FALLBACK", known_set) if fallback.strip() else ""
    return RouteTable(default=default, countries=MappingProxyType(countries),
                      prefixes=MappingProxyType(prefixes), fallback=fb)


def _carrier_name(name: str, where: str, known: frozenset[str] | None = None) -> str:
    if not _CARRIER_SHAPE.fullmatch(name):
        raise RouteTableError(f"{where}: carrier name {name!r} must be lower-case letters, digits, '-' or '_'")
    if known is not None and name not in known:
        raise RouteTableError(f"{where}: unknown carrier {name!r}; known: {', '.join(sorted(known))}")
    return name


def _match(table: RouteTable, e164: str) -> str:
    digits = e164.lstrip("+")
    best, best_score = table.default, 0.0
    for length in range(min(len(digits), 15), 0, -1):  # longest digit prefix first
        carrier = table.prefixes.get(digits[:length])
        if carrier is not None:
            best, best_score = carrier, float(length)
            break
    if table.countries:
        region, cc_len = _region_of(e164)
        carrier = table.countries.get(region) if region else None
        if carrier is not None and cc_len + 0.5 > best_score:
            best = carrier
    return best


@functools.lru_cache(maxsize=65_536)
def _region_of(e164: str) -> tuple[str, int]:
    """(ISO region, length of the calling code) of an E.164 number; ("", 0) when phonenumbers cannot
    place it."""
    try:
        number = phonenumbers.parse(e164 if e164.startswith("+") else "+" + e164, None)
    except phonenumbers.NumberParseException:
        return "", 0
    region = phonenumbers.region_code_for_number(number) or ""
    return (region, len(str(number.country_code))) if region not in ("", "ZZ", "001") else ("", 0)
