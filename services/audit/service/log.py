"""The log's use cases, one class: `LogService` = appending (group commit) + reading (lists, staff search,
export) + proofs (checkpoints, inclusion and consistency proofs) + verification, each in its own module."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from services.audit.domain import merkle
from services.audit.domain.events import IncomingEvent, SealedEvent
from services.audit.domain.stats import LogStats
from services.audit.service.ports import EventStore
from services.audit.service.reading import Reading
from services.audit.service.verification import Verifying


class LogService(Reading, Verifying):
    """Owns the log: append, read, prove, checkpoint, verify, export."""

    def __init__(
        self,
        store: EventStore,
        signer: merkle.Signer,
        *,
        trusted: Sequence[merkle.Verifier] = (),
        max_batch: int = 5000,
        checkpoint_min_interval: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self.signer = signer
        self._verifiers = {v.key_id.hex(): v for v in (merkle.Verifier.parse(signer.vkey), *trusted)}
        self._max_batch = max_batch
        self._min_interval = checkpoint_min_interval
        self._clock = clock
        self._checkpoint_lock = asyncio.Lock()
        self._verify_lock = asyncio.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._queued: list[tuple[list[IncomingEvent], asyncio.Future[list[SealedEvent]]]] = []
        self._committer: asyncio.Task[None] | None = None
        self.stats = LogStats()
