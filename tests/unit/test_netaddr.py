from __future__ import annotations

import pytest

from svckit.netaddr import client_network


@pytest.mark.parametrize(
    ("address", "network"),
    [
        ("203.0.113.77", "203.0.113.0/24"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),  # same /64: one network however the client rotates
        ("::ffff:198.51.100.9", "198.51.100.0/24"),  # IPv4-mapped counts as IPv4
        ("fe80::1%eth0", "fe80::/64"),
        ("not an address", "not an address"),
        ("", ""),
    ],
)
def test_client_network(address: str, network: str) -> None:
    assert client_network(address) == network


def test_other_prefixes() -> None:
    assert client_network("203.0.113.77", v4_prefix=32) == "203.0.113.77/32"
    assert client_network("2001:db8:1:2::1", v6_prefix=48) == "2001:db8:1::/48"
