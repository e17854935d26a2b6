"""Lookups on the hot delivery path stay index lookups under the generic plans asyncpg's prepared statements
get after a few executions (a partial index is only usable when the query itself proves its predicate)."""

from __future__ import annotations

import json

from services.messaging.adapters.store.delivery import BY_CARRIER_REF
from tests.integration.messaging.conftest import Messaging


async def _plan_nodes(m: Messaging, sql: str) -> set[str]:
    async with m.pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.execute("SET LOCAL enable_seqscan = off")  # prefer an index whenever one can serve it
        await conn.execute(f"PREPARE plan_probe(text[]) AS {sql}")
        try:
            plan = json.loads(await conn.fetchval("EXPLAIN (FORMAT JSON) EXECUTE plan_probe('{ref-1}')"))
        finally:
            await conn.execute("DEALLOCATE plan_probe")

    def walk(node: dict[str, object]) -> set[str]:
        found = {str(node["Node Type"]), str(node.get("Index Name", ""))}
        for child in node.get("Plans", []):  # type: ignore[attr-defined]
            found |= walk(child)
        return found

    return walk(plan[0]["Plan"])


async def test_receipts_find_messages_by_carrier_reference_through_the_index(messaging: Messaging) -> None:
    assert "messages_carrier_ref" in await _plan_nodes(messaging, BY_CARRIER_REF)
    # The query as it was (no `carrier_ref <> ''`) cannot use the partial index: the check above can fail.
    assert "messages_carrier_ref" not in await _plan_nodes(
        messaging, "SELECT id, carrier_ref FROM messages WHERE carrier_ref = ANY($1::text[])")
