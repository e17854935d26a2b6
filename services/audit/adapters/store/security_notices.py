"""The SQL of security notifications: the sign-in history and notice rows the alert engine's transaction
writes (`NoticeTxQueries`, mixed into PgAlertTx), and the notice list and deliveries (`PgNoticeStore`)."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from services.audit.domain.security_notices import Notice, SignInAsk, StoredNotice

_COLUMNS = ("id, account_id, kind, event_id, event_time, subject, body, status, attempts, last_error, create_time,"
            " update_time")


def _notice(r: asyncpg.Record) -> StoredNotice:
    return StoredNotice(r["id"], r["account_id"], r["kind"], r["event_id"], r["event_time"], r["subject"], r["body"],
                        r["status"], r["attempts"], r["last_error"], r["create_time"], r["update_time"])


class NoticeTxQueries:
    """The engine transaction's notice queries (on its connection)."""

    _conn: asyncpg.Connection

    async def sign_in_history(self, asks: Sequence[SignInAsk]) -> list[tuple[bool, bool]]:
        """Per sign-in, in one query: (the user signed in successfully before it, one of those sign-ins since
        `since` came from `network`). The action (domain SIGN_IN_ACTION) is spelled out, as in the partial index
        events_sign_ins (migration 0004), so that index serves it in a generic plan too."""
        if not asks:
            return []
        rows = await self._conn.fetch(
            "SELECT q.i, EXISTS (SELECT 1 FROM events e WHERE e.account_id = q.account_id AND e.actor_id = q.actor_id"
            "   AND e.sequence < q.seq AND e.action = 'auth.login' AND e.outcome = 1) AS before,"
            " EXISTS (SELECT 1 FROM events e WHERE e.account_id = q.account_id AND e.actor_id = q.actor_id"
            "   AND e.sequence < q.seq AND e.action = 'auth.login' AND e.outcome = 1 AND e.event_time > q.since"
            "   AND e.client_inet <<= q.net) AS seen"
            " FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::timestamptz[], $5::inet[])"
            " WITH ORDINALITY AS q(account_id, actor_id, seq, since, net, i) ORDER BY q.i",
            [a.account_id for a in asks], [a.actor_id for a in asks], [a.before_sequence for a in asks],
            [a.since for a in asks], [a.network for a in asks])
        return [(bool(r["before"]), bool(r["seen"])) for r in rows]

    async def insert_notices(self, notices: Sequence[Notice]) -> int:
        """Record the notices (pending); an event already noticed is skipped. Returns how many are new."""
        if not notices:
            return 0
        rows = await self._conn.fetch(
            "INSERT INTO security_notices (account_id, kind, event_id, event_sequence, event_time, subject, body)"
            " SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::timestamptz[],"
            " $6::text[], $7::text[]) ON CONFLICT (event_sequence) DO NOTHING RETURNING id",
            [n.account_id for n in notices], [n.kind for n in notices], [n.event_id for n in notices],
            [n.event_sequence for n in notices], [n.event_time for n in notices], [n.subject for n in notices],
            [n.body for n in notices],
        )
        return len(rows)


class PgNoticeStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def notices(self, account_id: int, before_id: int, limit: int) -> list[StoredNotice]:
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM security_notices WHERE account_id = $1 AND ($2 = 0 OR id < $2)"
            " ORDER BY id DESC LIMIT $3", account_id, before_id, limit)
        return [_notice(r) for r in rows]

    async def claim_notices(self, limit: int, lease_seconds: float) -> list[StoredNotice]:
        """Pending notices that are due, leased to this process for `lease_seconds` (replicas never send one
        twice at once)."""
        rows = await self._pool.fetch(
            "WITH due AS (SELECT id FROM security_notices WHERE status = 1 AND next_attempt_time <= now()"
            "   ORDER BY next_attempt_time LIMIT $1 FOR UPDATE SKIP LOCKED)"
            " UPDATE security_notices n SET next_attempt_time = now() + make_interval(secs => $2)"
            f" FROM due WHERE n.id = due.id RETURNING {', '.join('n.' + c for c in _COLUMNS.split(', '))}",
            limit, lease_seconds)
        return sorted((_notice(r) for r in rows), key=lambda n: n.notice_id)

    async def finish_notice(self, notice_id: int, status: int, attempts: int, error: str, retry_in: float) -> None:
        await self._pool.execute(
            "UPDATE security_notices SET status = $2, attempts = $3, last_error = $4,"
            " next_attempt_time = now() + make_interval(secs => $5), update_time = now() WHERE id = $1",
            notice_id, status, attempts, error, retry_in)

    async def pending_notices(self) -> int:
        n: int = await self._pool.fetchval("SELECT count(*) FROM security_notices WHERE status = 1")
        return n
