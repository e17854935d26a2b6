"""SQL for the staff directory."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from services.identity.adapters.store.rows import STAFF_COLUMNS, Queries, replace_recovery_codes, revoke_all, to_staff
from services.identity.domain.errors import UsernameTaken
from services.identity.domain.sessions import STAFF
from services.identity.domain.staff import StaffMember

_STAFF_USERNAME_INDEX = "staff_users_username_key"


class StaffQueries(Queries):
    """The staff directory."""

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
                    f" VALUES ($1, $2, $3, $4, $5) RETURNING {STAFF_COLUMNS}",
                    username, email, display_name, role, password_hash,
                )
            except asyncpg.UniqueViolationError as err:
                if err.constraint_name == _STAFF_USERNAME_INDEX:
                    raise UsernameTaken("that staff username is taken") from None
                raise
            assert row is not None
            member = to_staff(row)
            await conn.execute(
                "INSERT INTO totp_factors (subject_kind, subject_id, account_id, secret_blob)"
                " VALUES ('staff', $1, $2, $3)",
                member.id, platform_account_id, await secret_blob(member.id),
            )
            await replace_recovery_codes(conn, STAFF, member.id, recovery_hashes)
            await before_commit(member)
        return member

    async def get_staff(self, staff_id: int) -> StaffMember | None:
        row = await self._pool.fetchrow(f"SELECT {STAFF_COLUMNS} FROM staff_users WHERE id = $1", staff_id)
        return to_staff(row) if row else None

    async def set_staff_role(
        self, staff_id: int, role: str, before_commit: Callable[[StaffMember], Awaitable[None]]
    ) -> StaffMember | None:
        """Change the role; the member's sessions end (they carry the old role's permissions)."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"UPDATE staff_users SET role = $2, update_time = now() WHERE id = $1 RETURNING {STAFF_COLUMNS}",
                staff_id, role,
            )
            if row is None:
                return None
            await revoke_all(conn, STAFF, staff_id, "role_changed")
            member = to_staff(row)
            await before_commit(member)
        return member
