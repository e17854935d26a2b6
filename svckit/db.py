"""asyncpg pool lifecycle and a forward-only SQL migration runner.

Each service owns one database; its migrations live in `services/<svc>/migrations/NNNN_name.sql` and
are applied in order, each in its own transaction, recorded in `schema_migrations`. An advisory lock
keeps concurrent starters from racing. Applied files are never edited: a checksum mismatch stops
start-up.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

_LOG = logging.getLogger(__name__)
_LOCK_ID = 0x53454E44  # "SEND"


async def _keep_session(_: asyncpg.Connection) -> None:
    """Pool release hook. Services never change session state after a connection's `init` (no SET, LISTEN
    or held advisory locks: `migrate` unlocks explicitly), so the default RESET ALL / UNLISTEN round trip on
    every release is skipped; asyncpg still rolls back any open transaction before this hook runs."""


async def create_pool(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    init: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
) -> asyncpg.Pool:
    """`init` runs once on every new connection (e.g. `SET ROLE` to a restricted role: the session state
    it sets survives releases, see `_keep_session`)."""
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, command_timeout=10, reset=_keep_session, init=init
    )
    assert pool is not None
    return pool


async def ensure_database(dsn: str) -> None:
    """Create the database named in `dsn` if it does not exist (dev and tests; prod pre-creates)."""
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    conn = await asyncpg.connect(admin)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            except asyncpg.DuplicateDatabaseError:
                pass
    finally:
        await conn.close()


async def drop_database(dsn: str) -> None:
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    conn = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def migrate(pool: asyncpg.Pool, directory: Path) -> list[str]:
    """Apply pending migrations from `directory`; return the names applied."""
    files = sorted(p for p in directory.glob("*.sql"))
    applied_now: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, checksum text NOT NULL, apply_time timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["name"]: r["checksum"] for r in await conn.fetch("SELECT name, checksum FROM schema_migrations")}
            for path in files:
                sql = path.read_text()
                digest = hashlib.sha256(sql.encode()).hexdigest()
                if path.name in done:
                    if done[path.name] != digest:
                        raise RuntimeError(f"migration {path.name} changed after it was applied")
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)", path.name, digest
                    )
                applied_now.append(path.name)
                _LOG.info("applied migration %s", path.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    return applied_now
