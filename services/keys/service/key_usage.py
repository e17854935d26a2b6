"""What the data-owning services still hold under each account key version, and the rule that a version
is retired only once nothing is left under it.

The keys service cannot read the other services' tables (each owns its database), so each data owner runs
its own rewrap pass (svckit.envelope_rewrap.rewrap_pass: every stored blob moved to its account's newest
version through the Rewrap RPC) and reports, at the end of a complete pass, its counts per account and
version (ReportKeyUsage, the caller named by its mTLS identity). Raising an account's minimum decryption
version is refused with REWRAP_INCOMPLETE, naming each service and how many items it still holds below the
new minimum, until every configured data owner has reported a pass that started after the new minimum
version was created and counted nothing below it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime

from services.keys.domain.errors import RewrapIncomplete
from services.keys.domain.key_rings import StoredKek
from services.keys.service.ports import KeyRingStore, utcnow
from svckit.errors import InvalidArgument

_LOG = logging.getLogger(__name__)
MAX_USAGE_ENTRIES = 1_000_000


class KeyUsageInvalid(InvalidArgument):
    reason = "KEY_USAGE_INVALID"


class KeyUsage:
    """Reports of the data owners' rewrap passes, and the retirement check over them."""

    def __init__(
        self, store: KeyRingStore, data_owners: Sequence[str], now: Callable[[], datetime] = utcnow
    ) -> None:
        self._store = store
        self._owners = tuple(dict.fromkeys(o for o in data_owners if o))
        self._now = now

    @property
    def data_owners(self) -> tuple[str, ...]:
        return self._owners

    async def backlog(self) -> dict[str, int]:
        """Per data owner (every configured one, 0 when nothing is left): items still under an older version
        than their account's current one, as its last pass counted them - the rewrap backlog SREs watch."""
        left = await self._store.rewrap_backlog()
        return {owner: left.get(owner, 0) for owner in self._owners} | left

    async def report(self, service: str, pass_start: datetime, usage: Sequence[tuple[int, int, int]]) -> bool:
        """Store `service`'s counts ((account, version, items)) from a pass that started at `pass_start`.
        False when a later pass of the service was already reported (several replicas)."""
        if not service:
            raise KeyUsageInvalid("the reporting service is not known")
        if len(usage) > MAX_USAGE_ENTRIES:
            raise KeyUsageInvalid(f"at most {MAX_USAGE_ENTRIES} usage entries per report")
        merged: dict[tuple[int, int], int] = {}
        for account_id, version, items in usage:
            if account_id <= 0 or version <= 0 or items < 0:
                raise KeyUsageInvalid("usage entries need a positive account id and version and items >= 0")
            merged[(account_id, version)] = merged.get((account_id, version), 0) + items
        kept = await self._store.replace_key_usage(
            service, pass_start, self._now(), [(a, v, n) for (a, v), n in merged.items()]
        )
        _LOG.info("key usage of %s (pass from %s): %d entries%s", service, pass_start.isoformat(), len(merged),
                  "" if kept else ", ignored: a later pass was already reported")
        return kept

    async def of_account(self, account_id: int) -> list[tuple[str, datetime | None, dict[int, int]]]:
        """Each data owner's last report for the account: (service, pass start or None, {version: items})."""
        if not self._owners:
            return []
        return await self._store.key_usage_of(account_id, self._owners)

    async def check_retirable(self, account_id: int, minimum: int, versions: Sequence[StoredKek]) -> None:
        """Raise RewrapIncomplete unless every data owner has rewrapped the account's items to `minimum` or
        later (a pass started after version `minimum` existed, nothing counted below it)."""
        if not self._owners:
            return
        created = next((k.create_time for k in versions if k.version == minimum), None)
        pending: list[str] = []
        total = 0
        for service, pass_start, below in await self._store.key_usage_below(account_id, minimum, self._owners):
            if pass_start is None:
                pending.append(f"{service}: no rewrap pass reported yet")
                continue
            if created is not None and pass_start < created:
                pending.append(f"{service}: {below} items below version {minimum} at its last pass, and no"
                               f" rewrap pass has finished since version {minimum} was created")
                total += below
                continue
            if below:
                pending.append(f"{service}: {below} items still under versions below {minimum}")
                total += below
        if pending:
            known = f"{total} items are still under older versions" if total else "not confirmed rewrapped yet"
            raise RewrapIncomplete(
                f"version {minimum} cannot be the minimum yet: {known} ({'; '.join(pending)}); wait for the"
                " services' rewrap passes to finish and retry"
            )
