"""The log's SQL: appending (events, Merkle nodes, tree head, account heads in one transaction), reading,
nodes for proofs, and checkpoints (`EventStore`)."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

import asyncpg

from services.audit.domain import merkle
from services.audit.domain.checkpoints import StoredCheckpoint
from services.audit.domain.events import IncomingEvent, SealedEvent, sequence_events
from services.audit.domain.filters import EventFilter

_EVENT_COLUMNS = (
    "sequence", "event_id", "event_time", "account_id", "actor_id", "action", "outcome", "trace_id",
    "body", "prev_hash", "hash", "actor_type", "subject_account_id", "account_sequence", "client_inet",
    "resource_type", "resource_id", "request_id",
)
_NO_HASH = b""


@functools.lru_cache(maxsize=4096)
def _inet(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None


def _checkpoint(r: asyncpg.Record) -> StoredCheckpoint:
    return StoredCheckpoint(r["tree_size"], bytes(r["root_hash"]), r["checkpoint_time"], r["key_id"], r["note"])


class PgEventStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    # -- writing -------------------------------------------------------------------------------------------

    async def append(self, events: Sequence[IncomingEvent]) -> list[SealedEvent]:
        """Sequence, seal and insert `events` and extend the tree, in one transaction; ids already stored
        are skipped (retries). Returns what was stored."""
        async with self._pool.acquire() as conn, conn.transaction():
            head = await conn.fetchrow("SELECT size, frontier FROM tree_head WHERE id = 1 FOR UPDATE")
            assert head is not None
            ids = [e.event_id for e in events]
            seen = {r["event_id"] for r in await conn.fetch(
                "SELECT event_id FROM events WHERE event_id = ANY($1::text[])", ids)}
            fresh: list[IncomingEvent] = []
            for e in events:
                if e.event_id not in seen:
                    seen.add(e.event_id)
                    fresh.append(e)
            if not fresh:
                return []
            accounts = sorted({e.feed_account for e in fresh})
            counts = {r["account_id"]: r["count"] for r in await conn.fetch(
                "SELECT account_id, count FROM account_heads WHERE account_id = ANY($1::bigint[])", accounts)}
            sealed, new_counts = sequence_events(head["size"], counts, fresh)
            tree = merkle.append(head["size"], [bytes(h) for h in head["frontier"]], [s.leaf_hash for s in sealed])
            await conn.copy_records_to_table(
                "events",
                columns=_EVENT_COLUMNS,
                records=[
                    (s.sequence, e.event_id, e.event_time, e.feed_account, e.actor_id, e.action, e.outcome,
                     e.trace_id, s.leaf, _NO_HASH, s.leaf_hash, e.actor_type, e.subject_account_id,
                     s.account_sequence, _inet(e.client_address), e.resource_type, e.resource_id, e.request_id)
                    for s in sealed
                    for e in (s.event,)
                ],
            )
            await conn.copy_records_to_table("merkle_nodes", columns=("level", "idx", "hash"), records=tree.nodes)
            await conn.execute(
                "UPDATE tree_head SET size = $1, frontier = $2, root = $3, update_time = now() WHERE id = 1",
                tree.size, tree.frontier, tree.root,
            )
            await conn.execute(
                "INSERT INTO account_heads (account_id, count) SELECT * FROM unnest($1::bigint[], $2::bigint[])"
                " ON CONFLICT (account_id) DO UPDATE SET count = EXCLUDED.count",
                accounts, [new_counts[a] for a in accounts],
            )
            return sealed

    async def integrate_backlog(self, batch: int = 10_000) -> int:
        """Put into the tree the events stored before the log had one (migration 0002); returns how many."""
        total = 0
        while True:
            async with self._pool.acquire() as conn, conn.transaction():
                head = await conn.fetchrow("SELECT size, frontier FROM tree_head WHERE id = 1 FOR UPDATE")
                assert head is not None
                rows = await conn.fetch(
                    "SELECT sequence, body FROM events WHERE sequence > $1 ORDER BY sequence LIMIT $2",
                    head["size"], batch,
                )
                if not rows:
                    return total
                if rows[0]["sequence"] != head["size"] + 1:
                    raise RuntimeError(f"event {head['size'] + 1} is missing: cannot build the tree")
                leaves = [merkle.leaf_hash(bytes(r["body"])) for r in rows]
                tree = merkle.append(head["size"], [bytes(h) for h in head["frontier"]], leaves)
                await conn.copy_records_to_table("merkle_nodes", columns=("level", "idx", "hash"), records=tree.nodes)
                await conn.execute(
                    "UPDATE tree_head SET size = $1, frontier = $2, root = $3, update_time = now() WHERE id = 1",
                    tree.size, tree.frontier, tree.root,
                )
                total += len(rows)

    # -- reading -------------------------------------------------------------------------------------------

    async def list_events(self, f: EventFilter) -> list[tuple[int, bytes]]:
        """(sequence, stored bytes) of matching events after the cursor, oldest first."""
        rows = await self._pool.fetch(
            "SELECT sequence, body FROM events"
            " WHERE ($1::bigint IS NULL OR account_id = $1) AND sequence > $2"
            " AND ($3::timestamptz IS NULL OR event_time >= $3)"
            " AND ($4::timestamptz IS NULL OR event_time < $4)"
            " AND ($5 = '' OR CASE WHEN $6::bool THEN starts_with(action, $5) ELSE action = $5 END)"
            " AND ($7 = '' OR actor_id = $7) AND ($8 = '' OR actor_type = $8)"
            " AND ($9::smallint = 0 OR outcome = $9)"
            " AND ($10 = '' OR client_inet <<= $10::inet)"
            " AND ($11 = '' OR trace_id = $11) AND ($12 = '' OR resource_type = $12)"
            " AND ($13 = '' OR resource_id = $13) AND ($14 = '' OR request_id = $14)"
            " ORDER BY sequence LIMIT $15",
            f.account_id, f.after_sequence, f.start_time, f.end_time, f.action, f.action_prefix, f.actor_id,
            f.actor_type, f.outcome, f.client_network, f.trace_id, f.resource_type, f.resource_id, f.request_id,
            f.limit,
        )
        return [(r["sequence"], bytes(r["body"])) for r in rows]

    async def chain_rows(self, after_sequence: int, limit: int) -> list[tuple[int, bytes, bytes, bytes]]:
        """(sequence, stored bytes, prev_hash, hash) of every event after `after_sequence`, in order."""
        rows = await self._pool.fetch(
            "SELECT sequence, body, prev_hash, hash FROM events WHERE sequence > $1 ORDER BY sequence LIMIT $2",
            after_sequence, limit,
        )
        return [(r["sequence"], bytes(r["body"]), bytes(r["prev_hash"]), bytes(r["hash"])) for r in rows]

    async def scan(self, after_sequence: int, limit: int) -> list[tuple[int, str, bytes]]:
        """(sequence, event_id, stored bytes) in log order, for verification."""
        rows = await self._pool.fetch(
            "SELECT sequence, event_id, body FROM events WHERE sequence > $1 ORDER BY sequence LIMIT $2",
            after_sequence, limit,
        )
        return [(r["sequence"], r["event_id"], bytes(r["body"])) for r in rows]

    async def leaf_hashes(self, first_index: int, limit: int) -> list[tuple[int, bytes]]:
        rows = await self._pool.fetch(
            "SELECT idx, hash FROM merkle_nodes WHERE level = 0 AND idx >= $1 ORDER BY idx LIMIT $2",
            first_index, limit,
        )
        return [(r["idx"], bytes(r["hash"])) for r in rows]

    async def event_by_id(self, event_id: str) -> tuple[int, int, bytes] | None:
        """(sequence, feed account, stored bytes)."""
        r = await self._pool.fetchrow("SELECT sequence, account_id, body FROM events WHERE event_id = $1", event_id)
        return None if r is None else (r["sequence"], r["account_id"], bytes(r["body"]))

    async def bodies(self, sequences: Sequence[int]) -> dict[int, bytes]:
        rows = await self._pool.fetch(
            "SELECT sequence, body FROM events WHERE sequence = ANY($1::bigint[])", list(sequences))
        return {r["sequence"]: bytes(r["body"]) for r in rows}

    async def account_events(self, account_id: int, after_sequence: int, up_to: int | None, limit: int
                             ) -> list[tuple[int, bytes]]:
        rows = await self._pool.fetch(
            "SELECT sequence, body FROM events WHERE account_id = $1 AND sequence > $2"
            " AND ($3::bigint IS NULL OR sequence <= $3) ORDER BY sequence LIMIT $4",
            account_id, after_sequence, up_to, limit,
        )
        return [(r["sequence"], bytes(r["body"])) for r in rows]

    async def account_count_at(self, account_id: int, tree_size: int) -> int:
        """How many events the account's feed held in the tree of `tree_size` (its last account_sequence)."""
        n = await self._pool.fetchval(
            "SELECT coalesce(max(account_sequence), 0) FROM events WHERE account_id = $1 AND sequence <= $2",
            account_id, tree_size)
        return int(n)

    async def nodes(self, wanted: set[merkle.Node]) -> dict[merkle.Node, bytes]:
        if not wanted:
            return {}
        levels, idxs = zip(*sorted(wanted), strict=True)
        rows = await self._pool.fetch(
            "SELECT m.level, m.idx, m.hash FROM merkle_nodes m"
            " JOIN unnest($1::smallint[], $2::bigint[]) AS w(level, idx) ON m.level = w.level AND m.idx = w.idx",
            list(levels), list(idxs),
        )
        return {(r["level"], r["idx"]): bytes(r["hash"]) for r in rows}

    async def tree_head(self) -> tuple[int, bytes, list[bytes]]:
        r = await self._pool.fetchrow("SELECT size, root, frontier FROM tree_head WHERE id = 1")
        assert r is not None
        return r["size"], bytes(r["root"]), [bytes(h) for h in r["frontier"]]

    # -- checkpoints ---------------------------------------------------------------------------------------

    async def latest_checkpoint(self) -> StoredCheckpoint | None:
        r = await self._pool.fetchrow(
            "SELECT tree_size, root_hash, checkpoint_time, key_id, note FROM checkpoints ORDER BY tree_size DESC"
            " LIMIT 1")
        return None if r is None else _checkpoint(r)

    async def checkpoint_at(self, tree_size: int) -> StoredCheckpoint | None:
        r = await self._pool.fetchrow(
            "SELECT tree_size, root_hash, checkpoint_time, key_id, note FROM checkpoints WHERE tree_size = $1",
            tree_size)
        return None if r is None else _checkpoint(r)

    async def save_checkpoint(self, cp: StoredCheckpoint) -> StoredCheckpoint:
        """Store `cp` unless one of its size exists already; returns the stored one."""
        r = await self._pool.fetchrow(
            "INSERT INTO checkpoints (tree_size, root_hash, checkpoint_time, key_id, note)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tree_size) DO NOTHING"
            " RETURNING tree_size, root_hash, checkpoint_time, key_id, note",
            cp.tree_size, cp.root_hash, cp.checkpoint_time, cp.key_id, cp.note,
        )
        if r is None:
            stored = await self.checkpoint_at(cp.tree_size)
            assert stored is not None
            return stored
        return _checkpoint(r)

    async def checkpoints(self) -> list[StoredCheckpoint]:
        rows = await self._pool.fetch(
            "SELECT tree_size, root_hash, checkpoint_time, key_id, note FROM checkpoints ORDER BY tree_size")
        return [_checkpoint(r) for r in rows]

    async def max_event_lag(self, since_sequence: int) -> tuple[int, float]:
        """(newest sequence, seconds between event time and storage for the slowest event after since)."""
        r = await self._pool.fetchrow(
            "SELECT coalesce(max(sequence), $1) AS seq,"
            " coalesce(extract(epoch FROM max(insert_time - event_time)), 0)::float8 AS lag"
            " FROM events WHERE sequence > $1", since_sequence)
        assert r is not None
        return r["seq"], max(float(r["lag"]), 0.0)
