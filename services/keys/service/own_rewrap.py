"""Keys' own rewrap pass: what the keys service itself stores sealed under account keys (the numbers of API
keys' sender limits, `api_keys.send_sender_numbers_ct`) moved to each account's newest key version, then
counted per account and version and reported as the data owner "keys" (KeyUsage, as the other data owners
do through ReportKeyUsage), so retiring a version is refused (REWRAP_INCOMPLETE) while a key's sealed limit
is still under it - before, retirement went through and those API keys then failed verification.

The same mechanism as svckit.envelope_rewrap (periodic, batched over a column in cursor order, an account
whose keys take no rewrap skipped and still counted), with KeyRingService.rewrap called in-process: the items
are the keys service's own ciphertexts, each bound to its encryption context (the API key's id)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.keys.domain.envelope import parse_blob
from services.keys.domain.errors import KeysDestroyed, KeysPendingDestruction
from services.keys.service.key_rings import KeyRingService
from services.keys.service.key_usage import KeyUsage
from services.keys.service.ports import SealedItems, utcnow
from svckit.errors import DomainError

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class SealedColumn:
    """One column of keys' own ciphertexts: `column` (fetch/save in cursor order) and the encryption context
    each item was sealed with, from its row's unique columns."""

    column: SealedItems
    context: Callable[[tuple[Any, ...]], Mapping[str, str]]


@dataclass
class OwnRewrapReport:
    scanned: int = 0
    changed: int = 0
    failed: int = 0
    skipped: int = 0  # items of accounts whose keys take no rewrap (closing or destroyed), left as they are
    refused: dict[int, str] = field(default_factory=dict)  # such accounts -> reason
    failures: dict[str, int] = field(default_factory=dict)
    usage: dict[tuple[int, int], int] = field(default_factory=dict)  # (account, version) -> items


def _version(blob: bytes) -> int:
    try:
        return parse_blob(blob).version
    except DomainError:
        return 0


class OwnRewrap:
    """One complete pass over keys' own sealed columns, reported to KeyUsage as `service_name`."""

    def __init__(
        self, rings: KeyRingService, usage: KeyUsage, columns: list[SealedColumn], *, service_name: str = "keys",
        batch: int = 500, now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._rings = rings
        self._usage = usage
        self._columns = columns
        self._name = service_name
        self._batch = batch
        self._now = now

    async def run_pass(self) -> OwnRewrapReport:
        start = self._now()
        report = OwnRewrapReport()
        for sealed in self._columns:
            await self._column(sealed, report)
        await self._usage.report(self._name, start, [(a, v, n) for (a, v), n in report.usage.items()])
        if report.changed or report.failed or report.skipped:
            _LOG.info("keys' own rewrap: %d items, %d moved to the newest key version, %d failed %s, %d skipped",
                      report.scanned, report.changed, report.failed, report.failures, report.skipped)
        return report

    def _count(self, report: OwnRewrapReport, account_id: int, blob: bytes) -> None:
        if version := _version(blob):
            report.usage[(account_id, version)] = report.usage.get((account_id, version), 0) + 1

    async def _column(self, sealed: SealedColumn, report: OwnRewrapReport) -> None:
        cursor: Any = None
        while True:
            rows = await sealed.column.fetch(cursor, self._batch)
            if not rows:
                return
            by_account: dict[int, list[int]] = {}
            for i, (_, account_id, _) in enumerate(rows):
                by_account.setdefault(account_id, []).append(i)
            updates: list[tuple[Any, bytes]] = []
            for account_id, indexes in by_account.items():
                if account_id not in report.refused:
                    items = [(str(i), rows[i][2], sealed.context(rows[i][0][0])) for i in indexes]
                    try:
                        outcomes, _ = await self._rings.rewrap(account_id, items)
                    except (KeysPendingDestruction, KeysDestroyed) as err:
                        report.refused[account_id] = err.reason
                        _LOG.info("keys' own rewrap skips account %d: its keys take no rewrap (%s)",
                                  account_id, err.reason)
                if account_id in report.refused:  # closing or destroyed: left as they are, still counted
                    for i in indexes:
                        self._count(report, account_id, rows[i][2])
                    report.skipped += len(indexes)
                    continue
                for i, outcome in zip(indexes, outcomes, strict=True):
                    if outcome.error_reason:
                        report.failed += 1
                        report.failures[outcome.error_reason] = report.failures.get(outcome.error_reason, 0) + 1
                        self._count(report, account_id, rows[i][2])
                        continue
                    self._count(report, account_id, outcome.blob)
                    if outcome.changed:
                        updates.append((rows[i][0], outcome.blob))
            if updates:
                await sealed.column.save(updates)
            report.scanned += len(rows)
            report.changed += len(updates)
            cursor = rows[-1][0]
            if len(rows) < self._batch:
                return
