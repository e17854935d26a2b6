"""Which counters a login attempt from a client address counts against (domain.throttle_counters)."""

from __future__ import annotations

import pytest

from services.identity.domain.sessions import ThrottlePolicy, throttle_counters

POLICY = ThrottlePolicy(address_max_failures=100, ipv6_network_max_failures=90, ipv4_network_max_failures=300)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("203.0.113.77", [("address", "203.0.113.77", 100), ("network", "203.0.113.0/24", 300)]),
        ("::ffff:203.0.113.77", [("address", "203.0.113.77", 100), ("network", "203.0.113.0/24", 300)]),
        ("2001:DB8:1:2:aaaa::7", [("address", "2001:db8:1:2:aaaa::7", 100), ("network", "2001:db8:1:2::/64", 90)]),
        ("::1", [("address", "::1", 100), ("network", "::/64", 90)]),
        ("unix:/run/gw.sock", [("address", "unix:/run/gw.sock", 100)]),
        ("", []),
    ],
)
def test_counters(address: str, expected: list[tuple[str, str, int]]) -> None:
    assert throttle_counters(address, POLICY) == expected


def test_rotating_inside_a_64_stays_in_one_network() -> None:
    nets = {throttle_counters(f"2001:db8:5:6:{i:x}::{i:x}", POLICY)[1][1] for i in range(1, 500)}
    assert nets == {"2001:db8:5:6::/64"}
