"""Calls carried together in BatchService.CallBatch (svckit.batching) against the real messaging server over
mTLS: each call is checked, run and answered exactly as if it had come alone, and one call's failure never
fails the others."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from sendsafe.audit.v1 import event_pb2
from sendsafe.batch.v1 import batch_service_pb2 as bpb
from sendsafe.batch.v1 import batch_service_pb2_grpc
from sendsafe.messaging.v1 import messaging_service_pb2 as pb
from svckit.app import App
from svckit.batching import Coalescer, result_or_raise
from svckit.rpcstatus import error_reason
from tests.conftest import channel_as
from tests.integration.messaging.conftest import Messaging, principal_md
from tests.integration.messaging.test_api import REAL_NUMBER, count_rows, eventually, sms
from tests.support import CertBundle

SEND = "/sendsafe.messaging.v1.MessagingService/SendSms"
HISTORY = "/sendsafe.messaging.v1.MessagingService/ListSmsHistory"


def call(method: str, request: bytes, md: tuple[tuple[str, bytes | str], ...], rid: str) -> bpb.Call:
    entries = [bpb.Metadatum(key=k, value=v if isinstance(v, bytes) else v.encode()) for k, v in md]
    entries.append(bpb.Metadatum(key="x-request-id", value=rid.encode()))
    return bpb.Call(method=method, request=request, metadata=entries)


def send_request(body: str) -> bytes:
    return pb.SendSmsRequest(messages=[sms(REAL_NUMBER, body)]).SerializeToString()


def failure(result: bpb.CallResult) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        result_or_raise(result)
    return err.value.code(), error_reason(err.value, consistent=False)


async def test_each_call_in_a_batch_is_checked_and_answered_alone(
    messaging: Messaging, certs: CertBundle, audit_app: App
) -> None:
    ch = channel_as(certs, "gateway", messaging.api.port, "messaging")
    async with ch:
        stub = batch_service_pb2_grpc.BatchServiceStub(ch)
        reply = await stub.CallBatch(bpb.CallBatchRequest(calls=[
            call(SEND, send_request("first"), principal_md(811), "req-a"),
            call(SEND, send_request("no permission"), principal_md(811, "sms.read"), "req-b"),  # weakest key
            call(HISTORY, pb.ListSmsHistoryRequest().SerializeToString(), principal_md(811), "req-c"),
            call("/sendsafe.messaging.v1.MessagingService/Nope", b"", principal_md(811), "req-d"),
            call(SEND, b"\xff\xff\xff", principal_md(811), "req-e"),
            call(SEND, send_request("second"), principal_md(812), "req-f"),
        ]))
    assert len(reply.results) == 6
    first = pb.SendSmsResponse.FromString(result_or_raise(reply.results[0]))
    assert first.queued_count == 1 and first.messages[0].status == "SUCCESS" and first.messages[0].user_id == 811
    assert failure(reply.results[1]) == (grpc.StatusCode.PERMISSION_DENIED, "MISSING_PERMISSION")
    # Only RPCs that declare `coalesce` may travel in a batch: a read is refused even with the permission.
    assert failure(reply.results[2]) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_COALESCIBLE")
    assert failure(reply.results[3])[0] == grpc.StatusCode.UNIMPLEMENTED
    assert failure(reply.results[4])[0] == grpc.StatusCode.INVALID_ARGUMENT
    last = pb.SendSmsResponse.FromString(result_or_raise(reply.results[5]))
    assert last.messages[0].user_id == 812  # its own principal, not the batch neighbour's
    # Exactly the two permitted sends were stored, each under its own account.
    rows = await messaging.pool.fetch("SELECT account_id FROM messages ORDER BY account_id")
    assert [r["account_id"] for r in rows] == [811, 812]

    # Each refusal is audited as that call's own denial (rpc.denied), with its own request id and reason.
    store = audit_app.extras["service"]._store  # type: ignore[attr-defined]

    async def denials() -> dict[str, str]:
        rows = await store.chain_rows(0, 1_000_000)
        events = [event_pb2.Event.FromString(r[1]) for r in rows]
        return {e.request_id: e.error_reason for e in events
                if e.action == "rpc.denied" and e.request_id in {"req-b", "req-c"}}

    async def both() -> bool:
        return len(await denials()) == 2

    await eventually(both, what="both denials audited")
    assert await denials() == {"req-b": "MISSING_PERMISSION", "req-c": "NOT_COALESCIBLE"}


async def test_a_batch_from_a_service_that_is_not_the_gateway_is_refused_whole(
    messaging: Messaging, certs: CertBundle
) -> None:
    ch = channel_as(certs, "audit", messaging.api.port, "messaging")
    async with ch:
        stub = batch_service_pb2_grpc.BatchServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CallBatch(bpb.CallBatchRequest(calls=[call(SEND, send_request("x"), principal_md(813), "r")]))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(err.value) == "CALLER_NOT_ALLOWED"
    assert await count_rows(messaging, "messages") == 0


async def test_the_coalescer_carries_concurrent_sends_together_and_keeps_idempotency(
    messaging: Messaging, certs: CertBundle
) -> None:
    """Concurrent calls leave in fewer batch calls than calls; two retries of one idempotent request in the same
    batch store one message and get the same answer."""
    ch = channel_as(certs, "gateway", messaging.api.port, "messaging")
    async with ch:
        coalescer = Coalescer(ch, timeout=10.0, max_batch=16, max_in_flight=1)
        sent: list[int] = []
        original = coalescer._call

        async def counting(request: bpb.CallBatchRequest, **kw: object) -> bpb.CallBatchResponse:
            sent.append(len(request.calls))
            return await original(request, **kw)  # type: ignore[no-any-return]

        coalescer._call = counting  # type: ignore[method-assign]
        same = principal_md(814, idempotency_key="retry-1")
        raws = await asyncio.gather(
            *(coalescer.call(SEND, send_request(f"m{i}"), principal_md(814)) for i in range(20)),
            coalescer.call(SEND, send_request("once"), same), coalescer.call(SEND, send_request("once"), same),
        )
    assert sum(sent) == 22 and len(sent) < 22 and max(sent) <= 16
    answers = [pb.SendSmsResponse.FromString(raw) for raw in raws]
    assert all(a.messages[0].status == "SUCCESS" for a in answers)
    assert answers[-1].messages[0].message_id == answers[-2].messages[0].message_id
    assert await count_rows(messaging, "messages") == 21
