"""The SQL of alerts and forwarding: the alert engine's transaction, rules, the webhook secret's version,
alert history, deliveries, and forwarding destinations and their cursors (`AlertStore`)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from services.audit.adapters.store.security_notices import NoticeTxQueries
from services.audit.domain.alerts import Alert, Delivery, DeliveryJob
from services.audit.domain.evaluation import Fire, Hit
from services.audit.domain.forwarding import ForwardingSpec, ForwardingState
from services.audit.domain.rules import Rule, RuleSpec


def _spec_json(spec: RuleSpec) -> str:
    return json.dumps(dataclasses.asdict(spec), sort_keys=True)


def _spec(raw: str) -> RuleSpec:
    data = json.loads(raw)
    fields = {f.name for f in dataclasses.fields(RuleSpec)}
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in fields}
    return RuleSpec(**values)


def _rule(r: asyncpg.Record) -> Rule:
    return Rule(r["id"], r["account_id"], _spec(r["spec"]), r["is_default"], r["last_fire_time"],
                r["create_time"], r["update_time"])


_RULE_COLUMNS = "id, account_id, spec, is_default, last_fire_time, create_time, update_time"


class PgAlertTx(NoticeTxQueries):
    """One evaluation step of the alert engine, in one transaction (security notices included)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def claim_cursor(self) -> int | None:
        """The engine's position, locked for this transaction; None while another process holds it."""
        value: int | None = await self._conn.fetchval(
            "SELECT sequence FROM processor_cursors WHERE name = 'alerts' FOR UPDATE SKIP LOCKED")
        return value

    async def events_after(self, sequence: int, limit: int) -> list[tuple[int, bytes]]:
        rows = await self._conn.fetch(
            "SELECT sequence, body FROM events WHERE sequence > $1 ORDER BY sequence LIMIT $2", sequence, limit)
        return [(r["sequence"], bytes(r["body"])) for r in rows]

    async def advance_cursor(self, sequence: int) -> None:
        await self._conn.execute("UPDATE processor_cursors SET sequence = $1 WHERE name = 'alerts'", sequence)

    async def new_accounts(self, account_ids: Sequence[int]) -> list[int]:
        """Register accounts the engine had not met; returns those."""
        rows = await self._conn.fetch(
            "INSERT INTO alert_accounts (account_id) SELECT unnest($1::bigint[])"
            " ON CONFLICT DO NOTHING RETURNING account_id", list(account_ids))
        return [r["account_id"] for r in rows]

    async def insert_rules(self, account_id: int, specs: Sequence[RuleSpec], *, default: bool) -> None:
        await self._conn.execute(
            "INSERT INTO alert_rules (account_id, spec, is_default) SELECT $1, unnest($2::jsonb[]), $3",
            account_id, [_spec_json(s) for s in specs], default,
        )

    async def rules_for(self, account_ids: Sequence[int]) -> list[Rule]:
        rows = await self._conn.fetch(
            f"SELECT {_RULE_COLUMNS} FROM alert_rules WHERE account_id = ANY($1::bigint[])"
            " AND NOT (spec->>'disabled')::bool ORDER BY id FOR UPDATE", list(account_ids))
        return [_rule(r) for r in rows]

    async def window_hits(self, rule_ids: Sequence[int], windows: Sequence[int], earliest: datetime,
                          latest: datetime) -> dict[int, list[Hit]]:
        """`evaluation.needed_hits` in SQL: one by one the hits in (earliest - w, latest - w] and
        (max(earliest, latest - w), latest], and those in (latest - w, earliest] summed as one hit at
        `earliest` (sequence 0) - inside every event's window, so only their sum matters."""
        rows = await self._conn.fetch(
            "WITH w AS (SELECT rule_id, make_interval(secs => seconds) AS span"
            "           FROM unnest($1::bigint[], $2::int[]) AS u(rule_id, seconds))"
            " SELECT h.rule_id, h.event_time, h.amount, h.sequence FROM w JOIN alert_hits h ON h.rule_id = w.rule_id"
            "  WHERE h.event_time > $3::timestamptz - w.span AND h.event_time <= $4::timestamptz - w.span"
            " UNION ALL"
            " SELECT h.rule_id, h.event_time, h.amount, h.sequence FROM w JOIN alert_hits h ON h.rule_id = w.rule_id"
            "  WHERE h.event_time > greatest($3::timestamptz, $4::timestamptz - w.span)"
            "    AND h.event_time <= $4::timestamptz"
            " UNION ALL"
            " SELECT h.rule_id, $3::timestamptz, sum(h.amount)::bigint, 0::bigint"
            "  FROM w JOIN alert_hits h ON h.rule_id = w.rule_id"
            "  WHERE h.event_time > $4::timestamptz - w.span AND h.event_time <= $3::timestamptz"
            "  GROUP BY h.rule_id",
            list(rule_ids), list(windows), earliest, latest)
        out: dict[int, list[Hit]] = {}
        for r in rows:
            out.setdefault(r["rule_id"], []).append(Hit(r["rule_id"], r["event_time"], r["amount"], r["sequence"]))
        return out

    async def insert_hits(self, hits: Sequence[Hit]) -> None:
        if hits:
            await self._conn.copy_records_to_table(
                "alert_hits", columns=("rule_id", "event_time", "amount", "sequence"),
                records=[(h.rule_id, h.event_time, h.amount, h.sequence) for h in hits],
            )

    async def prune_hits(self, rule_ids: Sequence[int], windows: Sequence[int], now: datetime) -> None:
        if rule_ids:
            await self._conn.execute(
                "DELETE FROM alert_hits h USING unnest($1::bigint[], $2::int[]) AS w(rule_id, seconds)"
                " WHERE h.rule_id = w.rule_id AND h.event_time < $3::timestamptz - make_interval(secs => w.seconds)",
                list(rule_ids), list(windows), now,
            )

    async def record_fires(self, fires: Sequence[Fire]) -> list[int]:
        """Alert history rows and a pending delivery per target; returns the alert ids."""
        if not fires:
            return []
        rows = await self._conn.fetch(
            "INSERT INTO alerts (account_id, rule_id, rule_name, fire_time, event_id, event_sequence, action,"
            " match_count, window_seconds)"
            " SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::timestamptz[], $5::text[],"
            " $6::bigint[], $7::text[], $8::bigint[], $9::int[]) RETURNING id",
            [f.rule.account_id for f in fires], [f.rule.rule_id for f in fires], [f.rule.spec.name for f in fires],
            [f.event.event_time for f in fires], [f.event.event_id for f in fires], [f.event.sequence for f in fires],
            [f.event.action for f in fires], [f.count for f in fires], [f.rule.spec.window_seconds for f in fires],
        )
        ids = [r["id"] for r in rows]
        deliveries = [(aid, f.rule.account_id, ch, target)
                      for aid, f in zip(ids, fires, strict=True) for ch, target in f.rule.spec.targets()]
        if deliveries:
            await self._conn.copy_records_to_table(
                "alert_deliveries", columns=("alert_id", "account_id", "channel", "target"), records=deliveries)
        return ids

    async def set_last_fire(self, last_fire: dict[int, datetime]) -> None:
        if last_fire:
            await self._conn.execute(
                "UPDATE alert_rules r SET last_fire_time = u.t FROM unnest($1::bigint[], $2::timestamptz[])"
                " AS u(id, t) WHERE r.id = u.id", list(last_fire), list(last_fire.values()),
            )


class PgAlertStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @contextlib.asynccontextmanager
    async def tx(self) -> AsyncIterator[PgAlertTx]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield PgAlertTx(conn)

    # -- rules ---------------------------------------------------------------------------------------------

    async def rules(self, account_id: int) -> list[Rule]:
        rows = await self._pool.fetch(
            f"SELECT {_RULE_COLUMNS} FROM alert_rules WHERE account_id = $1 ORDER BY id", account_id)
        return [_rule(r) for r in rows]

    async def create_rule(self, account_id: int, spec: RuleSpec, max_rules: int,
                          before_commit: Callable[[Rule], Awaitable[None]] | None = None) -> Rule | None:
        """Insert unless the account has `max_rules` already (None then). `before_commit` (the change's audit
        event) runs inside the transaction: if it raises, nothing changes."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('alert_rules'), $1::int)", account_id % 2**31)
            n = await conn.fetchval("SELECT count(*) FROM alert_rules WHERE account_id = $1", account_id)
            if n >= max_rules:
                return None
            r = await conn.fetchrow(
                f"INSERT INTO alert_rules (account_id, spec) VALUES ($1, $2::jsonb) RETURNING {_RULE_COLUMNS}",
                account_id, _spec_json(spec))
            assert r is not None
            rule = _rule(r)
            if before_commit is not None:
                await before_commit(rule)
            return rule

    async def update_rule(self, account_id: int, rule_id: int, spec: RuleSpec,
                          before_commit: Callable[[Rule], Awaitable[None]] | None = None) -> Rule | None:
        async with self._pool.acquire() as conn, conn.transaction():
            r = await conn.fetchrow(
                f"UPDATE alert_rules SET spec = $3::jsonb, update_time = now() WHERE id = $1 AND account_id = $2"
                f" RETURNING {_RULE_COLUMNS}", rule_id, account_id, _spec_json(spec))
            if r is None:
                return None
            rule = _rule(r)
            if before_commit is not None:
                await before_commit(rule)
            return rule

    async def delete_rule(self, account_id: int, rule_id: int) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            done = await conn.fetchval(
                "DELETE FROM alert_rules WHERE id = $1 AND account_id = $2 RETURNING id", rule_id, account_id)
            if done is not None:
                await conn.execute("DELETE FROM alert_hits WHERE rule_id = $1", rule_id)
            return done is not None

    async def ensure_account(self, account_id: int, defaults: Sequence[RuleSpec]) -> None:
        """Register the account (with its default rules) if the alert engine has not met it yet."""
        async with self.tx() as tx:
            if await tx.new_accounts([account_id]):
                await tx.insert_rules(account_id, defaults, default=True)

    async def secret_version(self, account_id: int, *, rotate: bool = False,
                             before_commit: Callable[[int], Awaitable[None]] | None = None) -> int:
        """The current (or, with `rotate`, the next) version; `before_commit` gets it inside the transaction."""
        async with self._pool.acquire() as conn, conn.transaction():
            if rotate:
                v = await conn.fetchval(
                    "UPDATE alert_accounts SET secret_version = secret_version + 1 WHERE account_id = $1"
                    " RETURNING secret_version", account_id)
            else:
                v = await conn.fetchval(
                    "SELECT secret_version FROM alert_accounts WHERE account_id = $1", account_id)
            version = int(v) if v is not None else 1
            if before_commit is not None:
                await before_commit(version)
            return version

    # -- history -------------------------------------------------------------------------------------------

    async def alerts(self, account_id: int, before_id: int, limit: int) -> list[Alert]:
        rows = await self._pool.fetch(
            "SELECT id, rule_id, rule_name, fire_time, event_id, event_sequence, action, match_count,"
            " window_seconds FROM alerts WHERE account_id = $1 AND ($2 = 0 OR id < $2) ORDER BY id DESC LIMIT $3",
            account_id, before_id, limit,
        )
        ids = [r["id"] for r in rows]
        deliveries: dict[int, list[Delivery]] = {}
        for d in await self._pool.fetch(
            "SELECT alert_id, channel, target, status, attempts, last_error, update_time FROM alert_deliveries"
            " WHERE alert_id = ANY($1::bigint[]) ORDER BY id", ids,
        ):
            deliveries.setdefault(d["alert_id"], []).append(
                Delivery(d["channel"], d["target"], d["status"], d["attempts"], d["last_error"], d["update_time"]))
        return [
            Alert(r["id"], r["rule_id"], r["rule_name"], r["fire_time"], r["event_id"], r["event_sequence"],
                  r["action"], r["match_count"], r["window_seconds"], deliveries.get(r["id"], []))
            for r in rows
        ]

    # -- deliveries ----------------------------------------------------------------------------------------

    async def claim_deliveries(self, limit: int, lease_seconds: float) -> list[DeliveryJob]:
        """Pending deliveries that are due, leased to this process for `lease_seconds`."""
        rows = await self._pool.fetch(
            "WITH due AS (SELECT id FROM alert_deliveries WHERE status = 1 AND next_attempt_time <= now()"
            "   ORDER BY next_attempt_time LIMIT $1 FOR UPDATE SKIP LOCKED),"
            " leased AS (UPDATE alert_deliveries d SET next_attempt_time = now() + make_interval(secs => $2)"
            "   FROM due WHERE d.id = due.id RETURNING d.id, d.alert_id, d.account_id, d.channel, d.target,"
            "   d.attempts)"
            " SELECT l.id, l.account_id, l.channel, l.target, l.attempts, a.id AS alert_id, a.rule_id, a.rule_name,"
            " a.fire_time, a.event_id, a.event_sequence, a.action, a.match_count, a.window_seconds, r.spec"
            " FROM leased l JOIN alerts a ON a.id = l.alert_id"
            " LEFT JOIN alert_rules r ON r.id = a.rule_id AND r.account_id = a.account_id ORDER BY l.id",
            limit, lease_seconds,
        )
        return [
            DeliveryJob(
                r["id"], r["account_id"], r["channel"], r["target"], r["attempts"],
                Alert(r["alert_id"], r["rule_id"], r["rule_name"], r["fire_time"], r["event_id"], r["event_sequence"],
                      r["action"], r["match_count"], r["window_seconds"], []),
                None if r["spec"] is None else _spec(r["spec"]),
            )
            for r in rows
        ]

    async def count_alert_message(self, account_id: int) -> int:
        """Count one more alert message for the account in its current hour window; returns the count.

        A window opens with the first message counted after the previous one ended (not at a clock hour), so
        "at most N an hour" holds for any hour an attacker could pick, and the count never resets mid-burst.
        The per-account lock keeps two deliveries from opening two windows at once."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('alert_message_counts'), $1::int)",
                               account_id % 2**31)
            await conn.execute(
                "DELETE FROM alert_message_counts WHERE account_id = $1 AND hour <= now() - interval '1 hour'",
                account_id)
            n: int = await conn.fetchval(
                "INSERT INTO alert_message_counts (account_id, hour, sent)"
                " VALUES ($1, coalesce((SELECT max(hour) FROM alert_message_counts WHERE account_id = $1), now()), 1)"
                " ON CONFLICT (account_id, hour) DO UPDATE SET sent = alert_message_counts.sent + 1 RETURNING sent",
                account_id)
        return n

    async def finish_delivery(self, delivery_id: int, status: int, attempts: int, error: str,
                              retry_in: float) -> None:
        await self._pool.execute(
            "UPDATE alert_deliveries SET status = $2, attempts = $3, last_error = $4,"
            " next_attempt_time = now() + make_interval(secs => $5), update_time = now() WHERE id = $1",
            delivery_id, status, attempts, error, retry_in,
        )

    async def pending_deliveries(self) -> int:
        n: int = await self._pool.fetchval("SELECT count(*) FROM alert_deliveries WHERE status = 1")
        return n

    async def alert_cursor(self) -> int:
        n: int = await self._pool.fetchval("SELECT sequence FROM processor_cursors WHERE name = 'alerts'")
        return n

    # -- forwarding ----------------------------------------------------------------------------------------

    async def forwarding(self, account_id: int) -> ForwardingState | None:
        r = await self._pool.fetchrow(
            "SELECT account_id, enabled, kind, url, format, delivered_sequence, last_error, consecutive_failures,"
            " last_delivery_time FROM forwardings WHERE account_id = $1", account_id)
        return None if r is None else self._forwarding(r)

    @staticmethod
    def _forwarding(r: asyncpg.Record) -> ForwardingState:
        return ForwardingState(
            r["account_id"], ForwardingSpec(r["enabled"], r["kind"], r["url"], r["format"]),
            r["delivered_sequence"], r["last_error"], r["consecutive_failures"], r["last_delivery_time"],
        )

    async def set_forwarding(self, account_id: int, spec: ForwardingSpec,
                             before_commit: Callable[[ForwardingState], Awaitable[None]] | None = None,
                             ) -> ForwardingState:
        """Upsert. A new destination starts after the log's current end (or at its start with `backfill`);
        changing an existing one keeps its cursor, so nothing is skipped. `before_commit` (the change's audit
        event) runs inside the transaction: if it raises, nothing changes."""
        async with self._pool.acquire() as conn, conn.transaction():
            r = await conn.fetchrow(
                "INSERT INTO forwardings (account_id, enabled, kind, url, format, delivered_sequence)"
                " VALUES ($1, $2, $3, $4, $5, CASE WHEN $6 THEN 0 ELSE (SELECT size FROM tree_head WHERE id = 1) END)"
                " ON CONFLICT (account_id) DO UPDATE SET enabled = EXCLUDED.enabled, kind = EXCLUDED.kind,"
                " url = EXCLUDED.url, format = EXCLUDED.format,"
                " delivered_sequence = CASE WHEN $6 THEN 0 ELSE forwardings.delivered_sequence END,"
                " consecutive_failures = 0, last_error = '', next_attempt_time = now(), update_time = now()"
                " RETURNING account_id, enabled, kind, url, format, delivered_sequence, last_error,"
                " consecutive_failures, last_delivery_time",
                account_id, spec.enabled, spec.kind, spec.url, spec.format, spec.backfill,
            )
            assert r is not None
            state = self._forwarding(r)
            if before_commit is not None:
                await before_commit(state)
            return state

    async def claim_forwardings(self, limit: int, lease_seconds: float) -> list[ForwardingState]:
        """Enabled destinations with undelivered events that are due, leased to this process."""
        rows = await self._pool.fetch(
            "WITH due AS (SELECT f.account_id FROM forwardings f WHERE f.enabled AND f.next_attempt_time <= now()"
            "   AND EXISTS (SELECT 1 FROM events e WHERE e.account_id = f.account_id"
            "               AND e.sequence > f.delivered_sequence)"
            "   LIMIT $1 FOR UPDATE SKIP LOCKED)"
            " UPDATE forwardings f SET next_attempt_time = now() + make_interval(secs => $2) FROM due"
            " WHERE f.account_id = due.account_id RETURNING f.account_id, f.enabled, f.kind, f.url, f.format,"
            " f.delivered_sequence, f.last_error, f.consecutive_failures, f.last_delivery_time",
            limit, lease_seconds,
        )
        return [self._forwarding(r) for r in rows]

    async def forwarded(self, account_id: int, from_sequence: int, to_sequence: int) -> bool:
        """Advance the cursor if nobody moved it meanwhile."""
        done = await self._pool.fetchval(
            "UPDATE forwardings SET delivered_sequence = $3, consecutive_failures = 0, last_error = '',"
            " last_delivery_time = now(), next_attempt_time = now() WHERE account_id = $1"
            " AND delivered_sequence = $2 RETURNING 1", account_id, from_sequence, to_sequence)
        return done is not None

    async def forwarding_failed(self, account_id: int, error: str, retry_in: float) -> None:
        await self._pool.execute(
            "UPDATE forwardings SET consecutive_failures = consecutive_failures + 1, last_error = $2,"
            " next_attempt_time = now() + make_interval(secs => $3) WHERE account_id = $1",
            account_id, error, retry_in)

    async def forwarding_backlog(self) -> int:
        """Undelivered events over every enabled destination (for the SRE metric)."""
        n: int = await self._pool.fetchval(
            "SELECT coalesce(sum((SELECT count(*) FROM events e WHERE e.account_id = f.account_id"
            " AND e.sequence > f.delivered_sequence)), 0)::bigint FROM forwardings f WHERE f.enabled")
        return n
