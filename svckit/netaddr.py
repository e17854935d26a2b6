"""The network an address belongs to, for limits that must not be dodged by moving within it.

An IPv6 client usually controls a whole /64 (and rotates through it freely), an IPv4 client rarely more than
an address, but NAT and small allocations make the /24 the useful unit to count abuse in. Shared by every
limit keyed on where a request came from (the gateway's unauthenticated-request limit, login throttling).
"""

from __future__ import annotations

import ipaddress
from typing import Final

IPV4_PREFIX: Final = 24
IPV6_PREFIX: Final = 64


def client_network(address: str, *, v4_prefix: int = IPV4_PREFIX, v6_prefix: int = IPV6_PREFIX) -> str:
    """The CIDR network of `address` ("203.0.113.0/24", "2001:db8:1:2::/64"). An IPv4-mapped IPv6 address
    counts as its IPv4 address; a zone index is ignored; anything unparseable is returned as is (its own
    bucket: an empty address stays "")."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = v4_prefix if ip.version == 4 else v6_prefix
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))
