"""Carrier adapters behind one interface, and the built-in carrier simulator.

An adapter submits batches of messages and reports delivery receipts. Our message id is the
idempotency key at the carrier: submitting the same message twice (a worker died after submitting but
before recording it) must not deliver it twice. Issue 5 adds an HTTP carrier and SMPP behind the same
Protocol.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from services.messaging.domain import TEMPORARY_FAILURE_ERROR, MessageStatus, Receipt, Submission, SubmitResult
from services.messaging.store import PgSimulatorStore

ReceiptHandler = Callable[[list[Receipt]], Awaitable[object]]
_REF_NAMESPACE = uuid.UUID("6c1c5d55-6e0d-4f4e-9a51-5e6e6453494d")


class Carrier(Protocol):
    name: str

    async def submit(self, batch: Sequence[Submission]) -> list[SubmitResult]:
        """One result per submission. Raising means "unknown outcome": every message is retried."""
        ...

    async def pump_receipts(self, handle: ReceiptHandler, limit: int) -> int:
        """Hand receipts that are due to `handle`; return how many (0: nothing waiting)."""
        ...


class SimulatorCarrier:
    """A carrier that delivers everything, deterministically.

    * `latency_s` per submit call (the time a real carrier API takes to answer a batch);
    * `failure_rate`: share of submissions refused with a temporary error (ClickSend error 16). The
      draw is a pure function of (seed, message id, attempt), so a run is reproducible whatever the
      batching or the number of workers;
    * accepted messages are recorded in `carrier_sim_submissions` (idempotent by our message id: a
      resubmission returns the first carrier ref and only bumps `submit_count`);
    * `receipt_delay_s` after the first acceptance a DELIVERED receipt (ClickSend status code 201) is
      due, handed out once by `pump_receipts`.
    """

    name = "simulator"

    def __init__(
        self,
        store: PgSimulatorStore,
        *,
        latency_s: float = 0.0,
        failure_rate: float = 0.0,
        receipt_delay_s: float = 0.2,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError("failure_rate must be between 0 and 1")
        self._store = store
        self._latency = latency_s
        self._failure_rate = failure_rate
        self._receipt_delay = receipt_delay_s
        self._seed = seed

    def _fails(self, sub: Submission) -> bool:
        if self._failure_rate <= 0.0:
            return False
        return random.Random(f"{self._seed}:{sub.message_id}:{sub.attempt}").random() < self._failure_rate

    async def submit(self, batch: Sequence[Submission]) -> list[SubmitResult]:
        if self._latency:
            await asyncio.sleep(self._latency)
        refused = [s for s in batch if self._fails(s)]
        refused_ids = {s.message_id for s in refused}
        accepted = [
            (s.message_id, uuid.uuid5(_REF_NAMESPACE, s.message_id).hex.upper())
            for s in batch if s.message_id not in refused_ids
        ]
        refs = await self._store.record_submissions(accepted, self._receipt_delay)
        results = [SubmitResult(mid, accepted=True, carrier_ref=refs[mid]) for mid, _ in accepted]
        results += [SubmitResult(s.message_id, accepted=False, error_code=TEMPORARY_FAILURE_ERROR) for s in refused]
        return results

    async def pump_receipts(self, handle: ReceiptHandler, limit: int) -> int:
        async def deliver(ids: list[str]) -> None:
            await handle([Receipt(mid, MessageStatus.DELIVERED) for mid in ids])

        return await self._store.pump_due_receipts(limit, deliver)
