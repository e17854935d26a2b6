"""All SQL of the identity service."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from services.identity.domain import (
    FLAG_NAMES,
    STAFF,
    USER,
    AccessFlags,
    Account,
    Attempt,
    NewAccount,
    NewSubaccount,
    SessionRecord,
    StaffMember,
    SubaccountChanges,
    Subject,
    User,
    UsernameTaken,
    derive_permissions,
    username_key,
)

_ACCOUNT_COLUMNS = "a.id AS a_id, a.name AS a_name, a.country, a.timezone, a.test_mode, a.create_time AS a_create_time"
_USER_FIELDS = (
    "id",
    "account_id",
    "api_username",
    "email",
    "phone_number",
    "first_name",
    "last_name",
    "is_main",
    "notes",
    *FLAG_NAMES,
    "active",
    "banned",
    "create_time",
    "update_time",
)
_USER_COLUMNS = ", ".join(f"u.{f}" for f in _USER_FIELDS)
_SELECT = f"SELECT {_ACCOUNT_COLUMNS}, {_USER_COLUMNS} FROM users u JOIN accounts a ON a.id = u.account_id"
_LIVE = "u.delete_time IS NULL"
_USERNAME_INDEX = "users_api_username_key"
_STAFF_USERNAME_INDEX = "staff_users_username_key"
_STAFF_COLUMNS = "id, username, email, display_name, role, active, create_time"
_SESSION_COLUMNS = (
    "id, subject_kind, subject_id, account_id, amr, mfa_time, client_address, user_agent, create_time,"
    " expire_time, last_seen_time"
)

BeforeCommit = Callable[[Account, User], Awaitable[None]]


def _account(r: asyncpg.Record) -> Account:
    return Account(
        id=r["a_id"],
        name=r["a_name"],
        country=r["country"],
        timezone=r["timezone"],
        test_mode=r["test_mode"],
        create_time=r["a_create_time"],
    )


def _user(r: asyncpg.Record) -> User:
    return User(
        id=r["id"],
        account_id=r["account_id"],
        api_username=r["api_username"],
        email=r["email"],
        phone_number=r["phone_number"],
        first_name=r["first_name"],
        last_name=r["last_name"],
        is_main=r["is_main"],
        notes=r["notes"],
        flags=AccessFlags(**{f: r[f] for f in FLAG_NAMES}),
        active=r["active"],
        banned=r["banned"],
        create_time=r["create_time"],
        update_time=r["update_time"],
    )


def _staff(r: asyncpg.Record) -> StaffMember:
    return StaffMember(
        id=r["id"],
        username=r["username"],
        email=r["email"],
        display_name=r["display_name"],
        role=r["role"],
        active=r["active"],
        create_time=r["create_time"],
    )


def _session(r: asyncpg.Record) -> SessionRecord:
    return SessionRecord(
        id=r["id"],
        subject_kind=r["subject_kind"],
        subject_id=r["subject_id"],
        account_id=r["account_id"],
        amr=tuple(r["amr"]),
        mfa_time=r["mfa_time"],
        client_address=r["client_address"],
        user_agent=r["user_agent"],
        create_time=r["create_time"],
        expire_time=r["expire_time"],
        last_seen_time=r["last_seen_time"],
    )


@dataclass(frozen=True)
class TotpFactor:
    account_id: int
    secret_blob: bytes
    confirmed: bool
    last_step: int


@dataclass(frozen=True)
class SecondFactorUse:
    """What a login or step-up consumes, atomically with what it grants: a TOTP step (accepted only by moving
    `last_step` forward; `confirm` also confirms a pending factor) or one unused recovery code."""

    totp_step: int | None = None
    confirm: bool = False
    recovery_hash: bytes | None = None


class PgIdentityStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def platform_account_id(self) -> int:
        value = await self._pool.fetchval("SELECT id FROM accounts WHERE platform")
        assert value is not None, "migration 0002 creates the platform account"
        return int(value)

    async def get_user(self, user_id: int) -> tuple[Account, User] | None:
        row = await self._pool.fetchrow(f"{_SELECT} WHERE u.id = $1 AND {_LIVE}", user_id)
        return (_account(row), _user(row)) if row else None

    async def find_user(self, api_username: str) -> tuple[Account, User] | None:
        row = await self._pool.fetchrow(
            f"{_SELECT} WHERE lower(u.api_username) = $1 AND {_LIVE}", username_key(api_username)
        )
        return (_account(row), _user(row)) if row else None

    async def create_account(
        self, new: NewAccount, before_commit: BeforeCommit, password_hash: str | None = None
    ) -> tuple[Account, User]:
        """Insert the account and its main user in one transaction; `before_commit` runs inside it
        (the audit record), and if it raises nothing is written."""
        flags = AccessFlags.all_granted()
        async with self._pool.acquire() as conn, conn.transaction():
            a = await conn.fetchrow(
                "INSERT INTO accounts (name, country, timezone, test_mode) VALUES ($1, $2, $3, $4)"
                " RETURNING id AS a_id, name AS a_name, country, timezone, test_mode, create_time AS a_create_time",
                new.account_name,
                new.country,
                new.timezone,
                new.test_mode,
            )
            assert a is not None
            names = ", ".join(FLAG_NAMES)
            params = ", ".join(f"${i}" for i in range(7, 7 + len(FLAG_NAMES)))
            try:
                u = await conn.fetchrow(
                    "INSERT INTO users (account_id, api_username, email, phone_number, first_name, last_name,"
                    f" is_main, {names}, password_hash, password_change_time)"
                    f" VALUES ($1, $2, $3, $4, $5, $6, true, {params}, ${7 + len(FLAG_NAMES)},"
                    f" CASE WHEN ${7 + len(FLAG_NAMES)}::text IS NULL THEN NULL ELSE now() END)"
                    f" RETURNING {', '.join(_USER_FIELDS)}",
                    a["a_id"],
                    new.api_username,
                    new.email,
                    new.phone_number,
                    new.first_name,
                    new.last_name,
                    *(getattr(flags, f) for f in FLAG_NAMES),
                    password_hash,
                )
            except asyncpg.UniqueViolationError as err:
                if err.constraint_name == _USERNAME_INDEX:
                    raise UsernameTaken("that api_username is taken") from None
                raise
            assert u is not None
            account, user = _account(a), _user(u)
            await before_commit(account, user)
        return account, user

    # -- sub-accounts ---------------------------------------------------------------------------------

    async def list_users(self, account_id: int, offset: int, limit: int) -> tuple[int, list[User]]:
        async with self._pool.acquire() as conn:
            total = await conn.fetchval(
                f"SELECT count(*) FROM users u WHERE u.account_id = $1 AND {_LIVE}", account_id
            )
            rows = await conn.fetch(
                f"{_SELECT} WHERE u.account_id = $1 AND {_LIVE} ORDER BY u.id LIMIT $2 OFFSET $3",
                account_id, limit, offset,
            )
        return int(total), [_user(r) for r in rows]

    async def create_subaccount(
        self, new: NewSubaccount, password_hash: str, before_commit: Callable[[User], Awaitable[None]]
    ) -> User:
        """Insert the user; `before_commit` (audit, API key) runs inside the transaction."""
        names = ", ".join(FLAG_NAMES)
        params = ", ".join(f"${i}" for i in range(9, 9 + len(FLAG_NAMES)))
        async with self._pool.acquire() as conn, conn.transaction():
            try:
                row = await conn.fetchrow(
                    "INSERT INTO users (account_id, api_username, email, phone_number, first_name, last_name, notes,"
                    f" password_hash, password_change_time, is_main, {names})"
                    f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now(), false, {params})"
                    f" RETURNING {', '.join(_USER_FIELDS)}",
                    new.account_id, new.api_username, new.email, new.phone_number, new.first_name, new.last_name,
                    new.notes, password_hash, *(getattr(new.flags, f) for f in FLAG_NAMES),
                )
            except asyncpg.UniqueViolationError as err:
                if err.constraint_name == _USERNAME_INDEX:
                    raise UsernameTaken("that api_username is taken") from None
                raise
            assert row is not None
            user = _user(row)
            await before_commit(user)
        return user

    async def update_user(
        self, user_id: int, changes: SubaccountChanges, before_commit: Callable[[User], Awaitable[None]]
    ) -> User | None:
        sets: list[str] = []
        args: list[object] = [user_id]

        def put(column: str, value: object) -> None:
            args.append(value)
            sets.append(f"{column} = ${len(args)}")

        for column in ("email", "phone_number", "first_name", "last_name"):
            value = getattr(changes, column)
            if value is not None:
                put(column, value)
        if changes.set_notes:
            put("notes", changes.notes)
        if changes.flags is not None:
            for name in FLAG_NAMES:
                put(name, getattr(changes.flags, name))
        if changes.password_hash is not None:
            put("password_hash", changes.password_hash)
            sets.append("password_change_time = now()")
        sets.append("update_time = now()")
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"UPDATE users u SET {', '.join(sets)} WHERE u.id = $1 AND {_LIVE}"
                f" RETURNING {', '.join(_USER_FIELDS)}",
                *args,
            )
            if row is None:
                return None
            if changes.password_hash is not None:  # a new password ends every session of that user
                await _revoke_all(conn, USER, user_id, "password_changed")
            user = _user(row)
            await before_commit(user)
        return user

    async def delete_user(self, user_id: int, before_commit: Callable[[], Awaitable[None]]) -> bool:
        """Mark the user deleted (its name stays reserved) and end its sessions."""
        async with self._pool.acquire() as conn, conn.transaction():
            done = await conn.fetchval(
                "UPDATE users u SET delete_time = now(), active = false, password_hash = NULL, update_time = now()"
                f" WHERE u.id = $1 AND {_LIVE} AND NOT u.is_main RETURNING true",
                user_id,
            )
            if not done:
                return False
            await _revoke_all(conn, USER, user_id, "user_deleted")
            await conn.execute("DELETE FROM totp_factors WHERE subject_kind = 'user' AND subject_id = $1", user_id)
            await conn.execute("DELETE FROM recovery_codes WHERE subject_kind = 'user' AND subject_id = $1", user_id)
            await before_commit()
        return True

    async def set_user_active(
        self, user_id: int, active: bool, before_commit: Callable[[User], Awaitable[None]]
    ) -> tuple[User, bool] | None:
        """The user after the change and whether it has a confirmed second factor."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"UPDATE users u SET active = $2, update_time = now() WHERE u.id = $1 AND {_LIVE}"
                f" RETURNING {', '.join(_USER_FIELDS)}, EXISTS (SELECT 1 FROM totp_factors f"
                " WHERE f.subject_kind = 'user' AND f.subject_id = u.id AND f.confirmed) AS mfa",
                user_id, active,
            )
            if row is None:
                return None
            if not active:
                await _revoke_all(conn, USER, user_id, "user_suspended")
            user = _user(row)
            await before_commit(user)
        return user, bool(row["mfa"])

    async def get_account(self, account_id: int) -> Account | None:
        row = await self._pool.fetchrow(
            "SELECT id AS a_id, name AS a_name, country, timezone, test_mode, create_time AS a_create_time"
            " FROM accounts WHERE id = $1 AND NOT platform",
            account_id,
        )
        return _account(row) if row else None

    async def account_users(self, account_id: int) -> list[tuple[User, bool]]:
        """Every live user of an account and whether it has a confirmed second factor."""
        rows = await self._pool.fetch(
            f"SELECT {_ACCOUNT_COLUMNS}, {_USER_COLUMNS}, (f.confirmed IS TRUE) AS mfa"
            " FROM users u JOIN accounts a ON a.id = u.account_id"
            " LEFT JOIN totp_factors f ON f.subject_kind = 'user' AND f.subject_id = u.id"
            f" WHERE u.account_id = $1 AND {_LIVE} ORDER BY u.id",
            account_id,
        )
        return [(_user(r), r["mfa"]) for r in rows]

    # -- people who log in --------------------------------------------------------------------------

    async def find_subject(self, kind: str, username: str, platform_account_id: int) -> Subject | None:
        if kind == STAFF:
            row = await self._pool.fetchrow(
                f"SELECT {_STAFF_COLUMNS}, password_hash FROM staff_users WHERE lower(username) = $1",
                username_key(username),
            )
            return _staff_subject(row, platform_account_id) if row else None
        row = await self._pool.fetchrow(
            f"{_SELECT.replace('SELECT ', 'SELECT u.password_hash, ', 1)} WHERE lower(u.api_username) = $1 AND {_LIVE}",
            username_key(username),
        )
        return _user_subject(row) if row else None

    async def get_subject(self, kind: str, subject_id: int, platform_account_id: int) -> Subject | None:
        if kind == STAFF:
            row = await self._pool.fetchrow(
                f"SELECT {_STAFF_COLUMNS}, password_hash FROM staff_users WHERE id = $1", subject_id
            )
            return _staff_subject(row, platform_account_id) if row else None
        row = await self._pool.fetchrow(
            f"{_SELECT.replace('SELECT ', 'SELECT u.password_hash, ', 1)} WHERE u.id = $1 AND {_LIVE}", subject_id
        )
        return _user_subject(row) if row else None

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
            return await _revoke_all(conn, kind, subject_id, "password_changed", keep=revoke_except)

    async def rehash_password(self, kind: str, subject_id: int, old_hash: str, new_hash: str) -> None:
        """Same password, current parameters; only if nobody changed it meanwhile."""
        table = "staff_users" if kind == STAFF else "users"
        await self._pool.execute(
            f"UPDATE {table} SET password_hash = $3 WHERE id = $1 AND password_hash = $2",
            subject_id, old_hash, new_hash,
        )

    # -- second factors -------------------------------------------------------------------------------

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
            await _replace_recovery_codes(conn, kind, subject_id, recovery_hashes)
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
            await _replace_recovery_codes(conn, kind, subject_id, hashes)
            await before_commit()

    async def recovery_codes_left(self, kind: str, subject_id: int) -> int:
        value = await self._pool.fetchval(
            "SELECT count(*) FROM recovery_codes WHERE subject_kind = $1 AND subject_id = $2 AND use_time IS NULL",
            kind, subject_id,
        )
        return int(value or 0)

    # -- sessions -------------------------------------------------------------------------------------

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
            f" RETURNING {_SESSION_COLUMNS}",
            token_hash, timedelta(seconds=idle_seconds),
        )
        return _session(row) if row else None

    async def get_session(self, session_id: str) -> SessionRecord | None:
        row = await self._pool.fetchrow(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = $1 AND revoke_time IS NULL AND expire_time > now()",
            session_id,
        )
        return _session(row) if row else None

    async def list_sessions(self, kind: str, subject_id: int) -> list[SessionRecord]:
        rows = await self._pool.fetch(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE subject_kind = $1 AND subject_id = $2"
            " AND revoke_time IS NULL AND expire_time > now() ORDER BY create_time DESC LIMIT 100",
            kind, subject_id,
        )
        return [_session(r) for r in rows]

    async def revoke_session(self, kind: str, subject_id: int, session_id: str, reason: str) -> bool:
        done = await self._pool.fetchval(
            "UPDATE sessions SET revoke_time = now(), revoke_reason = $4"
            " WHERE id = $3 AND subject_kind = $1 AND subject_id = $2 AND revoke_time IS NULL RETURNING true",
            kind, subject_id, session_id, reason,
        )
        return bool(done)

    async def revoke_sessions(self, kind: str, subject_id: int, reason: str, keep: str | None = None) -> int:
        async with self._pool.acquire() as conn:
            return await _revoke_all(conn, kind, subject_id, reason, keep=keep)

    # -- throttling ---------------------------------------------------------------------------------

    async def count_failure(self, scope: str, key: str, *, max_failures: int, window: int, lock: int) -> Attempt:
        """Count one attempt, atomically, and say whether it may go on (see domain.ThrottlePolicy).

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

    # -- staff ----------------------------------------------------------------------------------------

    async def create_staff(
        self, username: str, email: str, display_name: str, role: str, password_hash: str,
        secret_blob: Callable[[int], Awaitable[bytes]], recovery_hashes: Sequence[bytes], platform_account_id: int,
        before_commit: Callable[[StaffMember], Awaitable[None]],
    ) -> StaffMember:
        """The member, their (unconfirmed) TOTP factor and recovery codes, in one transaction."""
        async with self._pool.acquire() as conn, conn.transaction():
            try:
                row = await conn.fetchrow(
                    "INSERT INTO staff_users (username, email, display_name, role, password_hash)"
                    f" VALUES ($1, $2, $3, $4, $5) RETURNING {_STAFF_COLUMNS}",
                    username, email, display_name, role, password_hash,
                )
            except asyncpg.UniqueViolationError as err:
                if err.constraint_name == _STAFF_USERNAME_INDEX:
                    raise UsernameTaken("that staff username is taken") from None
                raise
            assert row is not None
            member = _staff(row)
            await conn.execute(
                "INSERT INTO totp_factors (subject_kind, subject_id, account_id, secret_blob)"
                " VALUES ('staff', $1, $2, $3)",
                member.id, platform_account_id, await secret_blob(member.id),
            )
            await _replace_recovery_codes(conn, STAFF, member.id, recovery_hashes)
            await before_commit(member)
        return member

    async def get_staff(self, staff_id: int) -> StaffMember | None:
        row = await self._pool.fetchrow(f"SELECT {_STAFF_COLUMNS} FROM staff_users WHERE id = $1", staff_id)
        return _staff(row) if row else None

    async def set_staff_role(
        self, staff_id: int, role: str, before_commit: Callable[[StaffMember], Awaitable[None]]
    ) -> StaffMember | None:
        """Change the role; the member's sessions end (they carry the old role's permissions)."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"UPDATE staff_users SET role = $2, update_time = now() WHERE id = $1 RETURNING {_STAFF_COLUMNS}",
                staff_id, role,
            )
            if row is None:
                return None
            await _revoke_all(conn, STAFF, staff_id, "role_changed")
            member = _staff(row)
            await before_commit(member)
        return member


class _Rollback(Exception):
    """Raised inside a transaction to undo it; never escapes the store."""


def _user_subject(r: asyncpg.Record) -> Subject:
    user, account = _user(r), _account(r)
    return Subject(
        kind=USER,
        id=user.id,
        account_id=user.account_id,
        username=user.api_username,
        email=user.email,
        password_hash=r["password_hash"],
        enabled=user.enabled,
        permissions=derive_permissions(user.flags, is_main=user.is_main, enabled=user.enabled),
        test_mode=account.test_mode,
        sms_deidentify_message=user.flags.sms_deidentify_message,
    )


def _staff_subject(r: asyncpg.Record, platform_account_id: int) -> Subject:
    member = _staff(r)
    return Subject(
        kind=STAFF,
        id=member.id,
        account_id=platform_account_id,
        username=member.username,
        email=member.email,
        password_hash=r["password_hash"],
        enabled=member.active,
        permissions=member.permissions,
        role=member.role,
    )


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


async def _replace_recovery_codes(
    conn: asyncpg.Connection, kind: str, subject_id: int, hashes: Sequence[bytes]
) -> None:
    await conn.execute("DELETE FROM recovery_codes WHERE subject_kind = $1 AND subject_id = $2", kind, subject_id)
    await conn.executemany(
        "INSERT INTO recovery_codes (subject_kind, subject_id, code_hash) VALUES ($1, $2, $3)",
        [(kind, subject_id, h) for h in hashes],
    )


async def _revoke_all(
    conn: asyncpg.Connection, kind: str, subject_id: int, reason: str, keep: str | None = None
) -> int:
    result = await conn.execute(
        "UPDATE sessions SET revoke_time = now(), revoke_reason = $3"
        " WHERE subject_kind = $1 AND subject_id = $2 AND revoke_time IS NULL AND id IS DISTINCT FROM $4",
        kind, subject_id, reason, keep,
    )
    return int(result.split()[-1])
