"""Keys' own figures on /metrics (issue 16): the ring/KEK cache's lookups, from which SREs read its hit
ratio, and the rewrap backlog per data owner (items still under an older key version than their account's
current one, which must reach 0 before that version can be retired) - over the real keys service and
PostgreSQL, rendered as Prometheus scrapes them."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client.parser import text_string_to_metric_families

from svckit.app import App


async def _samples(app: App) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = (await app.metrics.render()).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _kek(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], result: str) -> float:
    return samples[("sendsafe_cache_lookups_total", frozenset({("cache", "keys_kek"), ("result", result)}))]


async def test_kek_cache_lookups_and_rewrap_backlog_are_scraped(keys_app: App) -> None:
    rings, usage = keys_app.extras["rings"], keys_app.extras["usage"]
    account = 81_601
    before = await _samples(keys_app)
    await rings.generate_data_key(account)  # type: ignore[attr-defined]  # the ring is loaded (a miss)...
    await rings.generate_data_key(account)  # type: ignore[attr-defined]  # ...then served from the cache
    after = await _samples(keys_app)
    assert _kek(after, "miss") > _kek(before, "miss")
    assert _kek(after, "hit") > _kek(before, "hit")

    # messaging's pass counted 5 items under version 1 and 3 under 2; once version 2 is current, the 5 are
    # its backlog. A later pass that found everything under version 2 leaves none.
    await rings.rotate_account_key(account)  # type: ignore[attr-defined]
    await usage.report("messaging", datetime.now(UTC), [(account, 1, 5), (account, 2, 3)])  # type: ignore[attr-defined]
    backlog = ("sendsafe_keys_rewrap_backlog_items", frozenset({("service", "messaging")}))
    assert (await _samples(keys_app))[backlog] == 5
    await usage.report("messaging", datetime.now(UTC), [(account, 2, 8)])  # type: ignore[attr-defined]
    assert (await _samples(keys_app)).get(backlog, 0) == 0
