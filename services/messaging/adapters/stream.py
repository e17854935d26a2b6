"""The dispatch queue: a Redis Stream with one consumer group, and its dead-letter stream.

Every call is bounded (`asyncio.timeout`) on top of the client's socket timeouts. One entry per
published batch carries the batch's message ids (comma-separated) and nothing else: the stream never
holds a body or a phone number, and a 100-message send costs one XADD rather than a hundred.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from prometheus_client.core import Metric
from redis.exceptions import ResponseError

from svckit.metrics import gauge
from svckit.telemetry import current_traceparent

GROUP = "dispatchers"
_FIELD = b"m"
_TRACE = b"tp"  # the publishing request's W3C traceparent: the worker continues (or links to) its trace


@dataclass(frozen=True, slots=True)
class Entry:
    entry_id: bytes
    message_ids: tuple[str, ...]  # empty when the entry is malformed or was deleted
    traceparent: str = ""  # of the send that published it ("" for entries published outside a trace)


class DispatchStream:
    def __init__(
        self,
        redis: aioredis.Redis,
        stream: str,
        dead_stream: str,
        *,
        timeout: float = 5.0,
    ) -> None:
        self._redis = redis
        self.stream = stream
        self.dead_stream = dead_stream
        self._timeout = timeout

    async def publish(self, message_ids: Sequence[str], traceparents: Mapping[str, str] | None = None,
                      chunk: int = 1000) -> None:
        """XADD one entry per `chunk` message ids (pipelined, no MULTI): one round trip per call. Each entry
        carries the W3C traceparent of the request that sent its messages (`traceparents`, else the current
        one): ids of different requests' traces go in different entries."""
        if not message_ids:
            return
        current = current_traceparent()
        by_trace: dict[str, list[str]] = {}
        for mid in message_ids:
            by_trace.setdefault((traceparents or {}).get(mid) or current, []).append(mid)
        async with asyncio.timeout(self._timeout):
            pipe = self._redis.pipeline(transaction=False)
            for traceparent, ids in by_trace.items():
                for i in range(0, len(ids), chunk):
                    fields = {_FIELD: ",".join(ids[i:i + chunk]).encode()}
                    if traceparent:
                        fields[_TRACE] = traceparent.encode()
                    pipe.xadd(self.stream, fields)  # type: ignore[arg-type]
            await pipe.execute()

    async def dead_letter(self, failed: Sequence[tuple[str, int]]) -> None:
        """Record messages that reached a final failure: (message id, error code)."""
        if not failed:
            return
        async with asyncio.timeout(self._timeout):
            pipe = self._redis.pipeline(transaction=False)
            for mid, code in failed:
                pipe.xadd(self.dead_stream, {_FIELD: mid.encode(), b"error_code": str(code).encode()})
            await pipe.execute()

    async def ensure_group(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, consumer: str, *, pending: bool, count: int, block_ms: int) -> list[Entry]:
        """New entries for `consumer` (blocking up to `block_ms`), or its own pending ones when `pending`."""
        async with asyncio.timeout(self._timeout + block_ms / 1000):
            reply: Any = await self._redis.xreadgroup(
                GROUP, consumer, {self.stream: "0" if pending else ">"}, count=count,
                block=None if pending else block_ms,
            )
        entries: list[Entry] = []
        for _stream, items in reply or []:
            entries.extend(_entry(eid, fields) for eid, fields in items)
        return entries

    async def reclaim(self, consumer: str, *, min_idle_ms: int, count: int, start: bytes = b"0-0") -> tuple[
        bytes, list[Entry]
    ]:
        """XAUTOCLAIM entries idle longer than `min_idle_ms` (their consumer died). Returns (next cursor, entries);
        entries deleted from the stream meanwhile come back with an empty message id so they can be acked."""
        async with asyncio.timeout(self._timeout):
            reply: Any = await self._redis.xautoclaim(
                self.stream, GROUP, consumer, min_idle_time=min_idle_ms, start_id=start, count=count
            )
        cursor: bytes = reply[0]
        entries = [_entry(eid, fields) for eid, fields in reply[1] if eid is not None]
        if len(reply) > 2:
            entries.extend(Entry(eid, ()) for eid in reply[2])  # ids of deleted entries
        return cursor, entries

    async def prune_consumers(self, *, idle_ms: int, keep: str) -> int:
        """Forget consumers (dead workers' names) idle longer than `idle_ms` that hold no pending entries."""
        async with asyncio.timeout(self._timeout):
            consumers: Any = await self._redis.xinfo_consumers(self.stream, GROUP)
            gone = [
                c["name"] for c in consumers
                if int(c.get("pending", 0)) == 0 and int(c.get("idle", 0)) > idle_ms
                and (c["name"].decode() if isinstance(c["name"], bytes) else c["name"]) != keep
            ]
            for name in gone:
                await self._redis.xgroup_delconsumer(self.stream, GROUP, name)
        return len(gone)

    async def ack(self, entry_ids: Sequence[bytes]) -> None:
        """XACK and XDEL handled entries in one round trip (the stream stays short)."""
        if not entry_ids:
            return
        async with asyncio.timeout(self._timeout):
            pipe = self._redis.pipeline(transaction=False)
            pipe.xack(self.stream, GROUP, *entry_ids)
            pipe.xdel(self.stream, *entry_ids)
            await pipe.execute()


    async def collect_metrics(self) -> list[Metric]:
        """The backlog when scraped (svckit.metrics): entries waiting (acked ones are deleted), the group's
        lag (never read) and pending (read, not acked), the oldest entry's age, and the dead letters."""
        async with asyncio.timeout(self._timeout):
            pipe = self._redis.pipeline(transaction=False)
            pipe.xlen(self.stream)
            pipe.xrange(self.stream, count=1)
            pipe.xlen(self.dead_stream)
            pipe.xinfo_groups(self.stream)
            length, first, dead, groups = await pipe.execute(raise_on_error=False)
        group: dict[Any, Any] = next((g for g in (groups if isinstance(groups, list) else [])
                                      if g.get("name") in (GROUP, GROUP.encode())), {})
        oldest = 0.0
        if isinstance(first, list) and first:
            ms = int(first[0][0].split(b"-")[0])
            oldest = max(0.0, time.time() - ms / 1000)
        return [
            gauge("sendsafe_dispatch_stream_entries", "Entries in the dispatch stream not yet delivered and acked "
                  "(one entry is one published batch of message ids).",
                  float(length if isinstance(length, int) else 0)),
            gauge("sendsafe_dispatch_consumer_lag", "Entries the workers' consumer group has not read yet.",
                  float(group.get("lag") or 0)),
            gauge("sendsafe_dispatch_pending_entries", "Entries read by a worker and not acked yet.",
                  float(group.get("pending") or 0)),
            gauge("sendsafe_dispatch_oldest_entry_age_seconds", "Age of the oldest entry waiting in the dispatch "
                  "stream (0 when it is empty).", oldest),
            gauge("sendsafe_dead_letters", "Messages in the dead-letter stream (final failures).",
                  float(dead if isinstance(dead, int) else 0)),
        ]


def _entry(entry_id: bytes, fields: dict[bytes, bytes] | None) -> Entry:
    raw = (fields or {}).get(_FIELD, b"")
    try:
        traceparent = (fields or {}).get(_TRACE, b"").decode("ascii")
        return Entry(entry_id, tuple(i for i in raw.decode("ascii").split(",") if i), traceparent)
    except UnicodeDecodeError:
        return Entry(entry_id, ())
