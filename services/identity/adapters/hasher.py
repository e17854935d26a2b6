"""argon2id password hashing on a bounded thread pool, so the event loop keeps serving while argon2
works."""

from __future__ import annotations

import asyncio
import os
import secrets
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from services.identity.domain.credentials import Argon2Params


class Hasher:
    """argon2id hashing and verification off the event loop, with a dummy hash so that "no such user" and
    "locked" cost exactly one verification, like a wrong password."""

    def __init__(self, params: Argon2Params, *, workers: int | None = None) -> None:
        self.params = params
        self._ph = PasswordHasher(
            time_cost=params.time_cost,
            memory_cost=params.memory_kib,
            parallelism=params.parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        self._pool = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2, thread_name_prefix="argon2")
        self._dummy = self._ph.hash(secrets.token_urlsafe(24))
        self.verifications = 0  # counted for tests: every login path costs exactly one

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def hash(self, password: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._ph.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        """True when `password` matches `stored`; with `stored` None, a dummy verification that fails."""
        self.verifications += 1
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._verify, stored, password)

    def _verify(self, stored: str | None, password: str) -> bool:
        try:
            ok = self._ph.verify(stored or self._dummy, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return ok and stored is not None

    def needs_rehash(self, stored: str) -> bool:
        try:
            return self._ph.check_needs_rehash(stored)
        except InvalidHashError:
            return True
