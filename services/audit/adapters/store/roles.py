"""The database role the audit service works as.

The service works as `sendsafe_audit_writer`, a role with INSERT and SELECT on the evidence tables
(events, merkle_nodes, checkpoints, alerts) and nothing more (migration 0002); `role_setter` gives the
pool's per-connection setup that switches to it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg

WRITER_ROLE = "sendsafe_audit_writer"


def role_setter(role: str) -> Callable[[asyncpg.Connection], Awaitable[None]]:
    """Pool `init`: every connection works as `role` (the restricted writer role)."""
    if not role.replace("_", "").isalnum():
        raise ValueError("a database role name is letters, digits and underscores")

    async def set_role(conn: asyncpg.Connection) -> None:
        await conn.execute(f'SET ROLE "{role}"')

    return set_role
