"""Appending to the log: each batch checked, then group-committed with the batches that arrive meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime

from services.audit.domain.errors import EventInvalid
from services.audit.domain.events import IncomingEvent, SealedEvent, check_event
from services.audit.domain.stats import LogStats
from services.audit.service.ports import EventStore


class Appending:
    """The log's write side (part of `LogService`)."""

    _store: EventStore
    _max_batch: int
    _clock: Callable[[], datetime]
    _listeners: list[Callable[[], None]]
    _queued: list[tuple[list[IncomingEvent], asyncio.Future[list[SealedEvent]]]]
    _committer: asyncio.Task[None] | None
    stats: LogStats

    def on_append(self, listener: Callable[[], None]) -> None:
        """Called (synchronously, cheaply) after every append that stored something."""
        self._listeners.append(listener)

    async def append_events(self, events: Sequence[IncomingEvent]) -> tuple[int, int]:
        """Store a batch, all or nothing. Returns the first and last sequence written (0, 0 if all were
        duplicates of events already stored).

        Group commit: batches that arrive while a transaction is running wait and then go into the next
        one together (up to `max_batch` events), so many small concurrent appends cost one serialized
        transaction instead of one each. Each caller still gets all-or-nothing for its own batch."""
        if not events:
            raise EventInvalid("a batch needs at least one event")
        if len(events) > self._max_batch:
            raise EventInvalid(f"a batch holds at most {self._max_batch} events")
        for ev in events:
            check_event(ev)
        done: asyncio.Future[list[SealedEvent]] = asyncio.get_running_loop().create_future()
        self._queued.append((list(events), done))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_queued(), name="audit-group-commit")
        sealed = await asyncio.shield(done)
        if not sealed:
            return 0, 0
        return sealed[0].sequence, sealed[-1].sequence

    async def _commit_queued(self) -> None:
        while self._queued:
            group: list[tuple[list[IncomingEvent], asyncio.Future[list[SealedEvent]]]] = []
            size = 0
            while self._queued and (not group or size + len(self._queued[0][0]) <= self._max_batch):
                item = self._queued.pop(0)
                group.append(item)
                size += len(item[0])
            try:
                sealed = await self._store.append([ev for evs, _ in group for ev in evs])
            except Exception as exc:
                for _, fut in group:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            except BaseException:
                for _, fut in group:
                    if not fut.done():
                        fut.cancel()
                raise
            self._stored(sealed)
            by_id = {s.event.event_id: s for s in sealed}
            for evs, fut in group:
                mine = [by_id.pop(e.event_id) for e in evs if e.event_id in by_id]
                if not fut.done():
                    fut.set_result(mine)

    def _stored(self, sealed: list[SealedEvent]) -> None:
        if not sealed:
            return
        now = self._clock()
        lags = [max((now - s.event.event_time).total_seconds(), 0.0) for s in sealed]
        for lag in lags:
            self.stats.lag.observe(lag)
        self.stats.appended += len(sealed)
        self.stats.batches += 1
        self.stats.last_lag_seconds = max(lags)
        for listener in self._listeners:
            listener()
