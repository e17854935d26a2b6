"""Carrier routes through the real DeliveryService, PostgreSQL and Redis, with two real carriers: the HTTP
carrier against a local HTTPS carrier, and the built-in simulator. Messages to AU go to the HTTP carrier,
the rest to the simulator; a down HTTP carrier (no connection: none of the batch taken) fails over to the
simulator with each message delivered exactly once; an unknown outcome (the carrier took the batch but
its answer timed out) is retried on the same carrier, never failed over. The SMPP carrier (against
tools/smsc.py) as a route, and an SMSC that goes away, fail over the same way."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from sendsafe.messaging.v1 import messaging_service_pb2 as pb
from services.messaging.adapters.carriers import HttpCarrier, SimulatorCarrier
from services.messaging.adapters.routing import DOWN, UP, RoutingCarrier
from services.messaging.adapters.smpp.carrier import SmppCarrier
from svckit.app import App
from tests.integration.messaging.conftest import Messaging, principal_md
from tests.integration.messaging.fakes import FakeCarrier, free_port
from tests.integration.messaging.test_api import REAL_NUMBER, eventually, sms, stub_for
from tests.support import CertBundle
from tools.smsc import Smsc

GB_NUMBER = "+447400123456"  # a valid UK mobile number


@pytest.fixture
async def carrier(certs: CertBundle) -> AsyncIterator[FakeCarrier]:
    fake = await FakeCarrier(certs).start()
    yield fake
    await fake.stop()


async def routed_worker(m: Messaging, certs: CertBundle, url: str, fake: FakeCarrier, **kw: Any) -> App:
    port = free_port()
    return await m.start_worker(
        carrier_routes="AU=http;*=simulator", carrier_url=url, carrier_api_key=fake.api_key,
        carrier_ca_file=str(certs.public_ca), carrier_callback_secret=fake.callback_secret.decode(),
        carrier_callback_listen=f"127.0.0.1:{port}", carrier_callback_url=f"https://localhost:{port}/carrier/callbacks",
        carrier_callback_cert_file=str(certs.https_cert), carrier_callback_key_file=str(certs.https_key), **kw,
    )


def router_of(worker: App) -> RoutingCarrier:
    router = worker.extras["carrier"]
    assert isinstance(router, RoutingCarrier)
    return router


async def send(m: Messaging, certs: CertBundle, account_id: int, numbers: list[str]) -> list[str]:
    ch, stub = stub_for(m, certs)
    async with ch:
        sent = await stub.SendSms(pb.SendSmsRequest(messages=[sms(n, f"r{i}") for i, n in enumerate(numbers)]),  # type: ignore[attr-defined]
                                  metadata=principal_md(account_id))
    return [x.message_id for x in sent.messages]


async def rows(m: Messaging, account_id: int) -> dict[str, tuple[str, str]]:
    """id -> (status, carrier)."""
    got = await m.pool.fetch("SELECT upper(id::text) AS id, status, carrier FROM messages WHERE account_id = $1",
                             account_id)
    return {r["id"]: (r["status"], r["carrier"]) for r in got}


async def all_delivered(m: Messaging, account_id: int, n: int, timeout: float = 20.0) -> None:
    async def done() -> bool:
        states = await rows(m, account_id)
        return len(states) == n and {s for s, _ in states.values()} == {"DELIVERED"}

    await eventually(done, timeout=timeout, what=f"{n} messages of account {account_id} delivered")


async def sim_submissions(m: Messaging, ids: list[str]) -> dict[str, int]:
    got = await m.pool.fetch("SELECT upper(message_id::text) AS id, submit_count FROM carrier_sim_submissions"
                             " WHERE message_id = ANY($1::uuid[])", ids)
    return {r["id"]: r["submit_count"] for r in got}


async def test_au_goes_to_the_http_carrier_and_the_rest_to_the_simulator(
    messaging: Messaging, certs: CertBundle, carrier: FakeCarrier
) -> None:
    worker = await routed_worker(messaging, certs, carrier.url, carrier)
    router = router_of(worker)
    assert isinstance(router.carriers["http"], HttpCarrier)
    assert isinstance(router.carriers["simulator"], SimulatorCarrier)
    ids = await send(messaging, certs, 9301, [REAL_NUMBER, GB_NUMBER] * 6)
    au, gb = ids[0::2], ids[1::2]
    await all_delivered(messaging, 9301, 12)
    states = await rows(messaging, 9301)
    assert {mid: c for mid, (_, c) in states.items()} == {**{x: "http" for x in au}, **{x: "simulator" for x in gb}}
    assert set(carrier.delivered) == set(au) and set(carrier.delivered.values()) == {1}
    assert set(carrier.to.values()) == {REAL_NUMBER}
    assert await sim_submissions(messaging, ids) == {x: 1 for x in gb}
    # Each receipt found its message, whichever carrier sent it (the HTTP one by callback, the simulator's
    # by the receipts pump).
    assert await messaging.pool.fetchval(
        "SELECT count(*) FROM receipts WHERE account_id = 9301 AND status = 'DELIVERED'") == 12
    health = router.health()
    assert health["http"].state == UP and health["http"].accepted == 6
    assert health["simulator"].state == UP and health["simulator"].accepted == 6


async def test_a_down_carrier_fails_over_and_each_message_is_delivered_exactly_once(
    messaging: Messaging, certs: CertBundle, carrier: FakeCarrier
) -> None:
    worker = await routed_worker(messaging, certs, carrier.url, carrier, carrier_fallback="simulator")
    first = await send(messaging, certs, 9302, [REAL_NUMBER] * 5)
    await all_delivered(messaging, 9302, 5)
    await carrier.stop()  # the HTTP carrier goes away: connections are refused, nothing can be taken
    second = await send(messaging, certs, 9302, [REAL_NUMBER] * 5 + [GB_NUMBER] * 2)
    await all_delivered(messaging, 9302, 12)
    states = await rows(messaging, 9302)
    assert {mid: c for mid, (_, c) in states.items()} == {**{x: "http" for x in first},
                                                          **{x: "simulator" for x in second}}
    assert set(carrier.delivered) == set(first) and set(carrier.delivered.values()) == {1}
    assert await sim_submissions(messaging, first + second) == {x: 1 for x in second}  # exactly once
    assert await messaging.pool.fetchval(
        "SELECT count(*) FROM receipts WHERE account_id = 9302 AND status = 'DELIVERED'") == 12
    health = router_of(worker).health()
    assert health["http"].state == DOWN and health["http"].failed_over == 5
    assert health["simulator"].fallback_taken == 5


async def test_an_unknown_outcome_is_retried_on_the_same_carrier_never_failed_over(
    messaging: Messaging, certs: CertBundle, carrier: FakeCarrier
) -> None:
    # The carrier takes the first batches but answers too late; receipts come after the retries.
    carrier.hang, carrier.hang_seconds, carrier.receipt_delay = 2, 3.0, 2.0
    worker = await routed_worker(messaging, certs, carrier.url, carrier, carrier_fallback="simulator",
                                 carrier_timeout_seconds=0.5, max_attempts=10)
    ids = await send(messaging, certs, 9303, [REAL_NUMBER] * 20)
    await all_delivered(messaging, 9303, 20, timeout=30)
    assert carrier.hang == 0 and max(carrier.submissions.values()) >= 2  # resubmitted, to the same carrier
    assert set(carrier.delivered) == set(ids) and set(carrier.delivered.values()) == {1}
    assert await sim_submissions(messaging, ids) == {}  # the fallback never saw them
    assert {c for _, c in (await rows(messaging, 9303)).values()} == {"http"}
    health = router_of(worker).health()
    assert health["http"].unknown_outcome >= 1 and health["simulator"].fallback_taken == 0


async def test_a_bad_route_table_refuses_start_up(messaging: Messaging) -> None:
    with pytest.raises(ValueError, match="no default route"):
        await messaging.start_worker(carrier_routes="AU=http")
    with pytest.raises(ValueError, match="unknown carrier 'pigeon'"):
        await messaging.start_worker(carrier_routes="AU=pigeon;*=simulator")
    with pytest.raises(ValueError, match="MESSAGING_CARRIER_FALLBACK: unknown carrier 'smtp'"):
        await messaging.start_worker(carrier_fallback="smtp")
    plain = await messaging.start_worker()  # no routes, no fallback: MESSAGING_CARRIER alone, as before
    assert isinstance(plain.extras["carrier"], SimulatorCarrier)


async def test_smpp_route_falls_back_when_the_smsc_goes_away(messaging: Messaging, certs: CertBundle) -> None:
    """The SMPP carrier as the AU route against tools/smsc.py: while bound, AU goes over SMPP (receipts by
    DLR) and the rest to the simulator; once the SMSC is gone the session is not bound, nothing can be taken
    (CarrierDown), and the simulator delivers those AU messages instead, each exactly once."""
    smsc = Smsc(dlr_delay=0.05)
    await smsc.start()
    try:
        worker = await messaging.start_worker(
            carrier_routes="AU=smpp;*=simulator", carrier_fallback="simulator", smpp_host="127.0.0.1",
            smpp_port=smsc.port, smpp_system_id="sendsafe", max_attempts=10)
        router = router_of(worker)
        assert isinstance(router.carriers["smpp"], SmppCarrier)
        first = await send(messaging, certs, 9304, [REAL_NUMBER, GB_NUMBER] * 3)
        await all_delivered(messaging, 9304, 6)
        au, gb = first[0::2], first[1::2]
        assert len(smsc.submissions) == 3 and set(smsc.by_content().values()) == {1}
        assert await sim_submissions(messaging, first) == {x: 1 for x in gb}
    finally:
        await smsc.stop()  # the SMSC goes away: the session drops and cannot bind again
    second = await send(messaging, certs, 9304, [REAL_NUMBER] * 4)
    await all_delivered(messaging, 9304, 10, timeout=30)
    states = await rows(messaging, 9304)
    assert {mid: c for mid, (_, c) in states.items()} == {
        **{x: "smpp" for x in au}, **{x: "simulator" for x in gb + second}}
    assert len(smsc.submissions) == 3  # nothing more reached the SMSC
    assert await sim_submissions(messaging, first + second) == {x: 1 for x in gb + second}
    health = router.health()
    assert health["smpp"].state == DOWN and health["smpp"].failed_over == 4
