"""SQL for people who log in: passwords, second factors, sessions and login counters."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

import asyncpg

from services.identity.adapters.store.rows import (
    LIVE,
    SELECT,
    SESSION_COLUMNS,
    STAFF_COLUMNS,
    Queries,
    replace_recovery_codes,
    revoke_all,
    to_session,
    to_staff_subject,
    to_user_subject,
)
from services.identity.domain.accounts import username_key
from services.identity.domain.sessions import STAFF, Attempt, SecondFactorUse, SessionRecord, Subject, TotpFactor


class AuthQueries(Queries):
    """People who log in: passwords, second factors, sessions and login counters."""

    async def find_subject(self, kind: str, username: str, platform_account_id: int) -> Subject | None:
        if kind == STAFF:
            row = await self._pool.fetchrow(
                f"SELECT {STAFF_COLUMNS}, password_hash FROM staff_users WHERE lower(username) = $1",
                username_key(username),
            )
            return to_staff_subject(row, platform_account_id) if row else None
        row = await self._pool.fetchrow(
            f"{SELECT.replace('SELECT ', 'SELECT u.password_hash, ', 1)} WHERE lower(u.api_username) = $1 AND {LIVE}",
            username_key(username),
        )
        return to_user_subject(row) if row else None

    async def get_subject(self, kind: str, subject_id: int, platform_account_id: int) -> Subject | None:
        if kind == STAFF:
            row = await self._pool.fetchrow(
                f"SELECT {STAFF_COLUMNS}, password_hash FROM staff_users WHERE id = $1", subject_id
            )
            return to_staff_subject(row, platform_account_id) if row else None
        row = await self._pool.fetchrow(
            f"{SELECT.replace('SELECT ', 'SELECT u.password_hash, ', 1)} WHERE u.id = $1 AND {LIVE}", subject_id
        )  # a session's use: its sender limit is opened for the principal (issue 21)
        return to_user_subject(row, await self._personal.open_senders(row)) if row else None

    async def set_password(self, kind: str, subject_id: int, password_hash: str, *, revoke_except: str | None) -> int:
        """Store a new password hash; with `revoke_except`, end every other session (a password change).
        Returns how many sessions were ended."""
        table = "staff_users" if kind == STAFF else "users"
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                f"UPDATE {table} SET password_hash = $2, password_change_time = now(), update_time = now()"
                " WHERE id = $1",
                subject_id, password_hash,
            )
            if revoke_except is None:
                return 0
            return await revoke_all(conn, kind, subject_id, "password_changed", keep=revoke_except)

    async def rehash_password(self, kind: str, subject_id: int, old_hash: str, new_hash: str) -> None:
        """Same password, current parameters; only if nobody changed it meanwhile."""
        table = "staff_users" if kind == STAFF else "users"
        await self._pool.execute(
            f"UPDATE {table} SET password_hash = $3 WHERE id = $1 AND password_hash = $2",
            subject_id, old_hash, new_hash,
        )

    async def totp_factor(self, kind: str, subject_id: int) -> TotpFactor | None:
        row = await self._pool.fetchrow(
            "SELECT account_id, secret_blob, confirmed, last_step FROM totp_factors"
            " WHERE subject_kind = $1 AND subject_id = $2",
            kind, subject_id,
        )
        if row is None:
            return None
        return TotpFactor(row["account_id"], bytes(row["secret_blob"]), row["confirmed"], row["last_step"])

    async def put_pending_totp(self, kind: str, subject_id: int, account_id: int, blob: bytes) -> bool:
        """Start (or restart) an unconfirmed enrolment; False when a confirmed factor exists."""
        done = await self._pool.fetchval(
            "INSERT INTO totp_factors (subject_kind, subject_id, account_id, secret_blob) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (subject_kind, subject_id) DO UPDATE"
            " SET secret_blob = EXCLUDED.secret_blob, account_id = EXCLUDED.account_id, last_step = 0,"
            "     create_time = now()"
            " WHERE NOT totp_factors.confirmed RETURNING true",
            kind, subject_id, account_id, blob,
        )
        return bool(done)

    async def confirm_totp(
        self, kind: str, subject_id: int, step: int, recovery_hashes: Sequence[bytes],
        before_commit: Callable[[], Awaitable[None]],
    ) -> bool:
        """Confirm a pending factor with its first code (consuming the step) and store recovery codes."""
        async with self._pool.acquire() as conn, conn.transaction():
            done = await conn.fetchval(
                "UPDATE totp_factors SET confirmed = true, confirm_time = now(), last_step = $3"
                " WHERE subject_kind = $1 AND subject_id = $2 AND NOT confirmed AND last_step < $3 RETURNING true",
                kind, subject_id, step,
            )
            if not done:
                return False
            await replace_recovery_codes(conn, kind, subject_id, recovery_hashes)
            await before_commit()
        return True

    async def remove_totp(self, kind: str, subject_id: int, before_commit: Callable[[], Awaitable[None]]) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            done = await conn.fetchval(
                "DELETE FROM totp_factors WHERE subject_kind = $1 AND subject_id = $2 RETURNING true", kind, subject_id
            )
            await conn.execute(
                "DELETE FROM recovery_codes WHERE subject_kind = $1 AND subject_id = $2", kind, subject_id
            )
            if done:
                await before_commit()
        return bool(done)

    async def replace_recovery_codes(
        self, kind: str, subject_id: int, hashes: Sequence[bytes], before_commit: Callable[[], Awaitable[None]]
    ) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await replace_recovery_codes(conn, kind, subject_id, hashes)
            await before_commit()

    async def recovery_codes_left(self, kind: str, subject_id: int) -> int:
        value = await self._pool.fetchval(
            "SELECT count(*) FROM recovery_codes WHERE subject_kind = $1 AND subject_id = $2 AND use_time IS NULL",
            kind, subject_id,
        )
        return int(value or 0)

    async def create_session(
        self, session: SessionRecord, token_hash: bytes, use: SecondFactorUse | None, subject_key: str
    ) -> bool:
        """Consume the second factor, create the session and clear the subject's failure counter, all in one
        transaction. False (nothing written) when the factor was already used: a replayed TOTP step or a
        spent recovery code; of concurrent logins with the same code exactly one gets True."""
        async with self._pool.acquire() as conn, conn.transaction():
            if use is not None and not await _consume(conn, session.subject_kind, session.subject_id, use):
                return False
            await conn.execute(
                "INSERT INTO sessions (id, token_hash, subject_kind, subject_id, account_id, amr, mfa_time,"
                " client_address, user_agent, create_time, expire_time, last_seen_time)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $10)",
                session.id, token_hash, session.subject_kind, session.subject_id, session.account_id,
                list(session.amr), session.mfa_time, session.client_address, session.user_agent,
                session.create_time, session.expire_time,
            )
            await conn.execute("DELETE FROM login_throttle WHERE scope = 'subject' AND key = $1", subject_key)
        return True

    async def step_up(
        self, session_id: str, kind: str, subject_id: int, use: SecondFactorUse, amr: str, subject_key: str
    ) -> datetime | None:
        """Consume the factor and stamp the session's mfa_time; None when the factor was already used or the
        session is no longer live."""
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                if not await _consume(conn, kind, subject_id, use):
                    return None
                when = await conn.fetchval(
                    "UPDATE sessions SET mfa_time = now(),"
                    " amr = CASE WHEN $4 = ANY(amr) THEN amr ELSE array_append(amr, $4) END"
                    " WHERE id = $1 AND subject_kind = $2 AND subject_id = $3 AND revoke_time IS NULL"
                    " AND expire_time > now() RETURNING mfa_time",
                    session_id, kind, subject_id, amr,
                )
                if when is None:
                    raise _Rollback()
                await conn.execute("DELETE FROM login_throttle WHERE scope = 'subject' AND key = $1", subject_key)
        except _Rollback:
            return None
        return when  # type: ignore[no-any-return]

    async def resolve_session(self, token_hash: bytes, idle_seconds: int) -> SessionRecord | None:
        """The live session for a token, marking it seen (at most once a minute)."""
        row = await self._pool.fetchrow(
            "UPDATE sessions SET last_seen_time = CASE WHEN last_seen_time < now() - interval '60 seconds'"
            " THEN now() ELSE last_seen_time END"
            " WHERE token_hash = $1 AND revoke_time IS NULL AND expire_time > now()"
            " AND last_seen_time > now() - $2::interval"
            f" RETURNING {SESSION_COLUMNS}",
            token_hash, timedelta(seconds=idle_seconds),
        )
        return to_session(row) if row else None

    async def get_session(self, session_id: str) -> SessionRecord | None:
        row = await self._pool.fetchrow(
            f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1 AND revoke_time IS NULL AND expire_time > now()",
            session_id,
        )
        return to_session(row) if row else None

    async def list_sessions(self, kind: str, subject_id: int) -> list[SessionRecord]:
        rows = await self._pool.fetch(
            f"SELECT {SESSION_COLUMNS} FROM sessions WHERE subject_kind = $1 AND subject_id = $2"
            " AND revoke_time IS NULL AND expire_time > now() ORDER BY create_time DESC LIMIT 100",
            kind, subject_id,
        )
        return [to_session(r) for r in rows]

    async def revoke_session(self, kind: str, subject_id: int, session_id: str, reason: str) -> bool:
        done = await self._pool.fetchval(
            "UPDATE sessions SET revoke_time = now(), revoke_reason = $4"
            " WHERE id = $3 AND subject_kind = $1 AND subject_id = $2 AND revoke_time IS NULL RETURNING true",
            kind, subject_id, session_id, reason,
        )
        return bool(done)

    async def revoke_sessions(self, kind: str, subject_id: int, reason: str, keep: str | None = None) -> int:
        async with self._pool.acquire() as conn:
            return await revoke_all(conn, kind, subject_id, reason, keep=keep)

    async def count_failure(self, scope: str, key: str, *, max_failures: int, window: int, lock: int) -> Attempt:
        """Count one attempt, atomically, and say whether it may go on (see domain.sessions.ThrottlePolicy).

        An expired lock or an unlocked, stale window starts the count again."""
        row = await self._pool.fetchrow(
            """
            INSERT INTO login_throttle AS t (scope, key, failures, window_start, locked_until)
            VALUES ($1, $2, 1, now(), CASE WHEN $3 <= 1 THEN now() + $5::interval END)
            ON CONFLICT (scope, key) DO UPDATE SET
              failures = CASE WHEN (t.locked_until IS NOT NULL AND t.locked_until <= now())
                                OR (t.locked_until IS NULL AND t.window_start < now() - $4::interval)
                              THEN 1 ELSE t.failures + 1 END,
              window_start = CASE WHEN (t.locked_until IS NOT NULL AND t.locked_until <= now())
                                    OR (t.locked_until IS NULL AND t.window_start < now() - $4::interval)
                                  THEN now() ELSE t.window_start END,
              locked_until = CASE
                WHEN t.locked_until IS NOT NULL AND t.locked_until > now() THEN t.locked_until
                WHEN (t.locked_until IS NOT NULL AND t.locked_until <= now())
                  OR (t.locked_until IS NULL AND t.window_start < now() - $4::interval) THEN
                  CASE WHEN $3 <= 1 THEN now() + $5::interval END
                WHEN t.failures + 1 >= $3 THEN now() + $5::interval
              END
            RETURNING failures, window_start, locked_until
            """,
            scope, key, max_failures, timedelta(seconds=window), timedelta(seconds=lock),
        )
        assert row is not None
        return Attempt(failures=row["failures"], locked=row["failures"] > max_failures)

    async def forgive(self, counters: list[tuple[str, str]]) -> None:
        """A successful login does not count against its client address and network: (scope, key) pairs."""
        if not counters:
            return
        await self._pool.execute(
            "UPDATE login_throttle SET failures = greatest(failures - 1, 0)"
            " WHERE (scope, key) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
            [c[0] for c in counters], [c[1] for c in counters],
        )

    async def failures(self, scope: str, key: str) -> int:
        value = await self._pool.fetchval(
            "SELECT failures FROM login_throttle WHERE scope = $1 AND key = $2", scope, key
        )
        return int(value or 0)

    async def prune(self) -> int:
        """Forget counters nobody has touched for a day and that hold no lock, and long-dead sessions."""
        result = await self._pool.execute(
            "DELETE FROM login_throttle WHERE window_start < now() - interval '1 day'"
            " AND (locked_until IS NULL OR locked_until < now())"
        )
        await self._pool.execute(
            "DELETE FROM sessions WHERE coalesce(revoke_time, expire_time) < now() - interval '30 days'"
        )
        return int(result.split()[-1])


class _Rollback(Exception):
    """Raised inside a transaction to undo it; never escapes the store."""


async def _consume(conn: asyncpg.Connection, kind: str, subject_id: int, use: SecondFactorUse) -> bool:
    if use.totp_step is not None:
        done = await conn.fetchval(
            "UPDATE totp_factors SET last_step = $3,"
            " confirmed = confirmed OR $4, confirm_time = CASE WHEN confirmed THEN confirm_time ELSE now() END"
            " WHERE subject_kind = $1 AND subject_id = $2 AND last_step < $3 AND (confirmed OR $4) RETURNING true",
            kind, subject_id, use.totp_step, use.confirm,
        )
        return bool(done)
    if use.recovery_hash is not None:
        done = await conn.fetchval(
            "UPDATE recovery_codes SET use_time = now()"
            " WHERE subject_kind = $1 AND subject_id = $2 AND code_hash = $3 AND use_time IS NULL RETURNING true",
            kind, subject_id, use.recovery_hash,
        )
        return bool(done)
    return True
