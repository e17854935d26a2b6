"""All SQL of the audit service."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from services.audit.domain import ChainedEvent, EventFilter, IncomingEvent, chain

_COLUMNS = (
    "sequence", "event_id", "event_time", "account_id", "actor_id", "action", "outcome", "trace_id",
    "body", "prev_hash", "hash",
)


class PgEventStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def append(self, events: Sequence[IncomingEvent]) -> list[ChainedEvent]:
        """Chain and insert `events` in one transaction; ids already stored are skipped (retries)."""
        async with self._pool.acquire() as conn, conn.transaction():
            head = await conn.fetchrow("SELECT sequence, hash FROM chain_head WHERE id = 1 FOR UPDATE")
            assert head is not None
            ids = [e.event_id for e in events]
            seen = {r["event_id"] for r in await conn.fetch(
                "SELECT event_id FROM events WHERE event_id = ANY($1::text[])", ids)}
            fresh: list[IncomingEvent] = []
            for e in events:
                if e.event_id not in seen:
                    seen.add(e.event_id)
                    fresh.append(e)
            chained = chain(head["sequence"], bytes(head["hash"]), fresh)
            if not chained:
                return []
            await conn.copy_records_to_table(
                "events",
                columns=_COLUMNS,
                records=[
                    (c.sequence, c.event.event_id, c.event.event_time, c.event.account_id, c.event.actor_id,
                     c.event.action, c.event.outcome, c.event.trace_id, c.event.body, c.prev_hash, c.hash)
                    for c in chained
                ],
            )
            last = chained[-1]
            await conn.execute("UPDATE chain_head SET sequence = $1, hash = $2 WHERE id = 1", last.sequence, last.hash)
            return chained

    async def list_events(self, f: EventFilter) -> list[tuple[int, bytes, bytes, bytes]]:
        """(sequence, body, prev_hash, hash) of matching events after the cursor, oldest first."""
        rows = await self._pool.fetch(
            "SELECT sequence, body, prev_hash, hash FROM events"
            " WHERE account_id = $1 AND sequence > $2"
            " AND ($3::timestamptz IS NULL OR event_time >= $3)"
            " AND ($4::timestamptz IS NULL OR event_time < $4)"
            " AND ($5 = '' OR action = $5) AND ($6 = '' OR actor_id = $6)"
            " ORDER BY sequence LIMIT $7",
            f.account_id, f.after_sequence, f.start_time, f.end_time, f.action, f.actor_id, f.limit,
        )
        return [(r["sequence"], bytes(r["body"]), bytes(r["prev_hash"]), bytes(r["hash"])) for r in rows]

    async def chain_rows(self, after_sequence: int, limit: int) -> list[tuple[int, bytes, bytes, bytes]]:
        rows = await self._pool.fetch(
            "SELECT sequence, body, prev_hash, hash FROM events WHERE sequence > $1 ORDER BY sequence LIMIT $2",
            after_sequence, limit,
        )
        return [(r["sequence"], bytes(r["body"]), bytes(r["prev_hash"]), bytes(r["hash"])) for r in rows]
