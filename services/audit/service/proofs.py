"""Checkpoints and proofs: signing the tree, finding the checkpoint that covers an event, inclusion and
consistency proofs checked against the signed root before they are handed out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from services.audit.domain import merkle
from services.audit.domain.checkpoints import StoredCheckpoint, check_tree_size
from services.audit.domain.errors import CheckpointNotFound, EventNotFound, IntegrityViolation, TreeSizeInvalid
from services.audit.domain.stats import LogStats
from services.audit.service.ports import EventStore

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Proof:
    sequence: int
    leaf: bytes
    path: list[bytes]
    checkpoint: StoredCheckpoint


class Proofs:
    """Checkpoints and proofs (part of `LogService`)."""

    _store: EventStore
    signer: merkle.Signer
    _min_interval: float
    _clock: Callable[[], datetime]
    _checkpoint_lock: asyncio.Lock
    stats: LogStats

    @property
    def verifier_key(self) -> str:
        return self.signer.vkey

    async def sign_checkpoint(self, *, min_interval: float = 0.0) -> StoredCheckpoint | None:
        """Sign the tree as it is now, unless the latest checkpoint already covers it (or is younger than
        `min_interval` seconds). None while the log is empty."""
        async with self._checkpoint_lock:
            latest = await self._store.latest_checkpoint()
            size, root, _ = await self._store.tree_head()
            now = self._clock()
            if latest is not None and (
                latest.tree_size >= size
                or (now - latest.checkpoint_time).total_seconds() < min_interval
            ):
                return latest
            if size == 0:
                return None
            body = merkle.CheckpointBody(self.signer.name, size, root, now)
            cp = await self._store.save_checkpoint(
                StoredCheckpoint(size, root, now, self.signer.key_id.hex(), self.signer.sign(body))
            )
            self.stats.checkpoint_size = cp.tree_size
            self.stats.checkpoint_time = cp.checkpoint_time.timestamp()
            return cp

    async def checkpoint(self, tree_size: int = 0, *, fresh: bool = False) -> StoredCheckpoint:
        if tree_size:
            cp = await self._store.checkpoint_at(tree_size)
            if cp is None:
                raise CheckpointNotFound(f"no checkpoint was signed at tree size {tree_size}")
            return cp
        cp = await self.sign_checkpoint(min_interval=self._min_interval) if fresh else None
        cp = cp or await self._store.latest_checkpoint() or await self.sign_checkpoint()
        if cp is None:
            raise CheckpointNotFound("the log is empty")
        return cp

    async def _covering(self, sequence: int, tree_size: int) -> StoredCheckpoint:
        """A checkpoint that covers `sequence`: the one asked for, else the latest, signing a new one when
        the latest is older than the event."""
        if tree_size:
            pinned = await self.checkpoint(tree_size)
            if pinned.tree_size < sequence:
                raise TreeSizeInvalid("the event is not in the tree of that size")
            return pinned
        cp = await self._store.latest_checkpoint()
        if cp is None or cp.tree_size < sequence:
            cp = await self.sign_checkpoint()
        assert cp is not None and cp.tree_size >= sequence
        return cp

    async def _paths(self, indexes: Sequence[int], size: int) -> list[list[bytes]]:
        plans = [merkle.inclusion_ranges(i, size) for i in indexes]
        stored = await self._store.nodes(merkle.nodes_for(r for plan in plans for r in plan))
        try:
            return [merkle.resolve(plan, stored) for plan in plans]
        except KeyError:
            self.stats.proof_violations += 1
            raise IntegrityViolation("a node of the tree is missing") from None

    async def event_proof(self, account_id: int, event_id: str, tree_size: int) -> Proof:
        """An event of `account_id` with its inclusion proof. The proof is checked here against the
        signed root before it is handed out: a stored event or node that was changed is refused."""
        found = await self._store.event_by_id(event_id)
        if found is None or found[1] != account_id:
            raise EventNotFound("no such event in this account's log")
        sequence, _, leaf = found
        cp = await self._covering(sequence, tree_size)
        (path,) = await self._paths([sequence - 1], cp.tree_size)
        if not merkle.verify_inclusion(sequence - 1, cp.tree_size, merkle.leaf_hash(leaf), path, cp.root_hash):
            self.stats.proof_violations += 1
            _LOG.error("stored event %d does not match the signed tree of size %d", sequence, cp.tree_size,
                       extra={"event": "audit.integrity_violation"})
            raise IntegrityViolation("this event does not match what the log signed; it was tampered with")
        return Proof(sequence, leaf, path, cp)

    async def consistency(self, first: int, second: int) -> tuple[int, int, list[bytes], StoredCheckpoint | None]:
        latest = await self._store.latest_checkpoint()
        top = latest.tree_size if latest else 0
        second = second or top
        if not 0 < first <= second:
            raise TreeSizeInvalid("need 0 < first_tree_size <= second_tree_size")
        check_tree_size(second, top)
        ranges = merkle.consistency_ranges(first, second)
        stored = await self._store.nodes(merkle.nodes_for(ranges))
        try:
            proof = merkle.resolve(ranges, stored)
        except KeyError:
            self.stats.proof_violations += 1
            raise IntegrityViolation("a node of the tree is missing") from None
        return first, second, proof, await self._store.checkpoint_at(second)
