"""The bounded, time-limited cache the KEK cache keeps rings and KEKs in (svckit.ttlcache)."""

from __future__ import annotations

from svckit.ttlcache import TtlCache


def test_entries_expire_and_the_least_recently_used_goes_first() -> None:
    now = [0.0]
    cache: TtlCache[str, int] = TtlCache(10, 2, clock=lambda: now[0])
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)  # evicts b (least recently used)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    now[0] = 10
    assert cache.get("a") is None and len(cache) == 1
    cache.pop("c")
    assert len(cache) == 0
