"""Unauthenticated requests: limited per client network, and recorded without flooding the audit log.

A request that fails authentication at the gateway (bad, unknown, revoked credentials) or asks for a route
that does not exist without any is an *unauthenticated failure*. Two rules keep such requests from
filling the permanent, append-only audit log:

- Limit: each client network (IPv4 /24, IPv6 /64: `svckit.netaddr`) may cause `limit` of them per fixed
  window of `window` seconds; past that the answer is 429 UNAUTHENTICATED_RATE_LIMITED with Retry-After
  until the window ends. Credentials that do authenticate are never refused by this limit (someone else
  on the network cannot lock a customer out), and public routes (login) have identity's own throttling.
- Dedup: failures attributed to no account that are identical (same network, action, route, reason, HTTP
  status and detail) within `dedup` seconds are ONE event: the first is recorded at once (details
  count=1); when the window closes, one more event carries the total (details count=N, the first
  included, and summarises=<first event id>), so nothing is lost. Open windows are flushed on shutdown.
  Failures attributed to an account (a real key used wrongly) stay one event each: they feed that
  account's alert rules, and the limit bounds them.

State is per gateway process (each replica counts on its own); memory is bounded (`max_entries` networks
and windows; when full, the oldest window is summarised early, the oldest counter forgotten).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sendsafe.audit.v1 import event_pb2
from svckit.netaddr import client_network
from svckit.tasks import every, spawn

_LOG = logging.getLogger(__name__)

Record = Callable[[event_pb2.Event], Awaitable[None]]
DedupKey = tuple[str, ...]


@dataclass
class _Window:
    first: event_pb2.Event
    opened: float
    count: int = 1


class UnauthenticatedRequests:
    def __init__(
        self, record: Record, *, limit: int, window: float, dedup: float, max_entries: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._record = record
        self._limit = limit
        self._window = window
        self._dedup = dedup
        self._max = max_entries
        self._clock = clock
        self._counts: OrderedDict[str, tuple[int, int]] = OrderedDict()  # network -> (window number, count)
        self._open: OrderedDict[DedupKey, _Window] = OrderedDict()
        self._tasks: contextlib.AsyncExitStack | None = None  # the summaries' timer (svckit.tasks)

    # -- the limit -----------------------------------------------------------------------------------------

    def hit(self, address: str) -> int | None:
        """Count one unauthenticated failure from `address`; seconds to wait (Retry-After) when its network is
        over the limit, else None."""
        if self._limit <= 0:
            return None
        network = client_network(address)
        now = self._clock()
        number = int(now // self._window)
        seen_in, count = self._counts.pop(network, (number, 0))
        count = count + 1 if seen_in == number else 1
        self._counts[network] = (number, count)
        while len(self._counts) > self._max:
            self._counts.popitem(last=False)
        if count <= self._limit:
            return None
        return max(1, math.ceil((number + 1) * self._window - now))

    # -- recording -----------------------------------------------------------------------------------------

    async def record(self, event: event_pb2.Event, *, always_summarise: bool = False) -> None:
        """Record `event` (an unauthenticated failure) at once, or count it into its open window. A failure
        attributed to an account is recorded each time, unless it was refused by the limit (`always_summarise`)."""
        attributed = bool(event.actor.account_id or event.actor.api_key_id)
        if self._dedup <= 0 or (attributed and not always_summarise):
            await self._record(event)
            return
        key = _key(event)
        window = self._open.get(key)
        if window is not None:
            window.count += 1
            return
        while len(self._open) >= self._max:
            _, oldest = self._open.popitem(last=False)
            await self._summarise(oldest)
        event.details["count"] = "1"
        self._open[key] = _Window(event, self._clock())
        await self._record(event)

    async def flush(self, *, everything: bool = False) -> None:
        """Summarise every window that has closed (all of them with `everything`)."""
        now = self._clock()
        while self._open:
            key, window = next(iter(self._open.items()))
            if not everything and now - window.opened < self._dedup:
                break  # windows are in opening order
            del self._open[key]
            await self._summarise(window)

    async def _summarise(self, window: _Window) -> None:
        if window.count <= 1:
            return
        ev = event_pb2.Event()
        ev.CopyFrom(window.first)
        ev.event_id = uuid.uuid4().hex
        ev.details["count"] = str(window.count)
        ev.details["summarises"] = window.first.event_id
        ev.details["window_seconds"] = f"{self._dedup:g}"
        ev.event_time.seconds, ev.event_time.nanos = divmod(time.time_ns(), 1_000_000_000)
        try:
            await self._record(ev)
        except Exception:  # the audit client buffers and retries; never lose the loop over one event
            _LOG.exception("could not queue the summary of repeated unauthenticated requests")

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._dedup > 0 and self._tasks is None:
            self._tasks = contextlib.AsyncExitStack()
            summaries = every("unauthenticated summaries", min(1.0, self._dedup / 4), self.flush)
            spawn(self._tasks, summaries, "unauthenticated-summaries")

    async def close(self) -> None:
        """Stop the timer and summarise every open window (before the audit client is flushed)."""
        if self._tasks is not None:
            await self._tasks.aclose()
            self._tasks = None
        await self.flush(everything=True)


def _key(ev: event_pb2.Event) -> DedupKey:
    return (
        client_network(ev.source.client_address), ev.action, ev.resource.id, ev.error_reason,
        ev.details.get("http_status", ""), ev.details.get("auth_detail", ""), ev.details.get("method", ""),
    )
