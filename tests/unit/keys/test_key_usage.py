"""The retirement rule over the data owners' rewrap reports (services/keys/service/key_usage.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from services.keys.domain.errors import RewrapIncomplete
from services.keys.domain.key_rings import StoredKek
from services.keys.service.key_usage import KeyUsage, KeyUsageInvalid

T0 = datetime(2026, 1, 1, tzinfo=UTC)
VERSIONS = [StoredKek(5, 1, None, T0), StoredKek(5, 2, None, T0 + timedelta(hours=1))]


class Store:
    def __init__(self) -> None:
        self.passes: dict[str, datetime] = {}
        self.usage: dict[str, list[tuple[int, int, int]]] = {}

    async def replace_key_usage(
        self, service: str, pass_start: datetime, now: datetime, usage: Sequence[tuple[int, int, int]]
    ) -> bool:
        if service in self.passes and self.passes[service] > pass_start:
            return False
        self.passes[service], self.usage[service] = pass_start, list(usage)
        return True

    async def key_usage_below(
        self, account_id: int, minimum: int, services: Sequence[str]
    ) -> list[tuple[str, datetime | None, int]]:
        return [(s, self.passes.get(s), sum(n for a, v, n in self.usage.get(s, []) if a == account_id and v < minimum))
                for s in sorted(services)]


def usage(store: Store) -> KeyUsage:
    return KeyUsage(store, ["identity", "messaging"], now=lambda: T0)  # type: ignore[arg-type]


async def test_refused_until_every_owner_passed_after_the_version_with_nothing_below() -> None:
    store = Store()
    rule = usage(store)
    with pytest.raises(RewrapIncomplete) as none:
        await rule.check_retirable(5, 2, VERSIONS)
    assert none.value.reason == "REWRAP_INCOMPLETE"
    assert "identity: no rewrap pass reported yet; messaging: no rewrap pass reported yet" in none.value.message
    # Passes from before version 2 existed: their counts are shown, but they prove nothing about version 2.
    await rule.report("messaging", T0, [(5, 1, 7), (5, 1, 3), (6, 1, 99)])
    await rule.report("identity", T0, [])
    with pytest.raises(RewrapIncomplete) as stale:
        await rule.check_retirable(5, 2, VERSIONS)
    assert "10 items are still under older versions" in stale.value.message
    assert "messaging: 10 items below version 2 at its last pass" in stale.value.message
    # Passes after version 2: messaging still counts 2 items it could not move.
    later = T0 + timedelta(hours=2)
    await rule.report("messaging", later, [(5, 1, 2), (5, 2, 8)])
    await rule.report("identity", later, [(5, 2, 1)])
    with pytest.raises(RewrapIncomplete) as left:
        await rule.check_retirable(5, 2, VERSIONS)
    assert "messaging: 2 items still under versions below 2" in left.value.message
    assert "identity" not in left.value.message
    await rule.report("messaging", later, [(5, 2, 10)])
    await rule.check_retirable(5, 2, VERSIONS)  # nothing left: allowed


async def test_an_older_pass_does_not_replace_a_newer_one_and_bad_reports_are_refused() -> None:
    store = Store()
    rule = usage(store)
    assert await rule.report("messaging", T0 + timedelta(hours=2), [(5, 2, 1)])
    assert not await rule.report("messaging", T0, [(5, 1, 1)])
    assert store.usage["messaging"] == [(5, 2, 1)]
    for bad in ([(0, 1, 1)], [(5, 0, 1)], [(5, 1, -1)]):
        with pytest.raises(KeyUsageInvalid):
            await rule.report("messaging", T0, bad)
    with pytest.raises(KeyUsageInvalid):
        await rule.report("", T0, [])


async def test_no_data_owners_configured_means_no_check() -> None:
    await KeyUsage(Store(), []).check_retirable(5, 2, VERSIONS)  # type: ignore[arg-type]
