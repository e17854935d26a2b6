"""Give a test account a sender identity directly in messaging's database (issue 21: a send's `from` must be one
of the account's active identities): a dedicated number from the inventory, or an approved alpha tag."""

from __future__ import annotations

import uuid

import asyncpg

from services.messaging.adapters.store.senders import PgSenderStore
from services.messaging.domain.alpha_tags import normalize
from services.messaging.domain.senders import inventory_number, sender_hash


async def _nothing(*_: object) -> None:
    return None


async def hold_number(pool: asyncpg.Pool, account_id: int, number: str, country: str = "AU") -> None:
    """`number` loaded into the inventory and bought by the account (the development sender index key: the
    messaging app under test runs without MESSAGING_SENDER_INDEX_KEY)."""
    store = PgSenderStore(pool)
    key = await store.sender_index_key()
    await store.load_inventory([inventory_number(number, country)], _nothing)
    got = await store.buy_number(str(uuid.uuid4()), account_id, 1, number, sender_hash(key, number), _nothing)
    assert got is not None, f"{number} is held already"


async def approve_tag(pool: asyncpg.Pool, account_id: int, tag: str) -> None:
    """An alpha tag approved for the account, as a staff review leaves it."""
    await pool.execute(
        "INSERT INTO alpha_tags (id, account_id, user_id, tag, normalized, request_reason, state, review_reason)"
        " VALUES ($1, $2, 1, $3, $4, 'tests', 'approved', 'tests')", uuid.uuid4(), account_id, tag, normalize(tag))
