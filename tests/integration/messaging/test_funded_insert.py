"""The one-statement send (debit the total if the balance covers it, insert only if it did) against the
real database: all of it happens, or none of it does."""

from __future__ import annotations

import os
import time
import uuid
from decimal import Decimal

from services.messaging.domain.records import NewMessage
from services.messaging.domain.statuses import MessageStatus
from tests.integration.messaging.conftest import Messaging


def _row(acct: int, price: str) -> NewMessage:
    return NewMessage(
        id=str(uuid.uuid4()).upper(), account_id=acct, user_id=1, api_username="alice", status=MessageStatus.QUEUED,
        body_ct=os.urandom(60), to_ct=os.urandom(40), sender="", country="AU", encoding="GSM7", parts=1,
        price=Decimal(price), is_test=False, custom_string="", source="", from_email="", list_id="",
        contact_id="", schedule=None, publish_at=int(time.time()) + 5, to_hash=os.urandom(32),
    )


async def _counts(m: Messaging, acct: int) -> tuple[int, int, Decimal | None]:
    messages = await m.pool.fetchval("SELECT count(*) FROM messages WHERE account_id = $1", acct)
    batches = await m.pool.fetchval("SELECT count(*) FROM outbox_batches")
    balance = await m.pool.fetchval("SELECT balance FROM balances WHERE account_id = $1", acct)
    return messages, batches, balance


async def test_covered_send_is_debited_and_stored_together(messaging: Messaging) -> None:
    acct = 811
    await messaging.pool.execute("INSERT INTO balances (account_id, balance) VALUES ($1, 1.00)", acct)
    before = await _counts(messaging, acct)
    rows = [_row(acct, "0.0770"), _row(acct, "0.0770")]
    async with messaging.store.send_tx(atomic=False) as tx:
        done, batch = await tx.insert_funded(rows, acct, Decimal("0.1540"))
    assert done and batch is not None
    messages, batches, balance = await _counts(messaging, acct)
    assert (messages, batches) == (before[0] + 2, before[1] + 1) and balance == Decimal("0.8460")
    ids = await messaging.pool.fetchval("SELECT message_ids FROM outbox_batches WHERE id = $1", batch)
    assert sorted(str(i).upper() for i in ids) == sorted(r.id for r in rows)


async def test_uncovered_send_writes_nothing(messaging: Messaging) -> None:
    acct = 812
    await messaging.pool.execute("INSERT INTO balances (account_id, balance) VALUES ($1, 0.1000)", acct)
    before = await _counts(messaging, acct)
    async with messaging.store.send_tx(atomic=False) as tx:
        done, batch = await tx.insert_funded([_row(acct, "0.0770"), _row(acct, "0.0770")], acct, Decimal("0.1540"))
    assert not done and batch is None
    assert await _counts(messaging, acct) == before  # no message, no outbox batch, balance untouched


async def test_account_without_a_balance_row_is_not_covered(messaging: Messaging) -> None:
    acct = 813
    before = await _counts(messaging, acct)
    async with messaging.store.send_tx(atomic=False) as tx:
        done, _ = await tx.insert_funded([_row(acct, "0")], acct, Decimal("0"))
    assert not done and await _counts(messaging, acct) == before
