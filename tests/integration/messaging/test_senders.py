"""Sender identities over the real messaging API (mTLS), real PostgreSQL, keys and audit (issue 21): the operator's
inventory (ops only, a bad row loads nothing), buying, sending from and releasing a dedicated number, an own
number verified with the code the handset got, and every refusal with its status and stable reason - each one
leaving nothing changed. A verified number is never stored in clear; a reply to it lands in its account."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest

from sendsafe.audit.v1 import event_pb2
from sendsafe.messaging.v1 import messaging_service_pb2, messaging_service_pb2_grpc, sender_service_pb2_grpc, sms_pb2
from sendsafe.messaging.v1 import sender_service_pb2 as pb
from services.messaging.domain.receipts import InboundInput
from services.messaging.domain.records import BODY_RECORD
from svckit.app import App
from svckit.envelope import aad_for
from svckit.rpcstatus import error_reason
from tests.conftest import channel_as
from tests.integration.messaging.conftest import Messaging, principal_md
from tests.support import CertBundle

WRITER = ("senders.read", "senders.write", "sms.send", "sms.read")
HANDSET = "+61412555123"  # an own number (valid AU mobile, priced)
STRANGER = "+61487001002"


def _acct() -> int:
    return 7000 + uuid.uuid4().int % 900


async def _refused(call: Any, code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    assert error_reason(err.value) == reason, err.value.details()


async def _send_from(ch: grpc.aio.Channel, account: int, sender: str) -> str:
    stub = messaging_service_pb2_grpc.MessagingServiceStub(ch)
    got = await stub.SendSms(messaging_service_pb2.SendSmsRequest(messages=[sms_pb2.OutboundSms(  # type: ignore[attr-defined]
        to="+61412345678", body="hello", sender=sender)]), metadata=principal_md(account, *WRITER))
    return str(got.messages[0].status)


async def _actions(audit_app: App, account: int) -> list[str]:
    rows = await audit_app.extras["pool"].fetch("SELECT body FROM events ORDER BY sequence")
    evs = [event_pb2.Event.FromString(bytes(r["body"])) for r in rows]
    return [e.action for e in evs if e.action.startswith("messaging.sender.") and e.actor.account_id == account]


async def test_dedicated_numbers_are_bought_sent_from_and_released(messaging: Messaging, certs: CertBundle,
                                                                  audit_app: App) -> None:
    a, b = _acct(), _acct() + 1000
    number = f"+614800{uuid.uuid4().int % 100000:05d}"
    async with (channel_as(certs, "gateway", messaging.api.port, "messaging") as gw,
                channel_as(certs, "ops", messaging.api.port, "messaging") as ops):
        stub, admin = sender_service_pb2_grpc.SenderServiceStub(gw), sender_service_pb2_grpc.SenderServiceStub(ops)
        row = pb.InventoryNumber(number=number, country="AU", capabilities=["sms"], price_monthly="20.71")
        # Only the operator loads the inventory; a bad row refuses the whole load.
        await _refused(stub.LoadNumberInventory(pb.LoadNumberInventoryRequest(numbers=[row])),
                       grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED")
        await _refused(admin.LoadNumberInventory(pb.LoadNumberInventoryRequest(numbers=[
            row, pb.InventoryNumber(number="12", country="AU")])), grpc.StatusCode.INVALID_ARGUMENT,
            "INVENTORY_INVALID")
        assert await messaging.pool.fetchval("SELECT count(*) FROM number_inventory WHERE number = $1", number) == 0
        loaded = await admin.LoadNumberInventory(pb.LoadNumberInventoryRequest(numbers=[row]))
        assert (loaded.added, loaded.updated) == (1, 0)

        me, them = principal_md(a, *WRITER), principal_md(b, *WRITER)
        found = await stub.SearchNumbers(pb.SearchNumbersRequest(country="AU", limit=100), metadata=me)
        assert number in [n.dedicated_number for n in found.data] and found.total >= 1
        # An sms.send-only key cannot buy a sender.
        await _refused(stub.BuyNumber(pb.BuyNumberRequest(dedicated_number=number),
                                      metadata=principal_md(a, "sms.send")),
                       grpc.StatusCode.PERMISSION_DENIED, "MISSING_PERMISSION")
        assert await _send_from(gw, a, number) == "INVALID_SENDER_ID"
        bought = await stub.BuyNumber(pb.BuyNumberRequest(dedicated_number=number), metadata=me)
        assert (bought.dedicated_number, bought.price_monthly) == (number, "20.7100")
        await _refused(stub.BuyNumber(pb.BuyNumberRequest(dedicated_number=number), metadata=them),
                       grpc.StatusCode.FAILED_PRECONDITION, "NUMBER_NOT_AVAILABLE")
        assert number not in [n.dedicated_number for n in (await stub.SearchNumbers(
            pb.SearchNumbersRequest(country="AU", limit=100), metadata=them)).data]
        mine = await stub.ListNumbers(pb.ListNumbersRequest(), metadata=me)
        assert [n.dedicated_number for n in mine.data] == [number] and mine.total == 1
        assert (await stub.ListNumbers(pb.ListNumbersRequest(), metadata=them)).total == 0

        # Sends: from the number (any spelling) by its holder; never by another account.
        assert await _send_from(gw, a, number) == "SUCCESS"
        assert await _send_from(gw, a, number.lstrip("+")) == "SUCCESS"
        assert await _send_from(gw, b, number) == "INVALID_SENDER_ID"
        assert await messaging.pool.fetchval("SELECT count(*) FROM messages WHERE account_id = $1", b) == 0

        await _refused(stub.ReleaseNumber(pb.ReleaseNumberRequest(dedicated_number=number), metadata=them),
                       grpc.StatusCode.NOT_FOUND, "SENDER_NOT_FOUND")
        released = await stub.ReleaseNumber(pb.ReleaseNumberRequest(dedicated_number=number), metadata=me)
        assert released.number.dedicated_number == number
        assert await _send_from(gw, a, number) == "INVALID_SENDER_ID"  # at once: nothing cached
        again = await stub.BuyNumber(pb.BuyNumberRequest(dedicated_number=number), metadata=them)  # back on sale
        assert again.dedicated_number == number and await _send_from(gw, b, number) == "SUCCESS"
    acts = await _actions(audit_app, a)
    assert acts == ["messaging.sender.number_bought", "messaging.sender.activated", "messaging.sender.number_released"]


async def _code(m: Messaging, account: int) -> str:
    """What the handset got: the newest verification message's body (the API never shows it)."""
    row = await m.pool.fetchrow("SELECT id, body_ct FROM messages WHERE account_id = $1 AND cause ="
                                " 'destination_verification' ORDER BY create_time DESC LIMIT 1", account)
    mid = str(row["id"]).upper()
    body = await m.envelope.decrypt(account, aad_for(account, BODY_RECORD, mid), bytes(row["body_ct"]))
    return body.decode()[-6:]


async def test_an_own_number_is_verified_with_the_code_sent_to_it_and_held_by_one_account(
        messaging: Messaging, certs: CertBundle, audit_app: App) -> None:
    a, b = _acct(), _acct() + 1000
    me, them = principal_md(a, *WRITER), principal_md(b, *WRITER)
    async with channel_as(certs, "gateway", messaging.api.port, "messaging") as gw:
        stub = sender_service_pb2_grpc.SenderServiceStub(gw)
        await _refused(stub.RequestOwnNumberVerification(pb.RequestOwnNumberVerificationRequest(
            phone_number="not a number"), metadata=me), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SENDER_NUMBER")
        started = (await stub.RequestOwnNumberVerification(pb.RequestOwnNumberVerificationRequest(
            phone_number="0412 555 123", country="AU", label="my mobile"), metadata=me)).verification
        assert started.status == "PENDING" and started.remaining_attempts == 5
        code = await _code(messaging, a)
        # The code's SMS is the customer's own send (priced); its body never shows in history.
        assert await messaging.pool.fetchval(
            "SELECT price FROM messages WHERE account_id = $1 AND cause = 'destination_verification'", a) > 0
        listed = (await stub.ListOwnNumbers(pb.ListOwnNumbersRequest(), metadata=me)).own_numbers
        assert [(n.status, n.phone_number, n.label) for n in listed] == [("PENDING", "+61******123", "my mobile")]
        assert await _send_from(gw, a, HANDSET) == "INVALID_SENDER_ID"  # not before the code is entered

        verify = stub.VerifyOwnNumber
        await _refused(verify(pb.VerifyOwnNumberRequest(verification_id=started.id, code="12ab"), metadata=me),
                       grpc.StatusCode.INVALID_ARGUMENT, "SENDER_CODE_INVALID")
        wrong = "000000" if code != "000000" else "111111"
        await _refused(verify(pb.VerifyOwnNumberRequest(verification_id=started.id, code=wrong), metadata=me),
                       grpc.StatusCode.INVALID_ARGUMENT, "SENDER_CODE_INVALID")
        await _refused(verify(pb.VerifyOwnNumberRequest(verification_id=started.id, code=code), metadata=them),
                       grpc.StatusCode.NOT_FOUND, "SENDER_NOT_FOUND")  # another account's verification
        done = (await verify(pb.VerifyOwnNumberRequest(verification_id=started.id, code=code),
                             metadata=me)).verification
        assert done.status == "APPROVED" and done.own_number_id == started.own_number_id
        await _refused(verify(pb.VerifyOwnNumberRequest(verification_id=started.id, code=code), metadata=me),
                       grpc.StatusCode.FAILED_PRECONDITION, "SENDER_CODE_EXPIRED")  # used up
        assert await _send_from(gw, a, HANDSET) == "SUCCESS"
        assert await _send_from(gw, b, HANDSET) == "INVALID_SENDER_ID"

        await _refused(stub.RequestOwnNumberVerification(pb.RequestOwnNumberVerificationRequest(
            phone_number=HANDSET), metadata=me), grpc.StatusCode.FAILED_PRECONDITION, "SENDER_ALREADY_ACTIVE")
        # Held by one account at a time: another cannot even get a code sent.
        await _refused(stub.RequestOwnNumberVerification(pb.RequestOwnNumberVerificationRequest(
            phone_number=HANDSET), metadata=them), grpc.StatusCode.FAILED_PRECONDITION, "SENDER_NUMBER_TAKEN")
        assert await messaging.pool.fetchval("SELECT count(*) FROM messages WHERE account_id = $1", b) == 0
        # Stored only sealed and as keyed hashes.
        row = await messaging.pool.fetchrow("SELECT * FROM sender_identities WHERE account_id = $1", a)
        assert row["value"] is None and HANDSET[1:].encode() not in bytes(row["value_ct"])
        assert HANDSET[3:] not in str(dict(row))

        # A reply from a stranger to the verified number lands in its account.
        await messaging.service.replies.receive([InboundInput("smpp", "mo-1", STRANGER, HANDSET[1:], "hi", "")])
        assert await messaging.pool.fetchval("SELECT count(*) FROM inbound_messages WHERE account_id = $1", a) == 1

        # Deleted: no longer a sender, and the other account may verify it now.
        gone = (await stub.DeleteOwnNumber(pb.DeleteOwnNumberRequest(own_number_id=started.own_number_id),
                                           metadata=me)).own_number
        assert gone.id == started.own_number_id and await _send_from(gw, a, HANDSET) == "INVALID_SENDER_ID"
        await _refused(stub.GetOwnNumber(pb.GetOwnNumberRequest(own_number_id=started.own_number_id), metadata=me),
                       grpc.StatusCode.NOT_FOUND, "SENDER_NOT_FOUND")
        theirs = (await stub.RequestOwnNumberVerification(pb.RequestOwnNumberVerificationRequest(
            phone_number=HANDSET), metadata=them)).verification
        assert theirs.status == "PENDING"
    acts = await _actions(audit_app, a)
    assert acts == ["messaging.sender.code_sent", "messaging.sender.verified", "messaging.sender.activated",
                    "messaging.sender.own_number_deleted"]
    events = await audit_app.extras["pool"].fetch("SELECT body FROM events")
    assert all(HANDSET[3:] not in str(r["body"]) for r in events)


async def test_codes_are_limited_expire_and_allow_five_attempts(messaging: Messaging, certs: CertBundle) -> None:
    number = f"+614125{uuid.uuid4().int % 100000:05d}"
    accounts = [_acct() + 1000 * k for k in range(4)]
    async with channel_as(certs, "gateway", messaging.api.port, "messaging") as gw:
        stub = sender_service_pb2_grpc.SenderServiceStub(gw)

        async def start(account: int) -> Any:
            return (await stub.RequestOwnNumberVerification(pb.RequestOwnNumberVerificationRequest(
                phone_number=number), metadata=principal_md(account, *WRITER))).verification

        first = await start(accounts[0])
        await start(accounts[1])
        await start(accounts[2])
        # A number gets at most 3 codes an hour, whichever accounts ask (no SMS bombing through verification).
        await _refused(start(accounts[3]), grpc.StatusCode.RESOURCE_EXHAUSTED, "SENDER_CODES_EXCEEDED")
        assert await messaging.pool.fetchval("SELECT count(*) FROM messages WHERE account_id = $1", accounts[3]) == 0
        me = principal_md(accounts[0], *WRITER)
        for _ in range(5):
            await _refused(stub.VerifyOwnNumber(pb.VerifyOwnNumberRequest(verification_id=first.id, code="999999"),
                                                metadata=me), grpc.StatusCode.INVALID_ARGUMENT, "SENDER_CODE_INVALID")
        await _refused(stub.VerifyOwnNumber(pb.VerifyOwnNumberRequest(
            verification_id=first.id, code=await _code(messaging, accounts[0])), metadata=me),
            grpc.StatusCode.RESOURCE_EXHAUSTED, "SENDER_ATTEMPTS_EXCEEDED")
        second = principal_md(accounts[1], *WRITER)
        v = (await stub.ListOwnNumbers(pb.ListOwnNumbersRequest(), metadata=second)).own_numbers[0]
        await messaging.pool.execute("UPDATE number_verifications SET expire_time = now() - interval '1 second'"
                                     " WHERE identity_id = $1::uuid", v.id)
        vid = await messaging.pool.fetchval("SELECT id::text FROM number_verifications WHERE identity_id = $1::uuid",
                                            v.id)
        await _refused(stub.VerifyOwnNumber(pb.VerifyOwnNumberRequest(
            verification_id=vid, code=await _code(messaging, accounts[1])), metadata=second),
            grpc.StatusCode.FAILED_PRECONDITION, "SENDER_CODE_EXPIRED")
        assert await messaging.pool.fetchval(
            "SELECT count(*) FROM sender_identities WHERE value_hash = (SELECT value_hash FROM sender_identities"
            " WHERE id = $1::uuid) AND state = 'active'", v.id) == 0
