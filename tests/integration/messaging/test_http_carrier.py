"""The HTTP carrier adapter against a local HTTPS fake carrier, and the signed callback receiver: receipts
and replies arrive signed, bad signatures are refused, and a carrier that times out (having taken the
messages) leads to exactly one delivery each, no message lost, the balance right."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from sendsafe.messaging.v1 import messaging_service_pb2 as pb
from svckit.app import App
from tests.integration.messaging.conftest import Messaging, principal_md
from tests.integration.messaging.fakes import FakeCarrier, free_port
from tests.integration.messaging.test_api import REAL_NUMBER, eventually, sms, stub_for
from tests.support import CertBundle


@pytest.fixture
async def carrier(certs: CertBundle) -> AsyncIterator[FakeCarrier]:
    fake = await FakeCarrier(certs).start()
    yield fake
    await fake.stop()


async def http_worker(m: Messaging, certs: CertBundle, fake: FakeCarrier, **kw: Any) -> tuple[App, str]:
    port = free_port()
    callback = f"https://localhost:{port}/carrier/callbacks"
    worker = await m.start_worker(
        carrier="http", carrier_url=fake.url, carrier_api_key=fake.api_key, carrier_ca_file=str(certs.public_ca),
        carrier_callback_secret=fake.callback_secret.decode(), carrier_callback_listen=f"127.0.0.1:{port}",
        carrier_callback_url=callback, carrier_callback_cert_file=str(certs.https_cert),
        carrier_callback_key_file=str(certs.https_key), **kw,
    )
    return worker, callback


async def statuses(m: Messaging, account_id: int) -> dict[str, str]:
    rows = await m.pool.fetch("SELECT id, status FROM messages WHERE account_id = $1", account_id)
    return {str(r["id"]).upper(): r["status"] for r in rows}


async def test_http_carrier_delivers_and_receipts_come_back_signed(messaging: Messaging, certs: CertBundle,
                                                                   carrier: FakeCarrier) -> None:
    _, callback = await http_worker(messaging, certs, carrier)
    ch, stub = stub_for(messaging, certs)
    async with ch:
        sent = await stub.SendSms(pb.SendSmsRequest(messages=[sms(REAL_NUMBER, f"m{i}") for i in range(20)]),  # type: ignore[attr-defined]
                                  metadata=principal_md(9201))
    ids = {m.message_id for m in sent.messages}

    async def all_delivered() -> bool:
        return set((await statuses(messaging, 9201)).values()) == {"DELIVERED"}

    await eventually(all_delivered, what="every message to be delivered through the HTTP carrier")
    assert set(carrier.delivered) == ids and set(carrier.delivered.values()) == {1}
    assert set(carrier.to.values()) == {REAL_NUMBER}
    refs = dict(await messaging.pool.fetch("SELECT upper(id::text), carrier_ref FROM messages WHERE account_id = 9201"))
    assert refs == {mid: carrier.refs[mid] for mid in ids}
    assert await messaging.pool.fetchval("SELECT count(*) FROM receipts WHERE account_id = 9201") == 20

    # A repeated callback (the carrier did not see our answer) changes nothing.
    mid = next(iter(ids))
    doc = {"receipts": [{"id": mid, "status": "failed", "error_code": 12}]}
    assert await carrier.callback(callback, doc) == 200
    assert (await statuses(messaging, 9201))[mid] == "DELIVERED"
    assert await messaging.pool.fetchval("SELECT count(*) FROM receipts WHERE account_id = 9201") == 20


async def test_callbacks_with_a_bad_or_stale_signature_are_refused(messaging: Messaging, certs: CertBundle,
                                                                   carrier: FakeCarrier) -> None:
    worker, callback = await http_worker(messaging, certs, carrier)
    carrier.receipt_delay = 3600  # no real receipts during this test
    ch, stub = stub_for(messaging, certs)
    async with ch:
        sent = await stub.SendSms(pb.SendSmsRequest(messages=[sms(REAL_NUMBER, "x")]), metadata=principal_md(9202))  # type: ignore[attr-defined]
    mid = sent.messages[0].message_id

    async def sent_state() -> bool:
        return (await statuses(messaging, 9202)).get(mid) == "SENT"

    await eventually(sent_state, what="the carrier to accept the message")
    forged = {"receipts": [{"id": mid, "status": "delivered"}]}
    assert await carrier.callback(callback, forged, secret=b"guessed") == 401
    assert await carrier.callback(callback, forged, timestamp=int(time.time()) - 600) == 401
    assert await carrier.callback(callback, {"inbound": [{"from": REAL_NUMBER}]}) == 400  # signed but malformed
    assert (await statuses(messaging, 9202))[mid] == "SENT"
    receiver = worker.extras["receiver"]
    assert receiver.rejected == 2
    # By the carrier's reference alone (some carriers only know theirs).
    assert await carrier.callback(callback, {"receipts": [{"ref": carrier.refs[mid], "status": "failed",
                                                            "error_code": 12}]}) == 200
    assert (await statuses(messaging, 9202))[mid] == "FAILED"
    # A reference we have not recorded (yet): not applied, and the carrier is asked to send it again.
    assert await carrier.callback(callback, {"receipts": [{"ref": "C-unknown", "status": "delivered"}]}) == 503
    assert receiver.deferred == 1
    assert await messaging.pool.fetchval(
        "SELECT error_code FROM receipts WHERE message_id = $1::uuid", mid) == 12


async def test_a_carrier_that_times_out_still_delivers_each_message_exactly_once(
    messaging: Messaging, certs: CertBundle, carrier: FakeCarrier
) -> None:
    """The carrier takes the first batches but its answers never arrive in time (the adapter times out):
    the batch is retried with the same message ids, the carrier deduplicates, the receipts settle it."""
    # Receipts come late enough that the retries resubmit first (the carrier must deduplicate them).
    carrier.hang, carrier.hang_seconds, carrier.receipt_delay = 2, 3.0, 2.0
    await http_worker(messaging, certs, carrier, carrier_timeout_seconds=0.5, max_attempts=10)
    ch, stub = stub_for(messaging, certs)
    async with ch:
        sent = await stub.SendSms(pb.SendSmsRequest(messages=[sms(REAL_NUMBER, f"t{i}") for i in range(30)]),  # type: ignore[attr-defined]
                                  metadata=principal_md(9203))
    ids = {m.message_id for m in sent.messages}
    assert len(ids) == 30

    async def settled() -> bool:
        return set((await statuses(messaging, 9203)).values()) == {"DELIVERED"}

    await eventually(settled, timeout=30, what="every message to settle after the carrier recovered")
    assert carrier.hang == 0 and max(carrier.submissions.values()) >= 2  # some were submitted again
    assert set(carrier.delivered) == ids and set(carrier.delivered.values()) == {1}  # none twice to a handset
    assert await messaging.pool.fetchval(
        "SELECT count(*) FROM receipts WHERE account_id = 9203 AND status = 'DELIVERED'") == 30
    assert await messaging.service.get_balance(9203) == Decimal("10") - 30 * Decimal("0.077")


async def test_replies_from_the_carrier_are_matched_and_stop_opts_out(messaging: Messaging, certs: CertBundle,
                                                                     carrier: FakeCarrier) -> None:
    _, callback = await http_worker(messaging, certs, carrier)
    md = principal_md(9204)
    ch, stub = stub_for(messaging, certs)
    async with ch:
        sent = await stub.SendSms(pb.SendSmsRequest(messages=[sms(REAL_NUMBER, "Offer! Reply STOP to opt out",  # type: ignore[attr-defined]
                                                                  custom_string="promo")]), metadata=md)
        mid = sent.messages[0].message_id

        async def accepted() -> bool:
            ref = await messaging.pool.fetchval("SELECT carrier_ref FROM messages WHERE id = $1::uuid", mid)
            return bool(ref)

        await eventually(accepted, what="the carrier's answer to be recorded")
        doc = {"inbound": [
            {"id": "MO-1", "from": REAL_NUMBER, "to": "+61400000000", "body": "STOP", "in_reply_to": carrier.refs[mid]},
            {"id": "MO-2", "from": "+61499999999", "to": "+61400000000", "body": "who?", "in_reply_to": "nothing"},
        ]}
        assert await carrier.callback(callback, doc) == 200
        assert await carrier.callback(callback, doc) == 200  # delivered twice by the carrier: stored once
        page = await stub.ListInboundSms(pb.ListInboundSmsRequest(), metadata=md)  # type: ignore[attr-defined]
        assert [(i.sender, i.body, i.original_message_id, i.custom_string, i.to) for i in page.data] == [
            (REAL_NUMBER, "STOP", mid, "promo", "+61400000000")]
        assert await messaging.pool.fetchval("SELECT count(*) FROM inbound_messages") == 1  # the unmatched: dropped
        again = await stub.SendSms(pb.SendSmsRequest(messages=[sms(REAL_NUMBER, "more offers")]), metadata=md)  # type: ignore[attr-defined]
        assert again.messages[0].status == "RECIPIENT_OPTED_OUT"
