"""SQL for sign-up verifications (migration 0005): one row per account opened by sign-up or by staff, holding the
current code's hash and its counters; verifying takes the account out of test mode in the same transaction."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from services.identity.adapters.store.rows import LIVE, Queries
from services.identity.domain.accounts import username_key
from services.identity.domain.signup import Verification


class SignupQueries(Queries):
    async def start_verification(
        self, account_id: int, user_id: int, origin: str, code_hash: str, expire_time: datetime
    ) -> None:
        await self._pool.execute(
            "INSERT INTO signup_verifications (account_id, user_id, origin, code_hash, code_expire_time, codes_sent,"
            " last_send_time) VALUES ($1, $2, $3, $4, $5, 1, now())",
            account_id, user_id, origin, code_hash, expire_time,
        )

    async def verification(self, username: str) -> Verification | None:
        """The verification of the account whose live main user has this username (ignoring case)."""
        row = await self._pool.fetchrow(
            "SELECT v.*, u.api_username, u.password_hash IS NOT NULL AS has_password"
            " FROM users u JOIN signup_verifications v ON v.account_id = u.account_id AND v.user_id = u.id"
            f" WHERE lower(u.api_username) = $1 AND u.is_main AND {LIVE}",
            username_key(username),
        )
        if row is None:
            return None
        return Verification(
            account_id=row["account_id"], user_id=row["user_id"], username=row["api_username"], origin=row["origin"],
            has_password=row["has_password"], code_hash=row["code_hash"], code_expire_time=row["code_expire_time"],
            attempts=row["attempts"], codes_sent=row["codes_sent"], last_send_time=row["last_send_time"],
            verify_time=row["verify_time"],
        )

    async def count_attempt(self, account_id: int) -> int:
        value = await self._pool.fetchval(
            "UPDATE signup_verifications SET attempts = attempts + 1 WHERE account_id = $1 RETURNING attempts",
            account_id,
        )
        return int(value or 0)

    async def forgive_attempt(self, account_id: int) -> None:
        await self._pool.execute(
            "UPDATE signup_verifications SET attempts = greatest(attempts - 1, 0) WHERE account_id = $1", account_id
        )

    async def replace_code(
        self, account_id: int, code_hash: str, expire_time: datetime, *, max_codes: int, interval_seconds: int
    ) -> int:
        """A new code replaces the old one (attempts start again) if the limits allow it, atomically."""
        value = await self._pool.fetchval(
            "UPDATE signup_verifications SET code_hash = $2, code_expire_time = $3, attempts = 0,"
            " codes_sent = codes_sent + 1, last_send_time = now()"
            " WHERE account_id = $1 AND verify_time IS NULL AND codes_sent < $4"
            " AND (last_send_time IS NULL OR last_send_time <= now() - $5::interval) RETURNING codes_sent",
            account_id, code_hash, expire_time, max_codes, timedelta(seconds=interval_seconds),
        )
        return int(value or 0)

    async def complete(
        self, account_id: int, user_id: int, code_hash: str, password_hash: str | None,
        before_commit: Callable[[], Awaitable[None]],
    ) -> datetime | None:
        """Verified: the code is used up and the account leaves test mode (and the main user gets its first
        password when staff opened the account), all in one transaction with the audit event."""
        async with self._pool.acquire() as conn, conn.transaction():
            verified = await conn.fetchval(
                "UPDATE signup_verifications SET verify_time = now(), code_hash = NULL, code_expire_time = NULL"
                " WHERE account_id = $1 AND verify_time IS NULL AND code_hash = $2 RETURNING verify_time",
                account_id, code_hash,
            )
            if verified is None:
                return None
            await conn.execute("UPDATE accounts SET test_mode = false WHERE id = $1", account_id)
            if password_hash is not None:
                await conn.execute(
                    "UPDATE users SET password_hash = $2, password_change_time = now(), update_time = now()"
                    " WHERE id = $1 AND password_hash IS NULL",
                    user_id, password_hash,
                )
            await before_commit()
        return verified
