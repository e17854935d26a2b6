"""Alpha tags and the protected sender names: requests, reviews (each decision checks the state it changes in the
same statement, so two reviewers never both win), and the staff-edited list."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import asyncpg

from services.messaging.adapters.store.rows import unix_of
from services.messaging.domain.alpha_tags import AlphaTag, AlphaTagState, ProtectedName, Review

_COLUMNS = ("id, seq, account_id, user_id, tag, normalized, request_reason, countries, state, reviewer_staff_id,"
            " review_reason, evidence, protected_name, create_time, update_time, review_time")


def _tag(r: asyncpg.Record) -> AlphaTag:
    return AlphaTag(
        id=str(r["id"]), account_id=r["account_id"], user_id=r["user_id"], tag=r["tag"], normalized=r["normalized"],
        request_reason=r["request_reason"], state=AlphaTagState(r["state"]), countries=tuple(r["countries"] or ()),
        reviewer_staff_id=r["reviewer_staff_id"] or 0, review_reason=r["review_reason"], evidence=r["evidence"],
        protected_name=r["protected_name"], create_time=r["create_time"].timestamp(),
        update_time=r["update_time"].timestamp(),
        review_time=None if r["review_time"] is None else r["review_time"].timestamp(),
    )


def _name(r: asyncpg.Record) -> ProtectedName:
    return ProtectedName(name=r["name"], skeleton=r["skeleton"], category=r["category"], added_by=r["added_by"],
                         create_time=float(unix_of(r["create_time"])))


class PgAlphaTagStore:
    """The alpha_tags and protected_sender_names tables."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create_alpha_tag(self, tag: AlphaTag, before_commit: Callable[[], Awaitable[None]]) -> AlphaTag | None:
        """The new request; None when the account already has this tag requested or approved. `before_commit`
        runs inside the transaction (the audit event is stored before the row is)."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO alpha_tags (id, account_id, user_id, tag, normalized, request_reason, countries)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING"
                f" RETURNING {_COLUMNS}",
                uuid.UUID(tag.id), tag.account_id, tag.user_id, tag.tag, tag.normalized, tag.request_reason,
                list(tag.countries))
            if row is None:
                return None
            await before_commit()
        return _tag(row)

    async def alpha_tag(self, alpha_tag_id: str, account_id: int | None = None) -> AlphaTag | None:
        """One tag (of `account_id` when given: a customer never sees another account's)."""
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM alpha_tags WHERE id = $1 AND ($2::bigint IS NULL OR account_id = $2)",
            uuid.UUID(alpha_tag_id), account_id)
        return None if row is None else _tag(row)

    async def alpha_tags(self, account_id: int, descending: bool, after_seq: int, limit: int
                         ) -> list[tuple[int, AlphaTag]]:
        """A page of the account's tags with their cursors (`after_seq` 0: the first page)."""
        if descending:
            sql = (f"SELECT {_COLUMNS} FROM alpha_tags WHERE account_id = $1 AND ($2::bigint = 0 OR seq < $2)"
                   " ORDER BY seq DESC LIMIT $3")
        else:
            sql = f"SELECT {_COLUMNS} FROM alpha_tags WHERE account_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        rows = await self._pool.fetch(sql, account_id, after_seq, limit)
        return [(r["seq"], _tag(r)) for r in rows]

    async def alpha_tags_in_state(self, state: AlphaTagState, after_seq: int, limit: int
                                  ) -> list[tuple[int, AlphaTag]]:
        """Tags across accounts in one state, oldest first (staff review)."""
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM alpha_tags WHERE state = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            state.value, after_seq, limit)
        return [(r["seq"], _tag(r)) for r in rows]

    async def cancel_alpha_tag(self, account_id: int, alpha_tag_id: str,
                               before_commit: Callable[[AlphaTag], Awaitable[None]]) -> AlphaTag | None:
        """A live tag of the account, CANCELLED; None if there is no live one by that id."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE alpha_tags SET state = 'cancelled', update_time = now()"
                " WHERE id = $1 AND account_id = $2 AND state IN ('requested', 'approved')"
                f" RETURNING {_COLUMNS}", uuid.UUID(alpha_tag_id), account_id)
            if row is None:
                return None
            tag = _tag(row)
            await before_commit(tag)
        return tag

    async def review_alpha_tag(self, current: AlphaTag, decision: Review,
                               before_commit: Callable[[AlphaTag], Awaitable[None]]) -> AlphaTag | None:
        """`decision` applied if the tag is still in the state it was reviewed in; None if it moved meanwhile."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE alpha_tags SET state = $3, reviewer_staff_id = $4, review_reason = $5,"
                " evidence = CASE WHEN $6 = '' THEN evidence ELSE $6 END,"
                " protected_name = CASE WHEN $7 = '' THEN protected_name ELSE $7 END,"
                " update_time = now(), review_time = now()"
                f" WHERE id = $1 AND state = $2 RETURNING {_COLUMNS}",
                uuid.UUID(current.id), current.state.value, decision.state.value, decision.staff_id,
                decision.reason, decision.evidence, decision.protected_name)
            if row is None:
                return None
            tag = _tag(row)
            await before_commit(tag)
        return tag

    async def approved_alpha_tags(self, account_id: int) -> list[str]:
        """The account's approved tags as they may be used in `from` (sender identities)."""
        rows = await self._pool.fetch(
            "SELECT tag FROM alpha_tags WHERE account_id = $1 AND state = 'approved' ORDER BY tag", account_id)
        return [r["tag"] for r in rows]

    async def protected_names(self) -> list[ProtectedName]:
        rows = await self._pool.fetch(
            "SELECT name, skeleton, category, added_by, create_time FROM protected_sender_names ORDER BY skeleton")
        return [_name(r) for r in rows]

    async def add_protected_name(self, name: ProtectedName, before_commit: Callable[[], Awaitable[None]]
                                 ) -> ProtectedName | None:
        """The name as stored; None when its skeleton is protected already."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO protected_sender_names (skeleton, name, category, added_by) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (skeleton) DO NOTHING RETURNING name, skeleton, category, added_by, create_time",
                name.skeleton, name.name, name.category, name.added_by)
            if row is None:
                return None
            await before_commit()
        return _name(row)

    async def remove_protected_name(self, skeleton: str, before_commit: Callable[[ProtectedName], Awaitable[None]]
                                    ) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "DELETE FROM protected_sender_names WHERE skeleton = $1"
                " RETURNING name, skeleton, category, added_by, create_time", skeleton)
            if row is None:
                return False
            await before_commit(_name(row))
        return True
