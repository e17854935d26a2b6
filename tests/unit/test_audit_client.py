"""The audit client batches, retries until stored, applies back-pressure, and fails closed."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from sendsafe.audit.v1 import audit_service_pb2, event_pb2
from svckit.audit import AuditClient, AuditUnavailable, new_event


class FlakyStub:
    """Fails while `down` is set; records every batch it accepts."""

    def __init__(self) -> None:
        self.down = False
        self.batches: list[list[str]] = []
        self.attempts = 0

    async def AppendEvents(self, request, timeout=None):  # type: ignore[no-untyped-def]
        self.attempts += 1
        if self.down:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())
        self.batches.append([e.event_id for e in request.events])
        return audit_service_pb2.AppendEventsResponse()


def _client(stub: FlakyStub, **kw: object) -> AuditClient:
    return AuditClient(None, stub=stub, linger=0, retry_cap=0.01, **kw)  # type: ignore[arg-type]


async def test_events_are_batched_and_all_stored() -> None:
    stub = FlakyStub()
    client = _client(stub, batch_size=50)
    events = [new_event("t", f"a{i}") for i in range(120)]
    for ev in events:
        await client.record(ev)
    client.start()
    await client.flush()
    stored = [i for b in stub.batches for i in b]
    assert stored == [e.event_id for e in events]
    assert max(len(b) for b in stub.batches) <= 50 and len(stub.batches) >= 3
    await client.close()


async def test_outage_loses_nothing() -> None:
    stub = FlakyStub()
    stub.down = True
    client = _client(stub)
    client.start()
    events = [new_event("t", f"b{i}") for i in range(10)]
    for ev in events:
        await client.record(ev)
    while stub.attempts < 3:  # the client keeps retrying while the service is down
        await asyncio.sleep(0)
    assert not stub.batches
    stub.down = False
    await client.flush()
    assert sorted(i for b in stub.batches for i in b) == sorted(e.event_id for e in events)
    await client.close()


async def test_full_buffer_applies_back_pressure() -> None:
    stub = FlakyStub()
    client = _client(stub, max_buffer=2)  # not started: nothing drains
    await client.record(new_event("t", "1"))
    await client.record(new_event("t", "2"))
    third = asyncio.create_task(client.record(new_event("t", "3")))
    await asyncio.sleep(0)
    assert not third.done()
    client.start()
    await third
    await client.flush()
    assert sum(len(b) for b in stub.batches) == 3
    await client.close()


async def test_strict_event_fails_closed_and_is_not_stored_later() -> None:
    stub = FlakyStub()
    client = _client(stub)  # not started, as if the audit service were unreachable
    ev = new_event("t", "privileged")
    with pytest.raises(AuditUnavailable):
        await client.record_strict(ev, timeout=0.05)
    client.start()
    await client.flush()
    assert all(ev.event_id not in b for b in stub.batches)
    await client.close()


async def test_strict_event_returns_once_stored() -> None:
    stub = FlakyStub()
    client = _client(stub)
    client.start()
    ev = new_event("t", "privileged")
    await client.record_strict(ev, timeout=5)
    assert [ev.event_id] in stub.batches
    await client.close()


class PickyStub(FlakyStub):
    """Refuses (INVALID_ARGUMENT) any batch that holds an event whose action is empty."""

    async def AppendEvents(self, request, timeout=None):  # type: ignore[no-untyped-def]
        self.attempts += 1
        if any(not e.action for e in request.events):
            raise grpc.aio.AioRpcError(grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), grpc.aio.Metadata())
        self.batches.append([e.event_id for e in request.events])
        return audit_service_pb2.AppendEventsResponse()


async def test_an_invalid_event_never_holds_up_the_others() -> None:
    stub = PickyStub()
    client = _client(stub, batch_size=64)
    good = [new_event("t", f"g{i}") for i in range(40)]
    bad = new_event("t", "")
    for ev in [*good[:17], bad, *good[17:]]:
        await client.record(ev)
    client.start()
    await client.flush()
    assert sorted(i for b in stub.batches for i in b) == sorted(e.event_id for e in good)
    assert client.refused == 1
    # A strict caller whose event is refused is told so: its action must not go ahead.
    with pytest.raises(AuditUnavailable):
        await client.record_strict(new_event("t", ""), timeout=2)
    await client.close()


def _in_call(privileged: bool) -> object:
    from sendsafe.context.v1 import principal_pb2
    from svckit import context as callctx

    p = principal_pb2.Principal(account_id=1, user_id=2, auth_method=principal_pb2.AUTH_METHOD_API_KEY)
    return callctx.current.set(callctx.CallContext("gateway", p, "req-1", privileged=privileged))


async def test_record_inside_a_privileged_call_waits_for_storage_and_fails_closed() -> None:
    """The guard marks a privileged RPC's context: `record` of its successful action is strict, so a use case
    cannot forget to fail closed. Outside one (or for a refused attempt) it only queues."""
    from svckit import context as callctx

    stub = FlakyStub()
    stub.down = True
    client = _client(stub, strict_timeout=0.1)
    client.start()
    token = _in_call(privileged=True)
    try:
        done = new_event("t", "settings.updated")
        with pytest.raises(AuditUnavailable):
            await client.record(done)
        await client.record(new_event("t", "settings.updated", outcome=event_pb2.OUTCOME_DENIED))  # queued
        stub.down = False
        stored = new_event("t", "settings.updated")
        await client.record(stored)  # returns only once stored
        assert any(stored.event_id in b for b in stub.batches)
    finally:
        callctx.current.reset(token)  # type: ignore[arg-type]
    token = _in_call(privileged=False)
    try:
        stub.down = True
        await asyncio.wait_for(client.record(new_event("t", "sms.read")), 1)  # queued, not waited for
    finally:
        callctx.current.reset(token)  # type: ignore[arg-type]
    stub.down = False
    await client.flush()
    assert all(done.event_id not in b for b in stub.batches), "a refused action's event was stored by a retry"
    await client.close()
