"""SQL of a closed account's purge: its configuration and pending deliveries (never its events)."""

from __future__ import annotations

import asyncpg

# In order (hits through their rules). Evidence tables (events, merkle_nodes, checkpoints, account_heads, alerts)
# are append-only and not listed. alert_accounts stays (account id, webhook secret version, time): it marks the
# account as seen, so the events that still arrive about it (the closure's own) do not bring default rules back.
_PURGE = (
    "DELETE FROM alert_hits WHERE rule_id IN (SELECT id FROM alert_rules WHERE account_id = $1)",
    "DELETE FROM alert_deliveries WHERE account_id = $1",
    "DELETE FROM alert_rules WHERE account_id = $1",
    "DELETE FROM alert_message_counts WHERE account_id = $1",
    "DELETE FROM forwardings WHERE account_id = $1",
    "DELETE FROM security_notices WHERE account_id = $1",
)


class PgAccountPurge:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def purge_account(self, account_id: int) -> int:
        deleted = 0
        async with self._pool.acquire() as conn, conn.transaction():
            for sql in _PURGE:
                deleted += int((await conn.execute(sql, account_id)).split()[-1])
        return deleted
