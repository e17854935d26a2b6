"""The bounded cache every process uses: at most `max_entries` entries, each for at most `ttl` seconds
(`ttl=None`: no expiry, least recently used evicted first), with single-flight loading.

`get_or_load` runs one load per key at a time (concurrent callers wait for it), in a task of its own: a
caller that is cancelled (a client gone, a deadline) cancels only its own wait, never the load the
others are waiting for. A load that was already
running when `pop_where` or `clear` was called is returned to its callers but not cached: it may
have read the state from before the change (`pop` of one entry does not touch running loads).
`hits`, `misses` and `invalidations` count what happened.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    def __init__(self, ttl: float | None, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()  # key -> (expires at, value)
        self._inflight: dict[K, asyncio.Future[V]] = {}
        self._generation = 0
        self.hits = 0
        self.misses = 0
        self.invalidations = 0

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[K]:
        return list(self._entries)

    def __contains__(self, key: object) -> bool:
        """Whether an entry is held for `key` (an expired one counts until a lookup drops it); no recency change."""
        return key in self._entries

    def __iter__(self) -> Iterator[K]:
        """The keys held, least recently used first (a snapshot: the cache may change while it is read)."""
        return iter(self.keys())

    def get(self, key: K) -> V | None:
        """The live value for `key` (refreshing its recency), or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: K, value: V, ttl: float | None = None) -> None:
        """Cache `value` for `ttl` seconds (default: the cache's ttl; never longer than it)."""
        life = self.ttl if ttl is None else (ttl if self.ttl is None else min(ttl, self.ttl))
        if life is not None and life <= 0:
            return
        self._entries[key] = (float("inf") if life is None else self._clock() + life, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def pop(self, key: K) -> None:
        """Drop one entry (the next lookup loads afresh)."""
        if self._entries.pop(key, None) is not None:
            self.invalidations += 1

    def pop_where(self, predicate: Callable[[K, V], bool]) -> int:
        """Drop every entry for which `predicate(key, value)` holds; the number dropped."""
        self._generation += 1
        gone = [k for k, (_, v) in self._entries.items() if predicate(k, v)]
        for k in gone:
            del self._entries[k]
        self.invalidations += len(gone)
        return len(gone)

    def clear(self) -> None:
        self._generation += 1
        self.invalidations += len(self._entries)
        self._entries.clear()

    async def get_or_load(
        self, key: K, load: Callable[[], Awaitable[V]], ttl_of: Callable[[V], float | None] | None = None
    ) -> V:
        """The cached value, or the result of `load()` (cached for `ttl_of(value)` seconds when given, capped by
        the cache's ttl). Concurrent calls for one key share one load."""
        value = self.get(key)
        if value is not None:
            self.hits += 1
            return value
        pending = self._inflight.get(key)
        if pending is not None:
            self.hits += 1
            return await asyncio.shield(pending)
        self.misses += 1
        task = asyncio.ensure_future(self._load(key, load, ttl_of, self._generation))
        task.add_done_callback(_retrieve)
        self._inflight[key] = task
        return await asyncio.shield(task)

    async def _load(
        self, key: K, load: Callable[[], Awaitable[V]], ttl_of: Callable[[V], float | None] | None, generation: int
    ) -> V:
        try:
            value = await load()
        finally:
            self._inflight.pop(key, None)
        if generation == self._generation:
            self.put(key, value, ttl_of(value) if ttl_of is not None else None)
        return value


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a load's failure as seen: its callers (if any are left) re-raise it themselves."""
    if not task.cancelled():
        task.exception()
