"""Default senders over the real messaging API (mTLS), real PostgreSQL, keys and audit (issue 21): setting one
refuses a sender that is not an active identity of the account (nothing stored), another account never sees or
changes it, a send with an empty `from` goes out from it, and after its deletion from the shared number again.
Its strategies are stored sealed; its audit events carry ids only."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest

from sendsafe.audit.v1 import event_pb2
from sendsafe.messaging.v1 import default_sender_service_pb2 as pb
from sendsafe.messaging.v1 import (
    default_sender_service_pb2_grpc,
    messaging_service_pb2,
    messaging_service_pb2_grpc,
    sms_pb2,
)
from svckit.app import App
from svckit.rpcstatus import error_reason
from tests.conftest import channel_as
from tests.integration.messaging.conftest import Messaging, principal_md
from tests.integration.messaging.senders_support import hold_number
from tests.support import CertBundle

WRITER = ("senders.read", "senders.write", "sms.send", "sms.read")
STRANGER = "+61487001003"  # no account of this test holds it


async def _refused(call: Any, code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    assert error_reason(err.value) == reason, err.value.details()


def _strategy(sender_type: str, sender_id: str) -> pb.DefaultSenderStrategyInput:
    return pb.DefaultSenderStrategyInput(sender_type=sender_type, sender_id=sender_id)


async def _sent_from(ch: grpc.aio.Channel, account: int) -> tuple[str, str]:
    stub = messaging_service_pb2_grpc.MessagingServiceStub(ch)
    got = await stub.SendSms(messaging_service_pb2.SendSmsRequest(messages=[sms_pb2.OutboundSms(  # type: ignore[attr-defined]
        to="+61412345678", body="hello")]), metadata=principal_md(account, *WRITER))
    return str(got.messages[0].status), got.messages[0].sender


async def test_default_senders_are_checked_private_and_used_by_sends(messaging: Messaging, certs: CertBundle,
                                                                     audit_app: App) -> None:
    a = 7000 + uuid.uuid4().int % 900
    b = a + 1000
    number = f"+614801{uuid.uuid4().int % 100000:05d}"
    await hold_number(messaging.pool, a, number)
    me, them = principal_md(a, *WRITER), principal_md(b, *WRITER)
    async with channel_as(certs, "gateway", messaging.api.port, "messaging") as gw:
        stub = default_sender_service_pb2_grpc.DefaultSenderServiceStub(gw)
        assert await _sent_from(gw, a) == ("SUCCESS", "")  # no default: the shared number

        # A sender that is not one of the account's active identities is refused; nothing is stored.
        await _refused(stub.CreateDefaultSender(pb.CreateDefaultSenderRequest(
            country_code="AU", default_sender_strategies=[_strategy("longcode", STRANGER)]), metadata=me),
            grpc.StatusCode.FAILED_PRECONDITION, "DEFAULT_SENDER_NOT_ACTIVE")
        # Another account cannot make this account's number its default either.
        await _refused(stub.CreateDefaultSender(pb.CreateDefaultSenderRequest(
            country_code="AU", default_sender_strategies=[_strategy("longcode", number)]), metadata=them),
            grpc.StatusCode.FAILED_PRECONDITION, "DEFAULT_SENDER_NOT_ACTIVE")
        await _refused(stub.CreateDefaultSender(pb.CreateDefaultSenderRequest(
            country_code="AU", default_sender_strategies=[_strategy("tollfree", number)]), metadata=me),
            grpc.StatusCode.INVALID_ARGUMENT, "INVALID_DEFAULT_SENDER")
        assert await messaging.pool.fetchval(
            "SELECT count(*) FROM default_senders WHERE account_id = ANY($1::bigint[])", [a, b]) == 0
        # A send-only key cannot set one.
        await _refused(stub.CreateDefaultSender(pb.CreateDefaultSenderRequest(
            country_code="AU", default_sender_strategies=[_strategy("longcode", number)]),
            metadata=principal_md(a, "sms.send")), grpc.StatusCode.PERMISSION_DENIED, "MISSING_PERMISSION")

        made = (await stub.CreateDefaultSender(pb.CreateDefaultSenderRequest(
            country_code="au", product_type="SMS", default_sender_strategies=[_strategy("longcode", number)]),
            metadata=me)).default_sender
        assert (made.country_code, made.subaccount_id, made.status) == ("AU", 0, "ENABLED")
        assert [(s.sender_id, s.priority) for s in made.default_sender_strategies] == [(number, 1)]
        await _refused(stub.CreateDefaultSender(pb.CreateDefaultSenderRequest(
            country_code="AU", default_sender_strategies=[_strategy("shared_longcode", "")]), metadata=me),
            grpc.StatusCode.ALREADY_EXISTS, "DEFAULT_SENDER_EXISTS")
        # Sealed at rest: the number is nowhere in the row.
        raw = await messaging.pool.fetchval("SELECT strategies_ct FROM default_senders WHERE id = $1",
                                            uuid.UUID(made.id))
        assert number.encode() not in bytes(raw) and number[1:].encode() not in bytes(raw)

        # Another account neither sees nor changes nor deletes it.
        assert not (await stub.ListDefaultSenders(pb.ListDefaultSendersRequest(), metadata=them)).data
        for call in (stub.GetDefaultSender(pb.GetDefaultSenderRequest(default_sender_id=made.id), metadata=them),
                     stub.UpdateDefaultSender(pb.UpdateDefaultSenderRequest(
                         default_sender_id=made.id, default_sender_strategies=[_strategy("shared_longcode", "")]),
                         metadata=them),
                     stub.DeleteDefaultSender(pb.DeleteDefaultSenderRequest(default_sender_id=made.id),
                                              metadata=them)):
            await _refused(call, grpc.StatusCode.NOT_FOUND, "DEFAULT_SENDER_NOT_FOUND")
        assert [d.id for d in (await stub.ListDefaultSenders(pb.ListDefaultSendersRequest(), metadata=me)).data] \
            == [made.id]

        # A send with an empty `from` goes out from the default; another account's sends are unaffected.
        assert await _sent_from(gw, a) == ("SUCCESS", number)
        assert await _sent_from(gw, b) == ("SUCCESS", "")

        # An update to a sender not active is refused and changes nothing.
        await _refused(stub.UpdateDefaultSender(pb.UpdateDefaultSenderRequest(
            default_sender_id=made.id, default_sender_strategies=[_strategy("own_number", STRANGER)]), metadata=me),
            grpc.StatusCode.FAILED_PRECONDITION, "DEFAULT_SENDER_NOT_ACTIVE")
        got = (await stub.GetDefaultSender(pb.GetDefaultSenderRequest(default_sender_id=made.id),
                                           metadata=me)).default_sender
        assert [s.sender_id for s in got.default_sender_strategies] == [number]

        await stub.DeleteDefaultSender(pb.DeleteDefaultSenderRequest(default_sender_id=made.id), metadata=me)
        assert await _sent_from(gw, a) == ("SUCCESS", "")  # the shared number again, at once (cache dropped)

    rows = await audit_app.extras["pool"].fetch("SELECT body FROM events ORDER BY sequence")
    evs = [event_pb2.Event.FromString(bytes(r["body"])) for r in rows]
    mine = [e for e in evs if e.action.startswith("messaging.sender.default_") and e.actor.account_id == a]
    assert [e.action for e in mine] == ["messaging.sender.default_set", "messaging.sender.default_deleted"]
    for e in mine:
        assert (e.resource.type, e.resource.id) == ("default_sender", made.id)
        assert number not in str(e) and number[1:] not in str(e)
