"""The built-in carrier simulator's ledger."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from services.messaging.adapters.store.rows import id_text, uuid_texts


class PgSimulatorStore:
    """The carrier simulator's ledger: `carrier_sim_submissions`, one row per message it ever accepted."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record_submissions(
        self, accepted: Sequence[tuple[str, str]], receipt_delay_s: float
    ) -> dict[str, str]:
        """Record accepted (id, proposed ref); a message seen before keeps its first ref and counts again.
        Returns id -> carrier ref."""
        if not accepted:
            return {}
        rows = await self._pool.fetch(
            "INSERT INTO carrier_sim_submissions (message_id, carrier_ref, receipt_due_time)"
            " SELECT r.id, r.ref, now() + make_interval(secs => $3)"
            " FROM unnest($1::uuid[], $2::text[]) AS r(id, ref)"
            " ON CONFLICT (message_id) DO UPDATE SET"
            " submit_count = carrier_sim_submissions.submit_count + 1, last_submit_time = now()"
            " RETURNING message_id, carrier_ref",
            uuid_texts([a[0] for a in accepted]), [a[1] for a in accepted], float(receipt_delay_s),
        )
        return {id_text(r["message_id"]): r["carrier_ref"] for r in rows}

    async def pump_due_receipts(self, limit: int, handle: Callable[[list[str]], Awaitable[None]]) -> int:
        """Hand due, unsent receipts to `handle` and mark them sent, in one transaction (SKIP LOCKED);
        if `handle` fails they stay due. At-least-once: `handle` must be idempotent."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT message_id FROM carrier_sim_submissions"
                " WHERE receipt_time IS NULL AND receipt_due_time <= now()"
                " ORDER BY receipt_due_time LIMIT $1 FOR UPDATE SKIP LOCKED",
                limit,
            )
            if not rows:
                return 0
            ids = [r["message_id"] for r in rows]
            await handle([id_text(i) for i in ids])
            await conn.execute(
                "UPDATE carrier_sim_submissions SET receipt_time = now() WHERE message_id = ANY($1::uuid[])", ids
            )
            return len(ids)
