"""The SMPP carrier on its own against tools/smsc.py over real TCP (no database): the per-connection
throughput cap, CarrierDown when nothing could be sent (so a fallback route may take the batch), and a
deliver_sm acknowledged only after its handler returned."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from services.messaging.adapters.carriers import CarrierDown
from services.messaging.adapters.smpp import pdu as p
from services.messaging.adapters.smpp.carrier import SmppCarrier
from services.messaging.adapters.smpp.session import SessionConfig
from services.messaging.domain.delivery import Receipt, Submission
from services.messaging.domain.receipts import InboundInput
from tools.smsc import Smsc


@pytest.fixture
async def smsc() -> AsyncIterator[Smsc]:
    s = Smsc(system_id="ss", password="pw", dlr_delay=0.01, dlr_retry=0.2)
    await s.start()
    yield s
    await s.stop()


def subs(n: int) -> list[Submission]:
    return [Submission(str(uuid.uuid4()).upper(), "+61412345678", f"m{i}", "SendSafe", 1) for i in range(n)]


async def test_throughput_cap_keeps_under_the_smscs_rate(smsc: Smsc) -> None:
    smsc.throttle_rate = 20  # the SMSC answers ESME_RTHROTTLED above 20 submit_sm/s on a connection
    carrier = SmppCarrier(SessionConfig(host="127.0.0.1", port=smsc.port, system_id="ss", password="pw",
                                        throughput=12))
    carrier.attach(_settle_all, _store_none)
    await carrier.start()
    try:
        results = await carrier.submit(subs(30))
        assert all(r.accepted for r in results) and smsc.throttled == 0 and smsc.accepted == 30
    finally:
        await carrier.close()


async def test_not_bound_is_carrier_down_and_nothing_is_sent(smsc: Smsc) -> None:
    carrier = SmppCarrier(SessionConfig(host="127.0.0.1", port=smsc.port, system_id="ss", password="nope"),
                          bind_wait_s=0.5)
    await carrier.start()
    try:
        with pytest.raises(CarrierDown):
            await carrier.submit(subs(3))
        assert smsc.submits == 0 and smsc.bind_failures >= 1
    finally:
        await carrier.close()


async def test_deliver_sm_is_acked_only_after_the_handler_returned(smsc: Smsc) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    stored: list[InboundInput] = []

    async def slow_store(items: list[InboundInput]) -> int:
        entered.set()
        await release.wait()  # the database is slow
        stored.extend(items)
        return len(items)

    carrier = SmppCarrier(SessionConfig(host="127.0.0.1", port=smsc.port, system_id="ss", password="pw"))
    carrier.attach(_settle_all, slow_store)
    await carrier.start()
    try:
        mo = asyncio.ensure_future(smsc.send_mo("+61412345678", "61400000000", "STOP"))
        await asyncio.wait_for(entered.wait(), 10)  # the ESME is storing it
        assert not mo.done() and not stored  # no deliver_sm_resp while the store has not returned
        release.set()
        assert await mo == p.ESME_ROK
        assert [(i.sender, i.to, i.body, i.carrier) for i in stored] == [("+61412345678", "61400000000", "STOP",
                                                                          "smpp")]
    finally:
        await carrier.close()


async def test_a_store_that_fails_answers_a_temporary_error(smsc: Smsc) -> None:
    async def broken(_: list[InboundInput]) -> int:
        raise ConnectionError("database down")

    carrier = SmppCarrier(SessionConfig(host="127.0.0.1", port=smsc.port, system_id="ss", password="pw"))
    carrier.attach(_settle_all, broken)
    await carrier.start()
    try:
        assert await smsc.send_mo("+61412345678", "61400000000", "hi") == p.ESME_RX_T_APPN
        assert carrier.session.state == "bound"
    finally:
        await carrier.close()


async def _settle_all(receipts: list[Receipt]) -> tuple[int, list[bool]]:
    return len(receipts), [True] * len(receipts)


async def _store_none(items: list[InboundInput]) -> int:
    return 0
