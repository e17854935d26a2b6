"""Full verification of the log: every leaf recomputed from the stored bytes, the tree from the leaves, and
both compared with the stored tree and every signed checkpoint."""

from __future__ import annotations

import asyncio
import logging
import time

from services.audit.domain import merkle
from services.audit.domain.checkpoints import StoredCheckpoint
from services.audit.domain.integrity import Finding, Problem, Verification, classify_leaf
from services.audit.domain.stats import LogStats
from services.audit.service.ports import EventStore

_LOG = logging.getLogger(__name__)


class Verifying:
    """Full verification (part of `LogService`)."""

    _store: EventStore
    _verifiers: dict[str, merkle.Verifier]
    _verify_lock: asyncio.Lock
    stats: LogStats

    async def verify_log(self, batch: int = 20_000) -> Verification:
        """Recompute every leaf from the stored bytes and the tree from the leaves; compare them with the
        stored tree and every signed checkpoint. One run at a time (concurrent callers share it)."""
        if self._verify_lock.locked():
            async with self._verify_lock:
                pass
            return self._last_verification
        async with self._verify_lock:
            result = await self._verify(batch)
            self._last_verification = result
            self.stats.integrity_ok = result.ok
            self.stats.last_verified_size = result.tree_size
            self.stats.last_verify_time = time.time()
            if not result.ok:
                self.stats.integrity_failures += 1
                f = result.finding
                _LOG.error("audit log verification failed: %s at sequence %s", f.kind.name if f else "?",
                           f.sequence if f else "?", extra={"event": "audit.integrity_violation"})
            return result

    _last_verification = Verification(True, 0, 0)

    async def verify_chain(self) -> int | None:
        """The first sequence that does not verify, or None (`verify_log` in short, for callers that only
        need a yes/no and where)."""
        result = await self.verify_log()
        return None if result.ok or result.finding is None else result.finding.sequence

    async def _verify(self, batch: int) -> Verification:
        size, head_root, _ = await self._store.tree_head()
        cps = await self._store.checkpoints()
        checked: list[StoredCheckpoint] = []
        for cp in cps:
            v = self._verifiers.get(cp.key_id)
            if v is None:
                continue  # signed by a key this process does not trust (an old ephemeral one)
            try:
                body = v.open(cp.note)
            except merkle.NoteError as exc:
                return Verification(False, 0, len(checked), Finding(Problem.BAD_SIGNATURE, cp.tree_size, "", str(exc)))
            if (body.size, body.root) != (cp.tree_size, cp.root_hash):
                return Verification(False, 0, len(checked), Finding(
                    Problem.BAD_SIGNATURE, cp.tree_size, "", "the stored checkpoint differs from its signed note"))
            checked.append(cp)
        by_size = {cp.tree_size: cp for cp in checked}
        tree_size, frontier = 0, list[bytes]()
        after = 0
        while True:
            rows = await self._store.scan(after, batch)
            if not rows:
                break
            stored = dict(await self._store.leaf_hashes(after, len(rows) + 1))
            committed = [stored.get(after + k) for k in range(len(rows) + 1)]
            actual = [merkle.leaf_hash(body) for _, _, body in rows]
            for i, (seq, event_id, _) in enumerate(rows):
                position = after + i  # 0-based leaf index this row should hold
                if seq != position + 1:
                    return Verification(False, tree_size, len(checked), Finding(
                        Problem.REMOVED, position + 1, "", f"event {position + 1} is missing"))
                if position >= size:
                    return Verification(False, tree_size, len(checked), Finding(
                        Problem.INSERTED, seq, event_id, "stored but never added to the tree"))
                if i >= len(committed) or actual[i] != committed[i]:
                    nxt = actual[i + 1] if i + 1 < len(actual) else None
                    kind = classify_leaf(i, actual[i], committed, nxt)
                    return Verification(False, tree_size, len(checked), Finding(
                        kind, seq, event_id, "the stored event does not match its committed leaf"))
            # Extend the recomputed tree, stopping at every checkpoint size to compare with its signed root.
            start = 0
            while start < len(actual):
                end = after + len(actual)
                stop = next((cp.tree_size - after for cp in checked if after + start < cp.tree_size <= end),
                            len(actual))
                appended = merkle.append(tree_size, frontier, actual[start:stop])
                tree_size, frontier = appended.size, appended.frontier
                signed = by_size.get(tree_size)
                if signed is not None and appended.root != signed.root_hash:
                    return Verification(False, tree_size, len(checked), Finding(
                        Problem.TREE_MISMATCH, tree_size, rows[stop - 1][1],
                        f"the events up to {tree_size} do not reproduce the signed checkpoint"))
                start = stop
            after = rows[-1][0]
        if tree_size < size:
            return Verification(False, tree_size, len(checked), Finding(
                Problem.REMOVED, tree_size + 1, "", f"events {tree_size + 1}..{size} are missing"))
        if merkle.fold(frontier) != head_root:
            return Verification(False, tree_size, len(checked), Finding(
                Problem.TREE_MISMATCH, tree_size, "", "the stored tree head does not match the events"))
        beyond = [cp for cp in checked if cp.tree_size > tree_size]
        if beyond:
            return Verification(False, tree_size, len(checked), Finding(
                Problem.REMOVED, tree_size + 1, "", f"a checkpoint covers {beyond[0].tree_size} events"))
        return Verification(True, tree_size, len(checked))
