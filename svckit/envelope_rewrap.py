"""Moving a caller's stored blobs to their accounts' newest key version, in batches resumable from a cursor
(`rewrap_all`), through `svckit.envelope.Envelope.rewrap_many` (the ciphertext untouched, never a plaintext
outside the keys service).

`rewrap_pass` runs it over every encrypted column a service owns and reports to the keys service how many
items each account still has under each key version (ReportKeyUsage): the keys service refuses to retire a
version while a data owner's last complete pass counted anything below it. Each data-owning service runs it
periodically (svckit.tasks.every) over `pg_column`s of its own database."""

from __future__ import annotations

import logging
import struct
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from google.protobuf import timestamp_pb2

from sendsafe.keys.v1 import keys_service_pb2, keys_service_pb2_grpc
from svckit.envelope import Envelope, KeysRefused, RewrapOutcome

_LOG = logging.getLogger(__name__)
_BLOB_HEAD = struct.Struct(">BH")  # svckit.envelope blob: format byte, wrapped key length
_KEY_HEAD = struct.Struct(">BI")  # keys service wrapped key: format byte, KEK version (big-endian)
_WRAPPED_KEY_FORMATS = frozenset({1, 2})  # the keys service's wrapped data key formats


@dataclass
class RewrapProgress:
    """Where a `rewrap_all` run is: resume a later run from `cursor`."""

    cursor: Hashable | None = None
    scanned: int = 0
    changed: int = 0
    failed: int = 0
    failures: dict[str, int] | None = None
    versions: dict[tuple[int, int], int] = field(default_factory=dict)  # (account, KEK version) -> rows
    newest: dict[int, int] = field(default_factory=dict)  # account -> newest version the keys service returned
    skipped: int = 0  # rows of accounts whose keys take no rewrap (closing or destroyed), left as they are
    refused: dict[int, str] = field(default_factory=dict)  # such accounts -> the keys service's reason


def kek_version(blob: bytes) -> int:
    """The account key version an svckit.envelope blob's data key is wrapped under (0 if unreadable).

    The keys service's wrapped keys are self-describing and stable on disk: a format byte, then the version
    (4 bytes, big-endian) - see services/keys/domain/envelope.py."""
    if len(blob) < _BLOB_HEAD.size + _KEY_HEAD.size:
        return 0
    _, wrapped_len = _BLOB_HEAD.unpack_from(blob)
    if wrapped_len < _KEY_HEAD.size:
        return 0
    fmt, version = _KEY_HEAD.unpack_from(blob, _BLOB_HEAD.size)
    return int(version) if fmt in _WRAPPED_KEY_FORMATS else 0


Row = tuple[Any, int, bytes]  # (cursor of the row, account id, blob)


async def rewrap_all(
    envelope: Envelope,
    fetch: Callable[[Any, int], Awaitable[Sequence[Row]]],
    save: Callable[[list[tuple[Any, bytes]]], Awaitable[None]],
    *,
    start: Any = None,
    batch: int = 500,
    on_progress: Callable[[RewrapProgress], Awaitable[None]] | None = None,
    newest: dict[int, int] | None = None,
    refused: dict[int, str] | None = None,
) -> RewrapProgress:
    """Move every stored blob of a table to its account's newest key version, in batches.

    `fetch(after_cursor, limit)` returns the next rows in cursor order (after `start`; None = from the start);
    `save(updates)` stores the changed blobs ((cursor, new blob)) and must be idempotent. After each batch is
    saved, `on_progress` gets the progress (persist `progress.cursor` there to resume after a crash: rows
    before it are done). Rows that fail (e.g. a retired version) are counted and left as they are.
    `newest` (account -> newest key version seen, shared by the tables of one pass) spares the keys service
    the batches already under it.

    An account whose keys take no rewrap at all (KeysRefused: its destruction is scheduled - a closing
    account - or done) is skipped, not a reason to stop: its rows are left as they are, counted in `skipped`
    and still under their versions (so a cancelled closure cannot let keys retire a version they need), and
    the account is named in `refused` (shared by the tables of one pass like `newest`, so keys is asked, and
    the skip logged, once per pass). Its data is crypto-shredded when the destruction happens.
    """
    progress = RewrapProgress(cursor=start, failures={}, newest={} if newest is None else newest,
                              refused={} if refused is None else refused)
    while True:
        rows = await fetch(progress.cursor, batch)
        if not rows:
            return progress
        by_account: dict[int, list[int]] = {}
        for i, (_, account_id, _) in enumerate(rows):
            by_account.setdefault(account_id, []).append(i)
        updates: list[tuple[Any, bytes]] = []
        for account_id, indexes in by_account.items():
            blobs = [rows[i][2] for i in indexes]
            seen = progress.newest.get(account_id)
            if account_id in progress.refused:
                outcomes = None
            elif seen is not None and all(kek_version(b) >= seen for b in blobs):
                # Already under the newest version this pass has seen: no call. A rotation during the pass
                # leaves them counted under their (older) version, so the report stays true.
                outcomes = [RewrapOutcome(b, False) for b in blobs]
            else:
                try:
                    outcomes = await envelope.rewrap_many(account_id, blobs)
                except KeysRefused as refusal:
                    progress.refused[account_id] = refusal.reason
                    _LOG.info("rewrap skips account %d: its keys take no rewrap (%s); its data is left as it is",
                              account_id, refusal.reason)
                    outcomes = None
            if outcomes is None:  # a closing (or destroyed) account: left as it is, still counted where it is
                for b in blobs:
                    if version := kek_version(b):
                        progress.versions[(account_id, version)] = progress.versions.get((account_id, version), 0) + 1
                progress.skipped += len(blobs)
                continue
            for i, outcome in zip(indexes, outcomes, strict=True):
                tally = (account_id, kek_version(outcome.blob))
                if tally[1]:  # 0: not a readable blob, under no version
                    progress.versions[tally] = progress.versions.get(tally, 0) + 1
                    if not outcome.error_reason and tally[1] > progress.newest.get(account_id, 0):
                        progress.newest[account_id] = tally[1]
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


@dataclass(frozen=True)
class RewrapColumn:
    """One encrypted column a service owns: `name` (table.column, for logs), and its `fetch`/`save` as for
    `rewrap_all` (rows in cursor order; NULL blobs left out)."""

    name: str
    fetch: Callable[[Any, int], Awaitable[Sequence[Row]]]
    save: Callable[[list[tuple[Any, bytes]]], Awaitable[None]]


def pg_column(pool: asyncpg.Pool, table: str, column: str, cursor: Sequence[str]) -> RewrapColumn:
    """A `RewrapColumn` over `table.column` of a service's own database (the blob beside `account_id`), in
    the order of the unique `cursor` columns. The save swaps a blob only if it is still the one fetched
    (a row rewritten meanwhile, e.g. redacted by retention, is left alone). Names come from the service's
    store module, never from input."""
    keys = ", ".join(cursor)
    args = ", ".join(f"${i + 1}" for i in range(len(cursor)))
    after = f"({keys}) > ({args})"
    select = (f"SELECT {keys}, account_id, {column} AS blob FROM {table} WHERE {column} IS NOT NULL"
              f" {{where}} ORDER BY {keys} LIMIT ${len(cursor) + 1}")
    match = " AND ".join(f"{c} = ${i + 1}" for i, c in enumerate(cursor))
    update = (f"UPDATE {table} SET {column} = ${len(cursor) + 1} WHERE {match}"
              f" AND {column} = ${len(cursor) + 2}")

    async def fetch(after_cursor: Any, limit: int) -> list[Row]:
        if after_cursor is None:
            rows = await pool.fetch(select.format(where="").replace(f"${len(cursor) + 1}", "$1"), limit)
        else:
            rows = await pool.fetch(select.format(where=f"AND {after}"), *after_cursor[0], limit)
        return [((tuple(r[c] for c in cursor), bytes(r["blob"])), r["account_id"], bytes(r["blob"])) for r in rows]

    async def save(updates: list[tuple[Any, bytes]]) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.executemany(update, [(*key, new, old) for (key, old), new in updates])

    return RewrapColumn(f"{table}.{column}", fetch, save)


async def rewrap_pass(
    envelope: Envelope,
    columns: Sequence[RewrapColumn],
    keys: keys_service_pb2_grpc.KeysServiceStub,
    *,
    batch: int = 500,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    timeout: float = 30.0,
) -> dict[str, RewrapProgress]:
    """One complete pass over `columns`: every blob moved to its account's newest version, then the counts
    per (account, version) reported to the keys service. Rows written during the pass under a version that
    was current when it started are caught by the next pass (the report names the pass's start time)."""
    start = now()
    done: dict[str, RewrapProgress] = {}
    usage: dict[tuple[int, int], int] = {}
    newest: dict[int, int] = {}  # per pass: a rotation is seen by the next pass at the latest
    refused: dict[int, str] = {}  # per pass: closing accounts, skipped (and logged) once each
    for column in columns:
        progress = await rewrap_all(envelope, column.fetch, column.save, batch=batch, newest=newest,
                                    refused=refused)
        done[column.name] = progress
        for key, n in progress.versions.items():
            usage[key] = usage.get(key, 0) + n
        if progress.changed or progress.failed or progress.skipped:
            _LOG.info("rewrap of %s: %d rows, %d moved to the newest key version, %d failed %s, %d skipped (%d"
                      " accounts whose keys take no rewrap)", column.name, progress.scanned, progress.changed,
                      progress.failed, progress.failures or {}, progress.skipped, len(refused))
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(start)
    await keys.ReportKeyUsage(keys_service_pb2.ReportKeyUsageRequest(
        pass_start_time=stamp,
        usage=[keys_service_pb2.KeyUsage(account_id=a, key_version=v, items=n) for (a, v), n in usage.items()],
    ), timeout=timeout)
    return done
