"""SQL for an account's sign-in policy, and the account's live sessions it governs."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from datetime import datetime

import asyncpg

from services.identity.adapters.store.rows import Queries
from services.identity.domain.account_policy import AccountPolicy
from services.identity.domain.sessions import USER


def _policy(r: asyncpg.Record | None) -> AccountPolicy:
    if r is None:
        return AccountPolicy()
    return AccountPolicy(
        require_second_factor=r["require_second_factor"],
        allowed_networks=tuple(ipaddress.ip_network(n) for n in r["allowed_networks"]),
        session_lifetime_seconds=r["session_lifetime_seconds"],
        update_time=r["update_time"],
    )


class AccountPolicyQueries(Queries):
    """account_policies: one row per account that ever set its policy."""

    async def account_policy(self, account_id: int) -> AccountPolicy:
        return _policy(await self._pool.fetchrow(
            "SELECT require_second_factor, allowed_networks, session_lifetime_seconds, update_time"
            " FROM account_policies WHERE account_id = $1", account_id,
        ))

    async def put_account_policy(
        self, account_id: int, policy: AccountPolicy, updated_by: int,
        before_commit: Callable[[AccountPolicy, AccountPolicy], Awaitable[None]],
    ) -> tuple[AccountPolicy, AccountPolicy]:
        """(previous, stored) policy; `before_commit(previous, stored)` (the audit record) runs with the row locked,
        so two concurrent changes are recorded in the order they apply, and a failure there changes nothing."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO account_policies (account_id, updated_by) VALUES ($1, $2)"
                " ON CONFLICT (account_id) DO NOTHING", account_id, updated_by,
            )
            old = await conn.fetchrow(
                "SELECT require_second_factor, allowed_networks, session_lifetime_seconds, update_time"
                " FROM account_policies WHERE account_id = $1 FOR UPDATE", account_id,
            )
            row = await conn.fetchrow(
                "UPDATE account_policies SET require_second_factor = $2, allowed_networks = $3::cidr[],"
                " session_lifetime_seconds = $4, update_time = now(), updated_by = $5 WHERE account_id = $1"
                " RETURNING require_second_factor, allowed_networks, session_lifetime_seconds, update_time",
                account_id, policy.require_second_factor, list(policy.allowed_networks),
                policy.session_lifetime_seconds, updated_by,
            )
            previous, stored = _policy(old), _policy(row)
            await before_commit(previous, stored)
        return previous, stored

    async def live_account_sessions(self, account_id: int) -> list[tuple[str, str, datetime]]:
        """(session id, login address, login time) of the account's users' live sessions."""
        rows = await self._pool.fetch(
            "SELECT id, client_address, create_time FROM sessions WHERE account_id = $1 AND subject_kind = $2"
            " AND revoke_time IS NULL AND expire_time > now()", account_id, USER,
        )
        return [(r["id"], r["client_address"], r["create_time"]) for r in rows]

    async def revoke_account_sessions(self, account_id: int, session_ids: list[str], reason: str) -> list[str]:
        """Revoke those of `session_ids` that belong to the account's users and are live; their ids."""
        if not session_ids:
            return []
        rows = await self._pool.fetch(
            "UPDATE sessions SET revoke_time = now(), revoke_reason = $3"
            " WHERE account_id = $1 AND subject_kind = $4 AND id = ANY($2::text[]) AND revoke_time IS NULL"
            " RETURNING id", account_id, session_ids, reason, USER,
        )
        return [r["id"] for r in rows]
