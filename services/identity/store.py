"""All SQL of the identity service."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg

from services.identity.domain import FLAG_NAMES, AccessFlags, Account, NewAccount, User, UsernameTaken, username_key

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
_USERNAME_INDEX = "users_api_username_key"

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


class PgIdentityStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get_user(self, user_id: int) -> tuple[Account, User] | None:
        row = await self._pool.fetchrow(f"{_SELECT} WHERE u.id = $1", user_id)
        return (_account(row), _user(row)) if row else None

    async def find_user(self, api_username: str) -> tuple[Account, User] | None:
        row = await self._pool.fetchrow(f"{_SELECT} WHERE lower(u.api_username) = $1", username_key(api_username))
        return (_account(row), _user(row)) if row else None

    async def create_account(self, new: NewAccount, before_commit: BeforeCommit) -> tuple[Account, User]:
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
                    f" is_main, {names}) VALUES ($1, $2, $3, $4, $5, $6, true, {params})"
                    f" RETURNING {', '.join(_USER_FIELDS)}",
                    a["a_id"],
                    new.api_username,
                    new.email,
                    new.phone_number,
                    new.first_name,
                    new.last_name,
                    *(getattr(flags, f) for f in FLAG_NAMES),
                )
            except asyncpg.UniqueViolationError as err:
                if err.constraint_name == _USERNAME_INDEX:
                    raise UsernameTaken("that api_username is taken") from None
                raise
            assert u is not None
            account, user = _account(a), _user(u)
            await before_commit(account, user)
        return account, user
