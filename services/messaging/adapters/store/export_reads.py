"""What an account export reads of the account's senders and contacts, in keyset pages (never all rows at once):
its sender identities (dedicated numbers in clear, verified numbers with their sealed value), its alpha tags,
its contact lists and each list's contacts (sealed)."""

from __future__ import annotations

import asyncpg

from services.messaging.adapters.store.alpha_tags import PgAlphaTagStore
from services.messaging.domain.alpha_tags import AlphaTag
from services.messaging.domain.senders import SenderIdentity, SenderKind, SenderState


def _ts(value: object) -> float | None:
    return None if value is None else value.timestamp()  # type: ignore[attr-defined]


class PgExportIdentities:
    """The sender_identities, alpha_tags, contact_lists and contacts tables, as the export job pages them."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._tags = PgAlphaTagStore(pool)

    async def sender_identities_after(self, account_id: int, kind: SenderKind, after_seq: int, limit: int
                                      ) -> list[tuple[int, SenderIdentity, bytes | None]]:
        """(cursor, identity, sealed value) of every number of `kind` the account holds or held, oldest first. A
        dedicated number's `value` is the number; a verified number's is masked, its number the sealed value."""
        rows = await self._pool.fetch(
            "SELECT seq, id, account_id, user_id, kind, state, coalesce(value, value_masked) AS shown, value_ct,"
            " country, label, create_time, activate_time, release_time FROM sender_identities"
            " WHERE account_id = $1 AND kind = $2 AND seq > $3 ORDER BY seq LIMIT $4",
            account_id, kind.value, after_seq, limit)
        return [(r["seq"], SenderIdentity(
            id=str(r["id"]), account_id=r["account_id"], user_id=r["user_id"], kind=SenderKind(r["kind"]),
            state=SenderState(r["state"]), value=r["shown"], country=r["country"], label=r["label"],
            create_time=r["create_time"].timestamp(), activate_time=_ts(r["activate_time"]),
            release_time=_ts(r["release_time"])), None if r["value_ct"] is None else bytes(r["value_ct"]))
            for r in rows]

    async def alpha_tags_after(self, account_id: int, after_seq: int, limit: int) -> list[tuple[int, AlphaTag]]:
        return await self._tags.alpha_tags(account_id, False, after_seq, limit)

    async def contact_lists_after(self, account_id: int, after_list_id: int, limit: int
                                  ) -> list[tuple[int, bytes]]:
        """(list id, sealed name) of the account's lists in id order."""
        rows = await self._pool.fetch(
            "SELECT list_id, name_ct FROM contact_lists WHERE account_id = $1 AND list_id > $2"
            " ORDER BY list_id LIMIT $3", account_id, after_list_id, limit)
        return [(r["list_id"], bytes(r["name_ct"])) for r in rows]

    async def contacts_after(self, account_id: int, list_id: int, after_contact_id: int, limit: int
                             ) -> list[tuple[int, bytes, int, int]]:
        """(contact id, sealed fields, create and update time) of one list's contacts in id order."""
        rows = await self._pool.fetch(
            "SELECT contact_id, data_ct, create_time, update_time FROM contacts WHERE list_id = $1"
            " AND account_id = $2 AND contact_id > $3 ORDER BY contact_id LIMIT $4",
            list_id, account_id, after_contact_id, limit)
        return [(r["contact_id"], bytes(r["data_ct"]), int(r["create_time"].timestamp()),
                 int(r["update_time"].timestamp())) for r in rows]
