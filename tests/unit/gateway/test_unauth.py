"""gateway.unauth without a gateway: network prefixes, what is summarised, bounded memory."""

from __future__ import annotations

import pytest

from gateway.unauth import UnauthenticatedRequests
from sendsafe.audit.v1 import event_pb2


async def test_networks_are_counted_by_prefix() -> None:
    """The /64 (IPv6) and /24 (IPv4) share one count; another network has its own."""
    recorded: list[event_pb2.Event] = []

    async def record(ev: event_pb2.Event) -> None:
        recorded.append(ev)

    limiter = UnauthenticatedRequests(record, limit=2, window=60, dedup=0, clock=lambda: 1000.0)
    assert limiter.hit("2001:db8:1:2::1") is None and limiter.hit("2001:db8:1:2:ffff::9") is None
    assert limiter.hit("2001:db8:1:2:abcd::1") == 20  # rotating inside the /64 does not help
    assert limiter.hit("2001:db8:1:3::1") is None
    assert limiter.hit("198.51.100.1") is None and limiter.hit("198.51.100.200") is None
    assert limiter.hit("::ffff:198.51.100.7") == 20
    assert limiter.hit("198.51.101.1") is None


@pytest.mark.parametrize("attributed", [True, False])
async def test_failures_of_an_account_stay_one_event_each_unless_limited(attributed: bool) -> None:
    recorded: list[event_pb2.Event] = []

    async def record(ev: event_pb2.Event) -> None:
        recorded.append(ev)

    unauth = UnauthenticatedRequests(record, limit=100, window=60, dedup=60, clock=lambda: 5.0)
    for _ in range(3):
        ev = event_pb2.Event(event_id="e", action="gateway.unauthenticated", error_reason="INVALID_CREDENTIALS")
        ev.source.client_address = "203.0.113.9"
        if attributed:
            ev.actor.account_id = 42
        await unauth.record(ev)
    assert len(recorded) == (3 if attributed else 1)
    await unauth.close()
    if attributed:
        assert len(recorded) == 3 and "count" not in recorded[-1].details
    else:
        assert len(recorded) == 2 and recorded[-1].details["count"] == "3"


async def test_a_full_table_summarises_its_oldest_window_early() -> None:
    recorded: list[event_pb2.Event] = []

    async def record(ev: event_pb2.Event) -> None:
        recorded.append(ev)

    unauth = UnauthenticatedRequests(record, limit=0, window=60, dedup=60, max_entries=2, clock=lambda: 5.0)
    for network in ("203.0.113.9", "203.0.113.9", "198.51.100.1", "192.0.2.1"):
        ev = event_pb2.Event(event_id=network, action="gateway.not_found")
        ev.source.client_address = network
        await unauth.record(ev)
    summaries = [(e.details["summarises"], e.details["count"]) for e in recorded if "summarises" in e.details]
    assert summaries == [("203.0.113.9", "2")] and len(recorded) == 4  # 3 first events + 1 early summary
    assert unauth.hit("203.0.113.9") is None  # limit 0: no limit
