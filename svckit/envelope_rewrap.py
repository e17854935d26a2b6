"""Moving a caller's stored blobs to their accounts' newest key version, in batches resumable from a cursor
(`rewrap_all`), through `svckit.envelope.Envelope.rewrap_many` (the ciphertext untouched, never a plaintext
outside the keys service)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from svckit.envelope import Envelope


@dataclass
class RewrapProgress:
    """Where a `rewrap_all` run is: resume a later run from `cursor`."""

    cursor: Hashable | None = None
    scanned: int = 0
    changed: int = 0
    failed: int = 0
    failures: dict[str, int] | None = None


Row = tuple[Any, int, bytes]  # (cursor of the row, account id, blob)


async def rewrap_all(
    envelope: Envelope,
    fetch: Callable[[Any, int], Awaitable[Sequence[Row]]],
    save: Callable[[list[tuple[Any, bytes]]], Awaitable[None]],
    *,
    start: Any = None,
    batch: int = 500,
    on_progress: Callable[[RewrapProgress], Awaitable[None]] | None = None,
) -> RewrapProgress:
    """Move every stored blob of a table to its account's newest key version, in batches.

    `fetch(after_cursor, limit)` returns the next rows in cursor order (after `start`; None = from the start);
    `save(updates)` stores the changed blobs ((cursor, new blob)) and must be idempotent. After each batch is
    saved, `on_progress` gets the progress (persist `progress.cursor` there to resume after a crash: rows
    before it are done). Rows that fail (e.g. a retired version) are counted and left as they are.
    """
    progress = RewrapProgress(cursor=start, failures={})
    while True:
        rows = await fetch(progress.cursor, batch)
        if not rows:
            return progress
        by_account: dict[int, list[int]] = {}
        for i, (_, account_id, _) in enumerate(rows):
            by_account.setdefault(account_id, []).append(i)
        updates: list[tuple[Any, bytes]] = []
        for account_id, indexes in by_account.items():
            outcomes = await envelope.rewrap_many(account_id, [rows[i][2] for i in indexes])
            for i, outcome in zip(indexes, outcomes, strict=True):
                if outcome.changed:
                    updates.append((rows[i][0], outcome.blob))
                elif outcome.error_reason:
                    progress.failed += 1
                    assert progress.failures is not None
                    progress.failures[outcome.error_reason] = progress.failures.get(outcome.error_reason, 0) + 1
        if updates:
            await save(updates)
        progress.scanned += len(rows)
        progress.changed += len(updates)
        progress.cursor = rows[-1][0]
        if on_progress is not None:
            await on_progress(progress)
        if len(rows) < batch:
            return progress
