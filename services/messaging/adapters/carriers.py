"""Carrier adapters behind one interface, and the built-in carrier simulator.

An adapter submits batches of messages and reports delivery receipts. Our message id is the
idempotency key at the carrier: submitting the same message twice (a worker died after submitting but
before recording it) must not deliver it twice. Adapters: the built-in simulator and a generic
HTTP/JSON carrier (`HttpCarrier`) whose receipts arrive signed at `entrypoints/callback_receiver.py`.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import uuid
from collections.abc import Sequence
from typing import Any

import aiohttp

from services.messaging.adapters.store.simulator import PgSimulatorStore
from services.messaging.domain.delivery import Receipt, Submission, SubmitResult
from services.messaging.domain.statuses import TEMPORARY_FAILURE_ERROR, MessageStatus
from services.messaging.service.ports import ReceiptHandler

_REF_NAMESPACE = uuid.UUID("6c1c5d55-6e0d-4f4e-9a51-5e6e6453494d")


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


class CarrierUnavailable(Exception):
    """The carrier did not give a definitive answer (timeout, connection error, 5xx, 429): outcome unknown."""


class CarrierDown(CarrierUnavailable):
    """The carrier is known to have taken none of the batch (not connected, not bound, refused before
    sending): a fallback carrier may take the batch without risking a duplicate."""


class HttpCarrier:
    """A generic HTTP/JSON SMS provider.

    Submit: `POST {base}/messages` with `Authorization: Bearer <api key>` and
    `{"messages": [{"id", "to", "from", "body", "callback_url"}]}`; the answer is
    `{"results": [{"id", "accepted": true, "ref"} | {"id", "accepted": false, "error_code", "temporary"}]}`.
    Our message id is the carrier's idempotency key: a resubmission after a timeout returns the first
    answer and does not send again. Anything but a 200 with that shape raises CarrierUnavailable (the batch
    is retried with backoff); no connection at all (refused, DNS, TLS handshake) raises CarrierDown: the
    request never left, so a fallback route may take the batch.
    Receipts and replies come back signed to our HTTPS callback receiver
    (`entrypoints/callback_receiver.py`), not by polling.
    """

    name = "http"

    def __init__(self, base_url: str, api_key: str, *, callback_url: str = "", ca_file: str = "",
                 timeout: float = 10.0) -> None:
        if not base_url.startswith("https://"):
            raise ValueError("the carrier URL must be https")
        self._url = base_url.rstrip("/") + "/messages"
        self._api_key = api_key
        self._callback_url = callback_url
        self._timeout = timeout
        self._ssl = ssl.create_default_context(cafile=ca_file or None)
        self._ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        self._session: Any = None

    async def _client(self) -> Any:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=32),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def submit(self, batch: Sequence[Submission]) -> list[SubmitResult]:
        if not batch:
            return []
        payload = {"messages": [
            {"id": s.message_id, "to": s.to, "from": s.sender, "body": s.body, "callback_url": self._callback_url}
            for s in batch
        ]}
        session = await self._client()
        try:
            async with session.post(self._url, json=payload, allow_redirects=False,
                                    headers={"Authorization": f"Bearer {self._api_key}"}) as resp:
                if resp.status != 200:
                    raise CarrierUnavailable(f"carrier answered HTTP {resp.status}")
                answer = await resp.json(content_type=None)
        except aiohttp.ClientConnectorError as exc:  # no connection (refused, DNS, TLS handshake): nothing sent
            raise CarrierDown(type(exc).__name__) from None
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise CarrierUnavailable(type(exc).__name__) from None
        results: list[SubmitResult] = []
        wanted = {s.message_id for s in batch}
        for r in answer.get("results", []) if isinstance(answer, dict) else []:
            mid = str(r.get("id", "")).upper()
            if mid not in wanted:
                continue
            if r.get("accepted") is True:
                results.append(SubmitResult(mid, accepted=True, carrier_ref=str(r.get("ref", ""))[:128]))
            else:
                code = r.get("error_code")
                temporary = bool(r.get("temporary", False))
                results.append(SubmitResult(
                    mid, accepted=False,
                    error_code=TEMPORARY_FAILURE_ERROR if temporary or not isinstance(code, int) else code))
        return results

    async def pump_receipts(self, handle: ReceiptHandler, limit: int) -> int:
        return 0  # receipts arrive at the callback receiver
