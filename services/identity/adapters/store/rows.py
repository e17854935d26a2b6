"""What every query class shares: the pool holder, column lists, row -> record mapping, transaction helpers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import asyncpg

from services.identity.adapters.store.personal import CT_FIELDS, PersonalData, Sealer
from services.identity.domain.accounts import Account, User
from services.identity.domain.closure import permissions_while
from services.identity.domain.flags import FLAG_NAMES, AccessFlags, derive_permissions
from services.identity.domain.sessions import STAFF, USER, SessionRecord, Subject
from services.identity.domain.staff import StaffMember

ACCOUNT_COLUMNS = (
    "a.id AS a_id, a.name AS a_name, a.country, a.timezone, a.test_mode, a.create_time AS a_create_time,"
    " a.state AS a_state"
)

USER_FIELDS = (
    "id",
    "account_id",
    "api_username",
    "email",
    "phone_number",
    "first_name",
    "last_name",
    "is_main",
    "notes",
    *CT_FIELDS,
    *FLAG_NAMES,
    "allowed_senders_ct",
    "active",
    "banned",
    "create_time",
    "update_time",
)

USER_COLUMNS = ", ".join(f"u.{f}" for f in USER_FIELDS)
SELECT = f"SELECT {ACCOUNT_COLUMNS}, {USER_COLUMNS} FROM users u JOIN accounts a ON a.id = u.account_id"
LIVE = "u.delete_time IS NULL"
STAFF_COLUMNS = "id, username, email, display_name, role, active, create_time"

SESSION_COLUMNS = (
    "id, subject_kind, subject_id, account_id, amr, mfa_time, client_address, user_agent, create_time,"
    " expire_time, last_seen_time"
)


def to_account(r: asyncpg.Record) -> Account:
    return Account(
        id=r["a_id"],
        name=r["a_name"],
        country=r["country"],
        timezone=r["timezone"],
        test_mode=r["test_mode"],
        create_time=r["a_create_time"],
    )


def to_user(
    r: asyncpg.Record, personal: Mapping[str, str | None] | None = None, senders: tuple[str, ...] = ()
) -> User:
    """The user of a row; its personal fields from `personal` (opened by `PersonalData.open`) and its sender
    limit (`PersonalData.open_senders`), or empty when the caller needs none of them (login)."""
    p = personal or {}
    return User(
        id=r["id"],
        account_id=r["account_id"],
        api_username=r["api_username"],
        email=p.get("email") or "",
        phone_number=p.get("phone_number") or "",
        first_name=p.get("first_name") or "",
        last_name=p.get("last_name") or "",
        is_main=r["is_main"],
        notes=p.get("notes"),
        flags=AccessFlags(**{f: r[f] for f in FLAG_NAMES}),
        active=r["active"],
        banned=r["banned"],
        create_time=r["create_time"],
        update_time=r["update_time"],
        allowed_senders=senders,
    )


def to_staff(r: asyncpg.Record) -> StaffMember:
    return StaffMember(
        id=r["id"],
        username=r["username"],
        email=r["email"],
        display_name=r["display_name"],
        role=r["role"],
        active=r["active"],
        create_time=r["create_time"],
    )


def to_session(r: asyncpg.Record) -> SessionRecord:
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


class Queries:
    """What every query class holds: the pool, and the sealer of users' personal data."""

    def __init__(self, pool: asyncpg.Pool, sealer: Sealer | None = None) -> None:
        self._pool = pool
        self._personal = PersonalData(sealer)

    async def _user(self, r: asyncpg.Record) -> User:
        """The user of a row with its personal data opened (decrypted under the account's data key)."""
        return to_user(r, await self._personal.open(r), await self._personal.open_senders(r))


def to_user_subject(r: asyncpg.Record, senders: tuple[str, ...] = ()) -> Subject:
    user, account = to_user(r), to_account(r)
    return Subject(
        kind=USER,
        id=user.id,
        account_id=user.account_id,
        username=user.api_username,
        email="",  # sealed; not opened on the login path (change_password asks the store for it)
        password_hash=r["password_hash"],
        enabled=user.enabled,
        # A closing account's main user may only see or cancel the closure; its other users nothing.
        permissions=permissions_while(
            r["a_state"], user.is_main, derive_permissions(user.flags, is_main=user.is_main, enabled=user.enabled)),
        test_mode=account.test_mode,
        sms_deidentify_message=user.flags.sms_deidentify_message,
        allowed_senders=senders,
    )


def to_staff_subject(r: asyncpg.Record, platform_account_id: int) -> Subject:
    member = to_staff(r)
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


async def replace_recovery_codes(
    conn: asyncpg.Connection, kind: str, subject_id: int, hashes: Sequence[bytes]
) -> None:
    await conn.execute("DELETE FROM recovery_codes WHERE subject_kind = $1 AND subject_id = $2", kind, subject_id)
    await conn.executemany(
        "INSERT INTO recovery_codes (subject_kind, subject_id, code_hash) VALUES ($1, $2, $3)",
        [(kind, subject_id, h) for h in hashes],
    )


async def revoke_all(
    conn: asyncpg.Connection, kind: str, subject_id: int, reason: str, keep: str | None = None
) -> int:
    result = await conn.execute(
        "UPDATE sessions SET revoke_time = now(), revoke_reason = $3"
        " WHERE subject_kind = $1 AND subject_id = $2 AND revoke_time IS NULL AND id IS DISTINCT FROM $4",
        kind, subject_id, reason, keep,
    )
    return int(result.split()[-1])
