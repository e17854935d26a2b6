"""SQL for accounts, users and ClickSend sub-accounts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg

from services.identity.adapters.store.rows import (
    ACCOUNT_COLUMNS,
    LIVE,
    SELECT,
    USER_COLUMNS,
    USER_FIELDS,
    Queries,
    revoke_all,
    to_account,
    to_user,
)
from services.identity.domain.accounts import Account, NewAccount, User, username_key
from services.identity.domain.errors import UsernameTaken
from services.identity.domain.flags import FLAG_NAMES, AccessFlags
from services.identity.domain.sessions import USER
from services.identity.domain.subaccounts import NewSubaccount, SubaccountChanges

_USERNAME_INDEX = "users_api_username_key"

BeforeCommit = Callable[[Account, User], Awaitable[None]]


class UserQueries(Queries):
    """Accounts, users and ClickSend sub-accounts."""

    async def get_user(self, user_id: int) -> tuple[Account, User] | None:
        row = await self._pool.fetchrow(f"{SELECT} WHERE u.id = $1 AND {LIVE}", user_id)
        return (to_account(row), await self._user(row)) if row else None

    async def user_email(self, user_id: int) -> str:
        """A live user's email, opened (the password policy's identifiers at a password change)."""
        row = await self._pool.fetchrow(f"{SELECT} WHERE u.id = $1 AND {LIVE}", user_id)
        return (await self._user(row)).email if row else ""

    async def seal_personal_in_clear(self) -> int:
        """Identity's startup backfill: seal users' personal data still in clear (rows from before 0004)."""
        return await self._personal.seal_rows_in_clear(self._pool)

    async def _new_ids(self, account: bool) -> tuple[int, int]:
        """Ids drawn before the insert: the ciphertexts' associated data names the record."""
        row = await self._pool.fetchrow(
            "SELECT CASE WHEN $1 THEN nextval(pg_get_serial_sequence('accounts', 'id')) ELSE 0 END AS a,"
            " nextval(pg_get_serial_sequence('users', 'id')) AS u",
            account,
        )
        assert row is not None
        return int(row["a"]), int(row["u"])

    async def find_user(self, api_username: str) -> tuple[Account, User] | None:
        row = await self._pool.fetchrow(
            f"{SELECT} WHERE lower(u.api_username) = $1 AND {LIVE}", username_key(api_username)
        )
        return (to_account(row), await self._user(row)) if row else None

    async def account_owners(self, account_id: int) -> list[User]:
        """The account's live main user(s), enabled or not (never the platform account's)."""
        rows = await self._pool.fetch(
            f"{SELECT} WHERE u.account_id = $1 AND u.is_main AND {LIVE} AND NOT a.platform ORDER BY u.id", account_id
        )
        return [await self._user(r) for r in rows]

    async def create_account(
        self, new: NewAccount, before_commit: BeforeCommit, password_hash: str | None = None
    ) -> tuple[Account, User]:
        """Insert the account and its main user in one transaction; `before_commit` runs inside it
        (the audit record), and if it raises nothing is written."""
        flags = AccessFlags.all_granted()
        account_id, user_id = await self._new_ids(account=True)
        personal: dict[str, str | None] = {
            "email": new.email, "phone_number": new.phone_number, "first_name": new.first_name,
            "last_name": new.last_name,
        }
        sealed = await self._personal.seal(account_id, user_id, personal)
        async with self._pool.acquire() as conn, conn.transaction():
            a = await conn.fetchrow(
                "INSERT INTO accounts (id, name, country, timezone, test_mode) VALUES ($5, $1, $2, $3, $4)"
                " RETURNING id AS a_id, name AS a_name, country, timezone, test_mode, create_time AS a_create_time",
                new.account_name,
                new.country,
                new.timezone,
                new.test_mode,
                account_id,
            )
            assert a is not None
            names = ", ".join(FLAG_NAMES)
            params = ", ".join(f"${i}" for i in range(8, 8 + len(FLAG_NAMES)))
            pw = f"${8 + len(FLAG_NAMES)}"
            try:
                u = await conn.fetchrow(
                    "INSERT INTO users (id, account_id, api_username, email_ct, phone_number_ct, first_name_ct,"
                    f" last_name_ct, is_main, {names}, password_hash, password_change_time)"
                    f" VALUES ($1, $2, $3, $4, $5, $6, $7, true, {params}, {pw},"
                    f" CASE WHEN {pw}::text IS NULL THEN NULL ELSE now() END)"
                    f" RETURNING {', '.join(USER_FIELDS)}",
                    user_id,
                    a["a_id"],
                    new.api_username,
                    *(sealed[f"{f}_ct"] for f in personal),
                    *(getattr(flags, f) for f in FLAG_NAMES),
                    password_hash,
                )
            except asyncpg.UniqueViolationError as err:
                if err.constraint_name == _USERNAME_INDEX:
                    raise UsernameTaken("that api_username is taken") from None
                raise
            assert u is not None
            account, user = to_account(a), to_user(u, personal | {"notes": None})
            await before_commit(account, user)
        return account, user

    async def list_users(self, account_id: int, offset: int, limit: int) -> tuple[int, list[User]]:
        async with self._pool.acquire() as conn:
            total = await conn.fetchval(
                f"SELECT count(*) FROM users u WHERE u.account_id = $1 AND {LIVE}", account_id
            )
            rows = await conn.fetch(
                f"{SELECT} WHERE u.account_id = $1 AND {LIVE} ORDER BY u.id LIMIT $2 OFFSET $3",
                account_id, limit, offset,
            )
        return int(total), [await self._user(r) for r in rows]

    async def users_after(self, account_id: int, after_user_id: int, limit: int) -> list[User]:
        """A page of the account's live users by id (keyset: the account export reads every page)."""
        rows = await self._pool.fetch(
            f"{SELECT} WHERE u.account_id = $1 AND u.id > $2 AND {LIVE} ORDER BY u.id LIMIT $3",
            account_id, after_user_id, limit,
        )
        return [await self._user(r) for r in rows]

    async def create_subaccount(
        self, new: NewSubaccount, password_hash: str, before_commit: Callable[[User], Awaitable[None]]
    ) -> User:
        """Insert the user; `before_commit` (audit, API key) runs inside the transaction."""
        names = ", ".join(FLAG_NAMES)
        params = ", ".join(f"${i}" for i in range(11, 11 + len(FLAG_NAMES)))
        _, user_id = await self._new_ids(account=False)
        personal: dict[str, str | None] = {
            "email": new.email, "phone_number": new.phone_number, "first_name": new.first_name,
            "last_name": new.last_name, "notes": new.notes,
        }
        sealed = await self._personal.seal(new.account_id, user_id, personal)
        senders = await self._personal.seal_senders(new.account_id, user_id, new.allowed_senders)
        async with self._pool.acquire() as conn, conn.transaction():
            try:
                row = await conn.fetchrow(
                    "INSERT INTO users (id, account_id, api_username, email_ct, phone_number_ct, first_name_ct,"
                    f" last_name_ct, notes_ct, password_hash, allowed_senders_ct, password_change_time, is_main,"
                    f" {names}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now(), false, {params})"
                    f" RETURNING {', '.join(USER_FIELDS)}",
                    user_id, new.account_id, new.api_username, *(sealed[f"{f}_ct"] for f in personal),
                    password_hash, senders, *(getattr(new.flags, f) for f in FLAG_NAMES),
                )
            except asyncpg.UniqueViolationError as err:
                if err.constraint_name == _USERNAME_INDEX:
                    raise UsernameTaken("that api_username is taken") from None
                raise
            assert row is not None
            user = to_user(row, personal, new.allowed_senders)
            await before_commit(user)
        return user

    async def set_allowed_senders(
        self, user_id: int, account_id: int, senders: tuple[str, ...], before_commit: Callable[[User], Awaitable[None]]
    ) -> User | None:
        """Replace a user's sender limit (empty: none); `before_commit` (audit) runs inside the transaction."""
        sealed = await self._personal.seal_senders(account_id, user_id, senders)
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"UPDATE users u SET allowed_senders_ct = $3, update_time = now()"
                f" WHERE u.id = $1 AND u.account_id = $2 AND {LIVE} RETURNING {', '.join(USER_FIELDS)}",
                user_id, account_id, sealed,
            )
            if row is None:
                return None
            user = await self._user(row)
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

        owner = await self._pool.fetchval("SELECT account_id FROM users WHERE id = $1", user_id)
        if owner is None:
            return None
        personal: dict[str, str | None] = {
            f: getattr(changes, f) for f in ("email", "phone_number", "first_name", "last_name")
            if getattr(changes, f) is not None
        }
        if changes.set_notes:
            personal["notes"] = changes.notes
        for column, blob in (await self._personal.seal(owner, user_id, personal)).items():
            put(column, blob)
        for column in personal:  # a value sealed now supersedes what an old row kept in clear
            sets.append(f"{column} = NULL")
        if changes.flags is not None:
            for name in FLAG_NAMES:
                put(name, getattr(changes.flags, name))
        if changes.password_hash is not None:
            put("password_hash", changes.password_hash)
            sets.append("password_change_time = now()")
        sets.append("update_time = now()")
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"UPDATE users u SET {', '.join(sets)} WHERE u.id = $1 AND {LIVE}"
                f" RETURNING {', '.join(USER_FIELDS)}",
                *args,
            )
            if row is None:
                return None
            if changes.password_hash is not None:  # a new password ends every session of that user
                await revoke_all(conn, USER, user_id, "password_changed")
            user = await self._user(row)
            await before_commit(user)
        return user

    async def delete_user(self, user_id: int, before_commit: Callable[[], Awaitable[None]]) -> bool:
        """Mark the user deleted (its name stays reserved) and end its sessions."""
        async with self._pool.acquire() as conn, conn.transaction():
            done = await conn.fetchval(
                "UPDATE users u SET delete_time = now(), active = false, password_hash = NULL, update_time = now()"
                f" WHERE u.id = $1 AND {LIVE} AND NOT u.is_main RETURNING true",
                user_id,
            )
            if not done:
                return False
            await revoke_all(conn, USER, user_id, "user_deleted")
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
                f"UPDATE users u SET active = $2, update_time = now() WHERE u.id = $1 AND {LIVE}"
                f" RETURNING {', '.join(USER_FIELDS)}, EXISTS (SELECT 1 FROM totp_factors f"
                " WHERE f.subject_kind = 'user' AND f.subject_id = u.id AND f.confirmed) AS mfa",
                user_id, active,
            )
            if row is None:
                return None
            if not active:
                await revoke_all(conn, USER, user_id, "user_suspended")
            user = await self._user(row)
            await before_commit(user)
        return user, bool(row["mfa"])

    async def get_account(self, account_id: int) -> Account | None:
        row = await self._pool.fetchrow(
            "SELECT id AS a_id, name AS a_name, country, timezone, test_mode, create_time AS a_create_time"
            " FROM accounts WHERE id = $1 AND NOT platform",
            account_id,
        )
        return to_account(row) if row else None

    async def account_users(self, account_id: int) -> list[tuple[User, bool]]:
        """Every live user of an account and whether it has a confirmed second factor."""
        rows = await self._pool.fetch(
            f"SELECT {ACCOUNT_COLUMNS}, {USER_COLUMNS}, (f.confirmed IS TRUE) AS mfa"
            " FROM users u JOIN accounts a ON a.id = u.account_id"
            " LEFT JOIN totp_factors f ON f.subject_kind = 'user' AND f.subject_id = u.id"
            f" WHERE u.account_id = $1 AND {LIVE} ORDER BY u.id",
            account_id,
        )
        return [(await self._user(r), r["mfa"]) for r in rows]
