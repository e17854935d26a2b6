"""The dispatch worker's loops: consume the stream, reclaim a dead consumer's entries, pump receipts.

Delivery semantics: an entry is acked only after its batch's outcome is recorded in the database, so a
worker killed at any point leaves its entries pending; another worker takes them over with XAUTOCLAIM
once they have been idle for `reclaim_idle_ms`, and `DeliveryService.deliver` is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid

from services.messaging.adapters.stream import DispatchStream, Entry
from services.messaging.service.delivery import DeliveryService
from services.messaging.service.ports import Carrier
from svckit.tasks import drain
from svckit.telemetry import span

_LOG = logging.getLogger(__name__)
_PRUNE_EVERY_S = 300.0


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class StreamWorker:
    def __init__(
        self,
        stream: DispatchStream,
        delivery: DeliveryService,
        *,
        consumer: str,
        batch: int = 500,
        block_ms: int = 1000,
        reclaim_idle_ms: int = 30_000,
    ) -> None:
        self._stream = stream
        self._delivery = delivery
        self.consumer = consumer
        self._batch = batch
        # An entry holds one published batch (1 to 1000 ids); read enough entries to fill a delivery
        # batch from single-message sends, and deliver big ones in `batch`-sized slices.
        self._entries = max(1, batch // 5)
        self._block_ms = block_ms
        self._reclaim_idle_ms = reclaim_idle_ms
        self._stopping = asyncio.Event()
        self.batches = 0

    def stop(self) -> None:
        """Finish the batch in hand, then return from `run`."""
        self._stopping.set()

    async def run(self) -> None:
        own_pending = True  # first whatever this consumer was given and did not ack
        next_reclaim = 0.0
        next_prune = time.monotonic() + _PRUNE_EVERY_S
        delay = 0.1
        while not self._stopping.is_set():
            try:
                if own_pending:
                    await self._stream.ensure_group()
                if time.monotonic() >= next_reclaim:
                    await self._reclaim()
                    next_reclaim = time.monotonic() + max(self._reclaim_idle_ms / 2000, 0.05)
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + _PRUNE_EVERY_S
                    await self._stream.prune_consumers(idle_ms=max(self._reclaim_idle_ms * 10, 3_600_000),
                                                       keep=self.consumer)
                entries = await self._stream.read(
                    self.consumer, pending=own_pending, count=self._entries, block_ms=self._block_ms
                )
                if own_pending and not entries:
                    own_pending = False
                    continue
                if entries:
                    await self._handle(entries)
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _LOG.warning("dispatch loop error (%s); retrying in %.1fs", type(exc).__name__, delay)
                own_pending = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, 5.0)

    async def _reclaim(self) -> None:
        cursor = b"0-0"
        while not self._stopping.is_set():
            cursor, entries = await self._stream.reclaim(
                self.consumer, min_idle_ms=self._reclaim_idle_ms, count=self._entries, start=cursor
            )
            if entries:
                _LOG.info("reclaimed %d idle dispatch entries", len(entries))
                await self._handle(entries)
            if cursor in (b"0-0", "0-0"):
                return

    async def _handle(self, entries: list[Entry]) -> None:
        items = [(mid, e.traceparent) for e in entries for mid in e.message_ids if _looks_like_id(mid)]
        for i in range(0, len(items), self._batch):
            chunk = items[i:i + self._batch]
            # The delivery continues the trace of the send that published these ids (several sends' entries
            # in one batch: its own trace, linked to each of theirs), so one message is followed end to end.
            with span("dispatch.deliver", kind="consumer", traceparents=[tp for _, tp in chunk],
                      attributes={"messaging.system": "redis", "messaging.operation.type": "process",
                                  "messaging.batch.message_count": len(chunk)}):
                await self._delivery.deliver([mid for mid, _ in chunk])
        await self._stream.ack([e.entry_id for e in entries])
        self.batches += 1


def _looks_like_id(value: str) -> bool:
    try:
        return len(value) == 36 and uuid.UUID(value).version == 4
    except ValueError:
        return False


async def pump_receipts(carrier: Carrier, delivery: DeliveryService, *, limit: int = 500,
                        idle_s: float = 0.1) -> None:
    """Forever: hand the carrier's due receipts to the delivery service."""
    await drain("receipts", lambda: carrier.pump_receipts(delivery.apply_receipts, limit), None, idle_s)
