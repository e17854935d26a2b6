"""Account exports: their metadata, the job's claim (FOR UPDATE SKIP LOCKED, so any number of messaging replicas
can run the job), the sealed chunks, the one-time download and the sweep."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import asyncpg

from services.messaging.adapters.store.rows import bytes_or_none, unix_of
from services.messaging.domain.exports import ExportRecord, ExportState

_COLUMNS = ("id, account_id, user_id, state, wrapped_key, counts, bytes, chunks, failure_reason, create_time,"
            " complete_time, expire_time, download_time")


def _export(r: asyncpg.Record) -> ExportRecord:
    counts = r["counts"]
    return ExportRecord(
        id=str(r["id"]), account_id=r["account_id"], user_id=r["user_id"], state=ExportState(r["state"]),
        counts=json.loads(counts) if isinstance(counts, str) else dict(counts or {}), total_bytes=int(r["bytes"]),
        chunks=int(r["chunks"]), create_time=unix_of(r["create_time"]),
        complete_time=unix_of(r["complete_time"]) or None, expire_time=unix_of(r["expire_time"]) or None,
        download_time=unix_of(r["download_time"]) or None, failure_reason=r["failure_reason"],
        wrapped_key=bytes_or_none(r["wrapped_key"]),
    )


class PgExportStore:
    """The account_exports and account_export_chunks tables."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create_export(self, export_id: str, account_id: int, user_id: int) -> ExportRecord | None:
        """A new PENDING export; None when the account already has one pending or running (one at a time)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('account_export'), $1::int)",
                               account_id % 2_000_000_000)
            busy = await conn.fetchval(
                "SELECT 1 FROM account_exports WHERE account_id = $1 AND state IN ('PENDING', 'RUNNING')", account_id)
            if busy:
                return None
            row = await conn.fetchrow(
                f"INSERT INTO account_exports (id, account_id, user_id) VALUES ($1, $2, $3) RETURNING {_COLUMNS}",
                uuid.UUID(export_id), account_id, user_id)
        assert row is not None
        return _export(row)

    async def export(self, account_id: int, export_id: str) -> ExportRecord | None:
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM account_exports WHERE id = $1 AND account_id = $2", uuid.UUID(export_id),
            account_id)
        return None if row is None else _export(row)

    async def exports(self, account_id: int, limit: int) -> list[ExportRecord]:
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM account_exports WHERE account_id = $1 ORDER BY create_time DESC, id LIMIT $2",
            account_id, limit)
        return [_export(r) for r in rows]

    # -- the job ----------------------------------------------------------------------------------------------

    async def claim_export(self, lease_s: float) -> tuple[ExportRecord, str] | None:
        """The oldest export waiting for a job (or whose job's lease ran out), claimed: RUNNING, its earlier
        partial chunks and counts dropped (the job starts over), with a fresh claim token."""
        token = uuid.uuid4()
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT id FROM account_exports WHERE state = 'PENDING' OR (state = 'RUNNING' AND claim_until < now())"
                " ORDER BY create_time LIMIT 1 FOR UPDATE SKIP LOCKED")
            if row is None:
                return None
            await conn.execute("DELETE FROM account_export_chunks WHERE export_id = $1", row["id"])
            claimed = await conn.fetchrow(
                "UPDATE account_exports SET state = 'RUNNING', claim_token = $2,"
                " claim_until = now() + make_interval(secs => $3), counts = '{}'::jsonb, bytes = 0, chunks = 0,"
                f" wrapped_key = NULL WHERE id = $1 RETURNING {_COLUMNS}", row["id"], token, float(lease_s))
        assert claimed is not None
        return _export(claimed), str(token)

    async def set_key(self, export_id: str, token: str, wrapped_key: bytes) -> bool:
        result = await self._pool.execute(
            "UPDATE account_exports SET wrapped_key = $3 WHERE id = $1 AND claim_token = $2 AND state = 'RUNNING'",
            uuid.UUID(export_id), uuid.UUID(token), wrapped_key)
        return result.endswith(" 1")

    async def put_chunk(self, export_id: str, token: str, number: int, sealed: bytes, total_bytes: int,
                        counts: dict[str, int], lease_s: float) -> bool:
        """Store one sealed chunk and the progress so far, renewing the claim; False when the claim was lost (the
        chunk is then not stored)."""
        async with self._pool.acquire() as conn, conn.transaction():
            held = await conn.fetchval(
                "UPDATE account_exports SET chunks = $3 + 1, bytes = $4, counts = $5::jsonb,"
                " claim_until = now() + make_interval(secs => $6)"
                " WHERE id = $1 AND claim_token = $2 AND state = 'RUNNING' RETURNING true",
                uuid.UUID(export_id), uuid.UUID(token), number, total_bytes, json.dumps(counts), float(lease_s))
            if not held:
                return False
            await conn.execute("INSERT INTO account_export_chunks (export_id, number, sealed) VALUES ($1, $2, $3)",
                               uuid.UUID(export_id), number, sealed)
        return True

    async def finish_export(self, export_id: str, token: str, download_s: float) -> ExportRecord | None:
        row = await self._pool.fetchrow(
            "UPDATE account_exports SET state = 'READY', complete_time = now(), claim_token = NULL,"
            " claim_until = NULL, expire_time = now() + make_interval(secs => $3)"
            f" WHERE id = $1 AND claim_token = $2 AND state = 'RUNNING' RETURNING {_COLUMNS}",
            uuid.UUID(export_id), uuid.UUID(token), float(download_s))
        return None if row is None else _export(row)

    async def fail_export(self, export_id: str, token: str, reason: str) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            failed = await conn.fetchval(
                "UPDATE account_exports SET state = 'FAILED', failure_reason = $3, complete_time = now(),"
                " claim_token = NULL, claim_until = NULL, wrapped_key = NULL"
                " WHERE id = $1 AND claim_token = $2 AND state = 'RUNNING' RETURNING true",
                uuid.UUID(export_id), uuid.UUID(token), reason)
            if failed:
                await conn.execute("DELETE FROM account_export_chunks WHERE export_id = $1", uuid.UUID(export_id))
        return bool(failed)

    # -- the download -----------------------------------------------------------------------------------------

    async def start_download(self, account_id: int, export_id: str, lease_s: float) -> bool:
        """Hold a READY, unexpired export for one download (False: another download holds it)."""
        result = await self._pool.execute(
            "UPDATE account_exports SET download_until = now() + make_interval(secs => $3)"
            " WHERE id = $1 AND account_id = $2 AND state = 'READY' AND expire_time > now()"
            " AND (download_until IS NULL OR download_until < now())",
            uuid.UUID(export_id), account_id, float(lease_s))
        return result.endswith(" 1")

    async def release_download(self, export_id: str) -> None:
        """A download that did not finish (the client went away): the export can be downloaded again."""
        await self._pool.execute(
            "UPDATE account_exports SET download_until = NULL WHERE id = $1 AND state = 'READY'", uuid.UUID(export_id))

    async def chunks(self, export_id: str) -> AsyncIterator[tuple[int, bytes]]:
        """The sealed chunks in order, one query per chunk (never the whole file in memory)."""
        number = 0
        while True:
            sealed = await self._pool.fetchval(
                "SELECT sealed FROM account_export_chunks WHERE export_id = $1 AND number = $2",
                uuid.UUID(export_id), number)
            if sealed is None:
                return
            yield number, bytes(sealed)
            number += 1

    async def finish_download(self, export_id: str) -> bool:
        """Downloaded whole: DOWNLOADED, the chunks and the wrapped key deleted (False: it was not READY)."""
        async with self._pool.acquire() as conn, conn.transaction():
            done = await conn.fetchval(
                "UPDATE account_exports SET state = 'DOWNLOADED', download_time = now(), download_until = NULL,"
                " wrapped_key = NULL WHERE id = $1 AND state = 'READY' RETURNING true", uuid.UUID(export_id))
            if done:
                await conn.execute("DELETE FROM account_export_chunks WHERE export_id = $1", uuid.UUID(export_id))
        return bool(done)

    # -- the sweep --------------------------------------------------------------------------------------------

    async def expire_exports(self, limit: int) -> list[ExportRecord]:
        """READY exports past their expiry (and not being downloaded) become EXPIRED, their chunks and wrapped key
        deleted; returns them (for their audit events)."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "UPDATE account_exports SET state = 'EXPIRED', wrapped_key = NULL WHERE id IN ("
                " SELECT id FROM account_exports WHERE state = 'READY' AND expire_time <= now()"
                " AND (download_until IS NULL OR download_until < now())"
                f" ORDER BY expire_time LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING {_COLUMNS}", limit)
            if rows:
                await conn.execute("DELETE FROM account_export_chunks WHERE export_id = ANY($1::uuid[])",
                                   [r["id"] for r in rows])
        return [_export(r) for r in rows]

    async def delete_leftover_chunks(self, limit: int) -> int:
        """Chunks of exports no longer READY or RUNNING (a delete that did not happen with its state change)."""
        result = await self._pool.execute(
            "DELETE FROM account_export_chunks WHERE export_id IN (SELECT c.export_id FROM account_export_chunks c"
            " JOIN account_exports e ON e.id = c.export_id WHERE e.state IN ('DOWNLOADED', 'EXPIRED', 'FAILED')"
            " LIMIT $1)", limit)
        return int(result.split()[-1])

    async def chunk_count(self, export_id: str) -> int:
        return int(await self._pool.fetchval(
            "SELECT count(*) FROM account_export_chunks WHERE export_id = $1", uuid.UUID(export_id)))
