"""Audit use cases: append a batch, list an account's events, verify the chain."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from services.audit.domain import (
    GENESIS_HASH,
    ChainedEvent,
    EventFilter,
    EventInvalid,
    IncomingEvent,
    check_event,
    first_break,
)


class EventStore(Protocol):
    async def append(self, events: Sequence[IncomingEvent]) -> list[ChainedEvent]: ...
    async def list_events(self, f: EventFilter) -> list[tuple[int, bytes, bytes, bytes]]: ...
    async def chain_rows(self, after_sequence: int, limit: int) -> list[tuple[int, bytes, bytes, bytes]]: ...


class Service:
    def __init__(self, store: EventStore, *, max_batch: int = 5000) -> None:
        self._store = store
        self._max_batch = max_batch

    async def append_events(self, events: Sequence[IncomingEvent]) -> tuple[int, int]:
        """Store a batch, all or nothing. Returns the first and last sequence written (0, 0 if all
        were duplicates of events already stored)."""
        if not events:
            raise EventInvalid("a batch needs at least one event")
        if len(events) > self._max_batch:
            raise EventInvalid(f"a batch holds at most {self._max_batch} events")
        for ev in events:
            check_event(ev)
        chained = await self._store.append(events)
        if not chained:
            return 0, 0
        return chained[0].sequence, chained[-1].sequence

    async def list_events(self, f: EventFilter) -> list[tuple[int, bytes, bytes, bytes]]:
        return await self._store.list_events(f)

    async def verify_chain(self, batch: int = 10_000) -> int | None:
        """Walk the whole log; the first sequence that does not verify, or None."""
        prev, after = GENESIS_HASH, 0
        while True:
            rows = await self._store.chain_rows(after, batch)
            if not rows:
                return None
            if rows[0][0] != after + 1:
                return after + 1
            broken = first_break(prev, rows)
            if broken is not None:
                return broken
            after, prev = rows[-1][0], rows[-1][3]
