"""Users' personal data at rest: email, phone number, names and notes are sealed one column each under the
account's data keys (`svckit.envelope`, associated data {account, "identity.user.<field>", user id}), so a
ciphertext moved to another user, field or account fails to open. Rows written before migration 0004 still
hold their values in the plaintext columns until `seal_rows_in_clear` (identity's startup backfill) seals
them and empties those columns; reads take the ciphertext when there is one, else the legacy column."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, Final, Protocol

import asyncpg

from svckit.envelope import aad_for

_LOG = logging.getLogger(__name__)

PERSONAL_FIELDS: Final = ("email", "phone_number", "first_name", "last_name", "notes")
CT_FIELDS: Final = tuple(f"{f}_ct" for f in PERSONAL_FIELDS)
# A legacy row still holding something in clear (the partial index users_personal_in_clear covers it).
IN_CLEAR: Final = "(" + " OR ".join(f"u.{f} IS NOT NULL" for f in PERSONAL_FIELDS) + ")"


class Sealer(Protocol):  # svckit.envelope.Envelope
    async def encrypt(self, account_id: int, aad: bytes, plaintext: bytes) -> bytes: ...
    async def decrypt(self, account_id: int, aad: bytes, blob: bytes) -> bytes: ...


def record_type(field: str) -> str:
    return f"identity.user.{field}"


class PersonalData:
    """Seals and opens the personal fields of one user row."""

    def __init__(self, sealer: Sealer | None) -> None:
        self._sealer = sealer

    def _need(self) -> Sealer:
        if self._sealer is None:
            raise RuntimeError("this identity store was built without a sealer for personal data")
        return self._sealer

    async def seal(self, account_id: int, user_id: int, values: Mapping[str, str | None]) -> dict[str, bytes | None]:
        """`<field>_ct` for each field given; None stays None (notes not set)."""
        sealer = self._need()
        out: dict[str, bytes | None] = {}
        for field, value in values.items():
            aad = aad_for(account_id, record_type(field), str(user_id))
            out[f"{field}_ct"] = None if value is None else await sealer.encrypt(account_id, aad, value.encode())
        return out

    async def seal_senders(self, account_id: int, user_id: int, senders: tuple[str, ...]) -> bytes | None:
        """A user's sender limit (issue 21; it may hold the customer's own numbers), sealed; None: no limit."""
        if not senders:
            return None
        aad = aad_for(account_id, record_type("allowed_senders"), str(user_id))
        return await self._need().encrypt(account_id, aad, json.dumps(list(senders)).encode())

    async def open_senders(self, row: Mapping[str, Any]) -> tuple[str, ...]:
        blob = row["allowed_senders_ct"]
        if blob is None:
            return ()
        aad = aad_for(row["account_id"], record_type("allowed_senders"), str(row["id"]))
        return tuple(json.loads(await self._need().decrypt(row["account_id"], aad, bytes(blob))))

    async def open(self, row: Mapping[str, Any]) -> dict[str, str | None]:
        """Each personal field of a user row (columns `id`, `account_id`, the clear and `_ct` columns)."""
        out: dict[str, str | None] = {}
        for field in PERSONAL_FIELDS:
            blob = row[f"{field}_ct"]
            if blob is None:
                value = row[field]
                out[field] = value if value is not None or field == "notes" else ""
                continue
            aad = aad_for(row["account_id"], record_type(field), str(row["id"]))
            out[field] = (await self._need().decrypt(row["account_id"], aad, bytes(blob))).decode()
        return out

    async def seal_rows_in_clear(self, pool: asyncpg.Pool, batch: int = 200) -> int:
        """Seal every legacy row's clear values and empty those columns; returns how many rows were sealed.
        Idempotent and safe beside concurrent edits: a ciphertext written meanwhile is kept (COALESCE), and a
        clear column is emptied only if it still holds the value that was sealed."""
        done = 0
        after = 0
        while True:
            rows = await pool.fetch(
                f"SELECT u.id, u.account_id, {', '.join('u.' + f for f in PERSONAL_FIELDS)}"
                f" FROM users u WHERE {IN_CLEAR} AND u.id > $1 ORDER BY u.id LIMIT $2",
                after, batch,
            )
            if not rows:
                break
            for r in rows:
                after = r["id"]
                clear = {f: r[f] for f in PERSONAL_FIELDS if r[f] is not None}
                sealed = await self.seal(r["account_id"], r["id"], clear)
                sets, args = [], [r["id"]]
                for field, value in clear.items():
                    args += [sealed[f"{field}_ct"], value]
                    ct, old = f"${len(args) - 1}", f"${len(args)}"
                    sets.append(f"{field}_ct = COALESCE({field}_ct, {ct})")
                    sets.append(f"{field} = CASE WHEN {field} = {old} THEN NULL ELSE {field} END")
                await pool.execute(f"UPDATE users SET {', '.join(sets)} WHERE id = $1", *args)
                done += 1
        if done:
            _LOG.info("sealed the personal data of %d users kept in clear before migration 0004", done)
        return done
