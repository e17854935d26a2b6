"""What an API key may do beyond its scopes: send limits (rate, countries) and address allow-lists."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import phonenumbers

from services.keys.domain.errors import CidrInvalid, SendLimitsInvalid
from svckit.senders import check_allowed_senders

MAX_SEND_PER_MINUTE = 100_000
MAX_SEND_PER_DAY = 10_000_000
MAX_CIDRS = 50
MAX_COUNTRIES = 250

_REGIONS = frozenset(phonenumbers.SUPPORTED_REGIONS)


@dataclass(frozen=True)
class SendLimits:
    """What a key may send; 0 / empty = no limit of that kind (the messaging service enforces them)."""

    per_minute: int = 0
    per_day: int = 0
    countries: tuple[str, ...] = ()
    senders: tuple[str, ...] = ()  # sender ids (`from`) the key may send as (svckit.senders)

    @property
    def unlimited(self) -> bool:
        return not (self.per_minute or self.per_day or self.countries or self.senders)


NO_LIMITS = SendLimits()


def check_send_limits(
    per_minute: int, per_day: int, countries: Iterable[str], senders: Iterable[str] = ()
) -> SendLimits:
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
    return SendLimits(per_minute, per_day, tuple(cleaned), check_allowed_senders(senders))


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


def cidrs_within(child: Sequence[str], parent: Sequence[str]) -> bool:
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


def limit_within(child: int, parent: int) -> bool:
    return parent == 0 or 0 < child <= parent
