"""The SMPP carrier against tools/smsc.py over real TCP (and TLS), through the real worker, DeliveryService,
PostgreSQL and Redis: delivery and receipts, throttling, a connection dropped mid-window, lost receipts, a
garbled deliver_sm, MO STOP/START, the window, a permanent refusal (refunded), and a clean unbind."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any, cast

import pytest

from sendsafe.messaging.v1 import messaging_service_pb2 as pb
from services.messaging.adapters.smpp import pdu as p
from services.messaging.adapters.smpp.carrier import SmppCarrier
from services.messaging.domain.encoding import count_parts
from svckit.app import App
from tests.integration.messaging.conftest import Messaging, principal_md
from tests.integration.messaging.senders_support import approve_tag, hold_number
from tests.integration.messaging.test_api import REAL_NUMBER, eventually, sms, stub_for
from tests.support import CertBundle
from tools.smsc import Smsc

SYSTEM_ID, PASSWORD = "sendsafe", "s3cr3t!"


@pytest.fixture
async def smsc() -> AsyncIterator[Smsc]:
    s = Smsc(system_id=SYSTEM_ID, password=PASSWORD, dlr_delay=0.05, dlr_retry=0.3)
    await s.start()
    yield s
    await s.stop()


async def smpp_worker(m: Messaging, smsc: Smsc, **kw: Any) -> App:
    settings: dict[str, Any] = dict(carrier="smpp", smpp_host="127.0.0.1", smpp_port=smsc.port,
                                    smpp_system_id=SYSTEM_ID, smpp_password=PASSWORD, max_attempts=10)
    settings.update(kw)
    return await m.start_worker(**settings)


async def send(m: Messaging, certs: CertBundle, account: int, bodies: list[str], to: str = REAL_NUMBER,
               **kw: Any) -> list[str]:
    ch, stub = stub_for(m, certs)
    async with ch:
        resp = await stub.SendSms(pb.SendSmsRequest(messages=[sms(to, b, **kw) for b in bodies]),  # type: ignore[attr-defined]
                                  metadata=principal_md(account))
    assert all(x.status == "SUCCESS" for x in resp.messages)
    return [x.message_id for x in resp.messages]


async def statuses(m: Messaging, account: int) -> dict[str, str]:
    rows = await m.pool.fetch("SELECT id, status FROM messages WHERE account_id = $1", account)
    return {str(r["id"]).upper(): r["status"] for r in rows}


async def settle(m: Messaging, account: int, want: dict[str, int], timeout: float = 30.0) -> dict[str, str]:
    async def done() -> bool:
        s = list((await statuses(m, account)).values())
        return all(s.count(k) == v for k, v in want.items())

    await eventually(done, timeout=timeout, what=f"statuses {want}")
    return await statuses(m, account)


def carrier_of(worker: App) -> SmppCarrier:
    return cast(SmppCarrier, worker.extras["carrier"])


def duplicates(smsc: Smsc) -> int:
    return sum(n - 1 for n in smsc.by_content().values())


async def test_messages_are_delivered_and_receipts_applied(messaging: Messaging, certs: CertBundle,
                                                           smsc: Smsc) -> None:
    await smpp_worker(messaging, smsc)
    await approve_tag(messaging.pool, 9301, "SendSafe")
    long_body = "Long message " * 30  # 390 GSM-7 septets: 3 parts
    bodies = [f"hello {i}" for i in range(28)] + [long_body, "Grüße ✓ unicode"]
    ids = await send(messaging, certs, 9301, bodies, sender="SendSafe")
    await settle(messaging, 9301, {"DELIVERED": 30})
    assert await messaging.pool.fetchval("SELECT count(*) FROM receipts WHERE account_id = 9301") == 30
    assert duplicates(smsc) == 0
    parts = count_parts(long_body).parts
    assert parts == 3 and smsc.accepted == 29 + parts
    assert {(s.source_ton, s.source_npi, s.source) for s in smsc.submissions} == {(5, 0, "SendSafe")}
    assert {s.destination for s in smsc.submissions} == {REAL_NUMBER.lstrip("+")}
    concatenated = [s for s in smsc.submissions if s.esm_class & 0x40]
    assert len(concatenated) == parts and [s.short_message[5] for s in concatenated] == [1, 2, 3]
    assert [s.registered_delivery for s in concatenated] == [0, 0, 1]  # only the last part asks for a DLR
    assert {s.data_coding for s in smsc.submissions if s.short_message.endswith("✓ unicode".encode("utf-16-be"))} \
        == {8}
    # The stored carrier ref is the SMSC's id of the part that carries the DLR: a receipt finds its message
    # from the database alone (after a restart), and a repeated receipt changes nothing.
    refs = dict(await messaging.pool.fetch("SELECT upper(id::text), carrier_ref FROM messages WHERE account_id = 9301"))
    asked = {s.message_id for s in smsc.submissions if s.registered_delivery}
    assert set(refs) == set(ids) and set(refs.values()) == asked
    assert await smsc.send_dlr(refs[ids[0]], delivered=False) == p.ESME_ROK
    assert (await statuses(messaging, 9301))[ids[0]] == "DELIVERED"


async def test_a_receipt_for_an_unknown_reference_is_not_acknowledged(messaging: Messaging, smsc: Smsc) -> None:
    worker = await smpp_worker(messaging, smsc)
    assert await smsc.send_dlr("FFFFFFFF01") == p.ESME_RX_T_APPN  # the SMSC sends it again later
    assert carrier_of(worker).receipts_deferred == 1


async def test_throttling_backs_off_and_every_message_arrives(messaging: Messaging, certs: CertBundle,
                                                              smsc: Smsc) -> None:
    smsc.throttle_next = 8
    smsc.throttle_rate = 40
    await smpp_worker(messaging, smsc)
    await send(messaging, certs, 9302, [f"t{i}" for i in range(120)])
    await settle(messaging, 9302, {"DELIVERED": 120}, timeout=60)
    assert smsc.throttled >= 8 and smsc.accepted == 120 and duplicates(smsc) == 0


async def test_dropped_connection_mid_window_reconnects_and_settles_each_message_once(
    messaging: Messaging, certs: CertBundle, smsc: Smsc
) -> None:
    """The SMSC drops the TCP connection after 25 accepted submits while up to 10 are unanswered. Messages
    whose answer was lost are retried; SMPP has no idempotency key, so the SMSC may count those twice (at
    most the window: documented), but every message reaches exactly one final state with one receipt."""
    smsc.resp_delay, smsc.drop_after = 0.02, 25
    worker = await smpp_worker(messaging, smsc, smpp_window=10)
    await send(messaging, certs, 9303, [f"d{i}" for i in range(80)])
    await settle(messaging, 9303, {"DELIVERED": 80}, timeout=60)
    assert smsc.drops == 1 and smsc.binds == 2
    assert await messaging.pool.fetchval("SELECT count(*) FROM receipts WHERE account_id = 9303") == 80
    dup = duplicates(smsc)
    assert dup <= 10 and len(smsc.by_content()) == 80
    assert carrier_of(worker).session.state == "bound"
    print(f"\ndropped connection: {dup} messages submitted twice (answers lost in the drop), 80 delivered once")


async def test_lost_receipts_leave_messages_sent(messaging: Messaging, certs: CertBundle, smsc: Smsc) -> None:
    smsc.lose_receipts = 3
    await smpp_worker(messaging, smsc)
    await send(messaging, certs, 9304, [f"l{i}" for i in range(10)])
    final = await settle(messaging, 9304, {"DELIVERED": 7, "SENT": 3})
    await eventually(lambda: _true(smsc.dlrs_acked == 7), what="every DLR sent to be acknowledged")
    refs = dict(await messaging.pool.fetch("SELECT upper(id::text), carrier_ref FROM messages WHERE account_id = 9304"))
    assert {refs[mid] for mid, st in final.items() if st == "SENT"} == smsc.lost_receipts
    assert (await statuses(messaging, 9304)) == final  # nothing was falsely delivered meanwhile


async def _true(v: bool) -> bool:
    return v


async def test_garbled_deliver_sm_is_nacked_and_the_session_goes_on(messaging: Messaging, certs: CertBundle,
                                                                    smsc: Smsc) -> None:
    await smpp_worker(messaging, smsc)
    await eventually(lambda: _true(smsc.bound() == 1), what="the bind")
    answer = await smsc.send_garbled()
    assert answer is not None and answer[0] == p.GENERIC_NACK and answer[1] != p.ESME_ROK
    await send(messaging, certs, 9305, ["after the garbage"])
    await settle(messaging, 9305, {"DELIVERED": 1})
    assert smsc.binds == 1  # same session, no reconnect


async def test_mo_stop_and_start_over_smpp_change_opt_outs(messaging: Messaging, certs: CertBundle,
                                                          smsc: Smsc) -> None:
    await smpp_worker(messaging, smsc)
    ours = "+61400555000"
    await hold_number(messaging.pool, 9306, ours)  # the account's dedicated number
    [mid] = await send(messaging, certs, 9306, ["Reply STOP to opt out"], sender=ours)
    [shared] = await send(messaging, certs, 9306, ["from the shared number"])
    await settle(messaging, 9306, {"DELIVERED": 2})
    assert await smsc.send_mo(REAL_NUMBER, ours, "Stop") == p.ESME_ROK  # acked once stored
    row = await messaging.pool.fetchrow(
        "SELECT original_message_id, opt_action, carrier FROM inbound_messages WHERE account_id = 9306")
    assert row is not None and str(row["original_message_id"]).upper() == mid and row["opt_action"] == "OPT_OUT"
    assert row["carrier"] == "smpp"
    assert await messaging.pool.fetchval("SELECT count(*) FROM opt_outs WHERE account_id = 9306") == 1
    ch, stub = stub_for(messaging, certs)
    async with ch:
        resp = await stub.SendSms(pb.SendSmsRequest(messages=[sms(REAL_NUMBER, "again", sender=ours)]),  # type: ignore[attr-defined]
                                  metadata=principal_md(9306))
    assert resp.messages[0].status != "SUCCESS"  # opted out
    # START from the same handset to the shared number (the SMSC's own number for messages sent with no
    # sender id): matched to that message, opted in again.
    assert await smsc.send_mo(REAL_NUMBER, "61499999999", "START") == p.ESME_ROK
    assert await messaging.pool.fetchval("SELECT count(*) FROM opt_outs WHERE account_id = 9306") == 0
    assert await messaging.pool.fetchval(
        "SELECT count(*) FROM inbound_messages WHERE original_message_id = $1::uuid", shared) == 1
    # A message from a number we never wrote to, to the account's dedicated number: the account's (no original).
    assert await smsc.send_mo("+61487654321", ours, "hello?") == p.ESME_ROK
    assert await messaging.pool.fetchval("SELECT count(*) FROM inbound_messages WHERE account_id = 9306") == 3
    assert await messaging.pool.fetchval("SELECT count(*) FROM inbound_messages WHERE account_id = 9306"
                                         " AND original_message_id IS NULL") == 1
    # One to a number nobody holds and nobody sent from matches nothing: acknowledged, dropped.
    assert await smsc.send_mo("+61487654321", "61400555999", "hello?") == p.ESME_ROK
    assert await messaging.pool.fetchval("SELECT count(*) FROM inbound_messages") == \
        await messaging.pool.fetchval("SELECT count(*) FROM inbound_messages WHERE account_id = 9306")


async def test_window_is_never_exceeded(messaging: Messaging, certs: CertBundle, smsc: Smsc) -> None:
    smsc.resp_delay = 0.05
    worker = await smpp_worker(messaging, smsc, smpp_window=4)
    await send(messaging, certs, 9307, [f"w{i}" for i in range(40)])
    await settle(messaging, 9307, {"DELIVERED": 40})
    assert smsc.max_outstanding == 4  # reached, never exceeded
    assert carrier_of(worker).session.max_outstanding == 4


async def test_permanent_refusal_fails_and_refunds(messaging: Messaging, certs: CertBundle, smsc: Smsc) -> None:
    smsc.fail_prefixes = {"614123": p.ESME_RINVDSTADR}
    await smpp_worker(messaging, smsc)
    before = await messaging.store.balance(9308)
    [mid] = await send(messaging, certs, 9308, ["refused"])
    await settle(messaging, 9308, {"FAILED": 1})
    assert await messaging.pool.fetchval("SELECT error_code FROM messages WHERE id = $1::uuid", mid) == 8
    after = await messaging.store.balance(9308)
    assert after == (before if before is not None else Decimal(messaging.settings.trial_credit))


async def test_bad_password_never_binds_and_sends_nothing(messaging: Messaging, certs: CertBundle,
                                                          smsc: Smsc) -> None:
    worker = await smpp_worker(messaging, smsc, smpp_password="wrong")
    await eventually(lambda: _true(smsc.bind_failures >= 2), what="the bind to be refused and retried")
    assert carrier_of(worker).session.state == "reconnecting" and smsc.binds == 0
    [mid] = await send(messaging, certs, 9309, ["held"])
    await eventually(lambda: _attempted(messaging, mid), what="a delivery attempt")
    assert (await statuses(messaging, 9309))[mid] in ("QUEUED", "SENDING") and smsc.submits == 0


async def _attempted(m: Messaging, mid: str) -> bool:
    return bool(await m.pool.fetchval("SELECT attempts > 0 FROM messages WHERE id = $1::uuid", mid))


async def test_tls_with_certificate_verification(messaging: Messaging, certs: CertBundle) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs.https_cert, certs.dir / "gateway-https.key")
    tls_smsc = Smsc(system_id=SYSTEM_ID, password=PASSWORD, dlr_delay=0.05, ssl_context=ctx)
    await tls_smsc.start()
    try:
        # A CA that did not sign the SMSC's certificate: no bind (the handshake fails), nothing sent.
        wrong = await smpp_worker(messaging, tls_smsc, smpp_tls=True, smpp_ca_file=str(certs.tls("x").ca))
        await eventually(lambda: _true(carrier_of(wrong).session.state == "reconnecting"),
                         what="the untrusted SMSC to be refused")
        assert tls_smsc.binds == 0
        await wrong.stop()
        await smpp_worker(messaging, tls_smsc, smpp_tls=True, smpp_ca_file=str(certs.public_ca))
        await send(messaging, certs, 9310, ["over TLS"])
        await settle(messaging, 9310, {"DELIVERED": 1})
        assert tls_smsc.binds == 1
    finally:
        await tls_smsc.stop()


async def test_worker_stop_unbinds_cleanly(messaging: Messaging, smsc: Smsc) -> None:
    worker = await smpp_worker(messaging, smsc)
    await eventually(lambda: _true(smsc.bound() == 1), what="the bind")
    await worker.stop()
    assert smsc.unbinds == 1
    await eventually(lambda: _true(smsc.bound() == 0), what="the session to close")


async def test_smsc_unbind_and_dead_link_lead_to_a_new_bind(messaging: Messaging, certs: CertBundle,
                                                           smsc: Smsc) -> None:
    worker = await smpp_worker(messaging, smsc, smpp_enquire_link_seconds=0.2)
    await eventually(lambda: _true(smsc.enquire_links >= 2), what="keep-alive enquire_links")
    await smsc.unbind_all()
    await eventually(lambda: _true(smsc.binds == 2), what="a new bind after the SMSC's unbind")
    # A link that stops answering (the SMSC hangs, the TCP connection stays open) is found dead by the
    # keep-alive and replaced (the response timeout is the default 10 s).
    smsc.ignore_enquire_link = True
    await eventually(lambda: _true(smsc.binds == 3), timeout=30, what="a new bind after a dead link")
    smsc.ignore_enquire_link = False
    await send(messaging, certs, 9311, ["after rebind"])
    await settle(messaging, 9311, {"DELIVERED": 1})
    assert carrier_of(worker).session.binds == 3
