"""The log's use cases (services/audit/service/log.py and its parts) with an in-memory store: group commit,
checkpoints, proofs and verification."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sendsafe.audit.v1 import event_pb2
from services.audit.domain import merkle
from services.audit.domain.checkpoints import StoredCheckpoint
from services.audit.domain.errors import IntegrityViolation
from services.audit.domain.events import IncomingEvent, SealedEvent, sequence_events
from services.audit.domain.integrity import Problem
from services.audit.service.log import LogService


class MemoryStore:
    """Just enough of PgEventStore for LogService's log use cases."""

    def __init__(self) -> None:
        self.rows: list[SealedEvent] = []
        self.nodes_: dict[merkle.Node, bytes] = {}
        self.size, self.frontier, self.root = 0, list[bytes](), merkle.EMPTY_ROOT
        self.cps: dict[int, StoredCheckpoint] = {}
        self.appends: list[int] = []
        self.fail = False
        self.gate: asyncio.Event | None = None

    async def append(self, events: Sequence[IncomingEvent]) -> list[SealedEvent]:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise ConnectionError("database down")
        seen = {r.event.event_id for r in self.rows}
        fresh = [e for e in dict((e.event_id, e) for e in events).values() if e.event_id not in seen]
        sealed, _ = sequence_events(self.size, {}, fresh)
        tree = merkle.append(self.size, self.frontier, [s.leaf_hash for s in sealed])
        self.size, self.frontier, self.root = tree.size, tree.frontier, tree.root
        self.nodes_.update({(lvl, i): h for lvl, i, h in tree.nodes})
        self.rows += sealed
        self.appends.append(len(events))
        return sealed

    async def tree_head(self) -> tuple[int, bytes, list[bytes]]:
        return self.size, self.root, self.frontier

    async def latest_checkpoint(self) -> StoredCheckpoint | None:
        return self.cps[max(self.cps)] if self.cps else None

    async def checkpoint_at(self, size: int) -> StoredCheckpoint | None:
        return self.cps.get(size)

    async def save_checkpoint(self, cp: StoredCheckpoint) -> StoredCheckpoint:
        return self.cps.setdefault(cp.tree_size, cp)

    async def checkpoints(self) -> list[StoredCheckpoint]:
        return [self.cps[k] for k in sorted(self.cps)]

    async def event_by_id(self, event_id: str) -> tuple[int, int, bytes] | None:
        for r in self.rows:
            if r.event.event_id == event_id:
                return r.sequence, r.event.feed_account, r.leaf
        return None

    async def nodes(self, wanted: set[merkle.Node]) -> dict[merkle.Node, bytes]:
        return {n: self.nodes_[n] for n in wanted if n in self.nodes_}

    async def scan(self, after: int, limit: int) -> list[tuple[int, str, bytes]]:
        return [(r.sequence, r.event.event_id, r.leaf) for r in self.rows if r.sequence > after][:limit]

    async def leaf_hashes(self, first: int, limit: int) -> list[tuple[int, bytes]]:
        return [(i, self.nodes_[(0, i)]) for i in range(first, min(first + limit, self.size))]


def _event(i: int, account: int = 1) -> IncomingEvent:
    ev = event_pb2.Event(event_id=f"e{i}", action="test.x")
    ev.actor.account_id = account
    return IncomingEvent(f"e{i}", datetime.now(UTC), account, "7", "test.x", 1, "", ev.SerializeToString())


def _log(store: MemoryStore) -> LogService:
    return LogService(store, merkle.Signer("sendsafe.test/audit", Ed25519PrivateKey.generate()),  # type: ignore[arg-type]
                      max_batch=10, checkpoint_min_interval=0)


async def test_concurrent_appends_share_transactions_and_each_gets_its_own_range() -> None:
    store = MemoryStore()
    log = _log(store)
    store.gate = asyncio.Event()
    first = asyncio.create_task(log.append_events([_event(0)]))
    await asyncio.sleep(0)  # the first batch is in its transaction (held at the gate)
    rest = [asyncio.create_task(log.append_events([_event(i), _event(100 + i)])) for i in range(1, 8)]
    await asyncio.sleep(0)
    store.gate.set()
    ranges = [await first, *[await t for t in rest]]
    assert ranges[0] == (1, 1)
    assert ranges[1:] == [(2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13), (14, 15)]
    # One transaction for the first batch, then the seven waiting ones merged up to max_batch (10 events).
    assert store.appends == [1, 10, 4]
    assert await log.append_events([_event(3)]) == (0, 0)  # a retry of a stored event stores nothing


async def test_a_failed_transaction_fails_every_batch_in_it() -> None:
    store = MemoryStore()
    log = _log(store)
    store.fail = True
    results = await asyncio.gather(*(log.append_events([_event(i)]) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    store.fail = False
    assert await log.append_events([_event(0)]) == (1, 1)


async def test_proofs_are_checked_against_the_signed_root_before_they_leave() -> None:
    store = MemoryStore()
    log = _log(store)
    await log.append_events([_event(i) for i in range(7)])
    proof = await log.event_proof(1, "e3", 0)
    assert proof.checkpoint.tree_size == 7
    assert merkle.verify_inclusion(3, 7, merkle.leaf_hash(proof.leaf), proof.path, proof.checkpoint.root_hash)
    store.rows[3] = SealedEvent(4, 4, store.rows[3].event, store.rows[3].leaf + b"\x00", b"")
    with pytest.raises(IntegrityViolation):
        await log.event_proof(1, "e3", 0)
    verdict = await log.verify_log()
    assert not verdict.ok and verdict.finding is not None
    assert (verdict.finding.kind, verdict.finding.sequence) == (Problem.ALTERED, 4)


async def test_checkpoints_are_signed_only_when_the_log_grew() -> None:
    store = MemoryStore()
    log = _log(store)
    assert await log.sign_checkpoint() is None  # nothing to sign yet
    await log.append_events([_event(0)])
    one = await log.sign_checkpoint()
    assert one is not None and await log.sign_checkpoint() == one
    body = merkle.Verifier.parse(log.verifier_key).open(one.note)
    assert (body.size, body.root) == (1, store.root)
