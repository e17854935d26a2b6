"""The audit service over real mTLS against a real PostgreSQL database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest

from sendsafe.audit.v1 import audit_service_pb2, audit_service_pb2_grpc, event_pb2
from sendsafe.context.v1 import principal_pb2
from services.audit.app import build
from services.audit.config import Settings
from svckit.app import App
from svckit.audit import new_event
from svckit.rpc import secure_channel
from svckit.rpcstatus import error_reason as _reason
from svckit.tls import TlsFiles
from tests.conftest import channel_as, foreign_tls
from tests.support import CertBundle, NewDatabase


def _principal(account_id: int, *perms: str) -> tuple[tuple[str, bytes], ...]:
    p = principal_pb2.Principal(account_id=account_id, user_id=7, permissions=list(perms), request_id="r1")
    return (("x-sendsafe-principal-bin", p.SerializeToString()),)


def _event(account_id: int, action: str = "test.action") -> event_pb2.Event:
    ev = new_event("messaging", action, account_id=account_id)
    return ev


async def test_append_and_list_round_trip(audit_app: App, certs: CertBundle) -> None:
    async with channel_as(certs, "messaging", audit_app.port, "audit") as ch:
        stub = audit_service_pb2_grpc.AuditServiceStub(ch)
        evs = [_event(4242, f"a{i}") for i in range(3)]
        resp = await stub.AppendEvents(audit_service_pb2.AppendEventsRequest(events=evs))
        assert resp.last_sequence - resp.first_sequence == 2
        # A retry of the same batch stores nothing new.
        again = await stub.AppendEvents(audit_service_pb2.AppendEventsRequest(events=evs))
        assert (again.first_sequence, again.last_sequence) == (0, 0)
    async with channel_as(certs, "gateway", audit_app.port, "audit") as ch:
        stub = audit_service_pb2_grpc.AuditServiceStub(ch)
        listed = await stub.ListEvents(
            audit_service_pb2.ListEventsRequest(page_size=2), metadata=_principal(4242, "audit.read")
        )
        assert [e.action for e in listed.events] == ["a0", "a1"]
        assert listed.next_page_token
        rest = await stub.ListEvents(
            audit_service_pb2.ListEventsRequest(page_size=2, page_token=listed.next_page_token),
            metadata=_principal(4242, "audit.read"),
        )
        assert [e.action for e in rest.events] == ["a2"]
        # Each event carries its place in the log and in its account's feed, and its RFC 9162 leaf hash.
        assert [e.account_sequence for e in (*listed.events, *rest.events)] == [1, 2, 3]
        assert rest.events[0].sequence == listed.events[1].sequence + 1
        assert len(bytes.fromhex(rest.events[0].hash)) == 32
        other = await stub.ListEvents(audit_service_pb2.ListEventsRequest(), metadata=_principal(999, "audit.read"))
        assert all(e.actor.account_id == 999 for e in other.events)


async def test_caller_not_allowed_is_refused_and_audited(audit_app: App, certs: CertBundle) -> None:
    # keys may append, but ListEvents is only for the gateway.
    async with channel_as(certs, "keys", audit_app.port, "audit") as ch:
        stub = audit_service_pb2_grpc.AuditServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListEvents(audit_service_pb2.ListEventsRequest(), metadata=_principal(1, "audit.read"))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert _reason(info.value) == "CALLER_NOT_ALLOWED"
    service = audit_app.extras["service"]
    rows = await service._store.chain_rows(0, 100_000)  # type: ignore[attr-defined]
    denied = [event_pb2.Event.FromString(r[1]) for r in rows]
    assert any(e.action == "rpc.denied" and e.actor.id == "keys" and e.outcome == event_pb2.OUTCOME_DENIED
               for e in denied)


async def test_principal_without_permission_is_refused(audit_app: App, certs: CertBundle) -> None:
    async with channel_as(certs, "gateway", audit_app.port, "audit") as ch:
        stub = audit_service_pb2_grpc.AuditServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListEvents(audit_service_pb2.ListEventsRequest(), metadata=_principal(1, "sms.send"))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert _reason(info.value) == "MISSING_PERMISSION"


async def test_every_call_is_checked_not_only_the_first_of_its_method(audit_app: App, certs: CertBundle) -> None:
    # The guard builds each method's checked handler once; the check itself must still run on every call.
    request = audit_service_pb2.ListEventsRequest()
    async with channel_as(certs, "gateway", audit_app.port, "audit") as gw, \
            channel_as(certs, "keys", audit_app.port, "audit") as keys:
        as_gateway = audit_service_pb2_grpc.AuditServiceStub(gw)
        as_keys = audit_service_pb2_grpc.AuditServiceStub(keys)
        await as_gateway.ListEvents(request, metadata=_principal(31, "audit.read"))
        for stub, perms, reason in ((as_keys, "audit.read", "CALLER_NOT_ALLOWED"),
                                    (as_gateway, "sms.send", "MISSING_PERMISSION")):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ListEvents(request, metadata=_principal(31, perms))
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert _reason(info.value) == reason
        await as_gateway.ListEvents(request, metadata=_principal(31, "audit.read"))


async def test_principal_from_non_gateway_is_ignored(audit_app: App, certs: CertBundle) -> None:
    # ops may call AppendEvents; a principal it sends is not trusted, so permission checks see none.
    async with channel_as(certs, "ops", audit_app.port, "audit") as ch:
        stub = audit_service_pb2_grpc.AuditServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListEvents(audit_service_pb2.ListEventsRequest(), metadata=_principal(1, "audit.read"))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_no_client_certificate_is_refused(audit_app: App, certs: CertBundle) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=certs.tls("audit").ca.read_bytes())
    async with grpc.aio.secure_channel(
        f"127.0.0.1:{audit_app.port}", creds, options=[("grpc.ssl_target_name_override", "audit")]
    ) as ch:
        stub = audit_service_pb2_grpc.AuditServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.AppendEvents(audit_service_pb2.AppendEventsRequest(events=[_event(1)]), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_certificate_from_another_ca_is_refused(audit_app: App, certs: CertBundle, tmp_path: object) -> None:
    bad = foreign_tls(tmp_path, "gateway")
    tls = TlsFiles(bad.cert, bad.key, certs.tls("audit").ca)  # trusts the real CA, presents a foreign cert
    async with secure_channel(f"127.0.0.1:{audit_app.port}", tls, server_name="audit") as ch:
        stub = audit_service_pb2_grpc.AuditServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.AppendEvents(audit_service_pb2.AppendEventsRequest(events=[_event(1)]), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_invalid_event_is_rejected_whole(audit_app: App, certs: CertBundle) -> None:
    async with channel_as(certs, "messaging", audit_app.port, "audit") as ch:
        stub = audit_service_pb2_grpc.AuditServiceStub(ch)
        good, bad = _event(77, "ok"), _event(77, "")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.AppendEvents(audit_service_pb2.AppendEventsRequest(events=[good, bad]))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _reason(info.value) == "EVENT_INVALID"
    service = audit_app.extras["service"]
    rows = await service._store.chain_rows(0, 100_000)  # type: ignore[attr-defined]
    assert good.event_id not in {event_pb2.Event.FromString(r[1]).event_id for r in rows}


@pytest.fixture
async def private_audit_app(certs: CertBundle, new_database: NewDatabase) -> AsyncIterator[App]:
    """An audit service with a log of its own: tampering with it must not disturb other tests."""
    tls = certs.tls("audit")
    url = await new_database("audit_tamper")
    app = await build(Settings(tls_cert_file=tls.cert, tls_key_file=tls.key, tls_ca_file=tls.ca, database_url=url))
    app.extras["database_url"] = url
    yield app
    await app.stop()


async def test_events_are_immutable_for_the_service_and_for_the_owner(
    private_audit_app: App, certs: CertBundle
) -> None:
    audit_app = private_audit_app
    async with channel_as(certs, "identity", audit_app.port, "audit") as ch:
        stub = audit_service_pb2_grpc.AuditServiceStub(ch)
        resp = await stub.AppendEvents(audit_service_pb2.AppendEventsRequest(events=[_event(5, "x"), _event(5, "y")]))
    service = audit_app.extras["service"]
    assert (await service.verify_log()).ok  # type: ignore[attr-defined]
    pool: asyncpg.Pool = audit_app.extras["pool"]  # type: ignore[assignment]
    async with pool.acquire() as conn:
        # The service's own connections work as the writer role: no UPDATE/DELETE grants at all.
        assert await conn.fetchval("SELECT current_user") == "sendsafe_audit_writer"
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE events SET action = 'z' WHERE sequence = $1", resp.first_sequence)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM events WHERE sequence = $1", resp.first_sequence)
        for table in ("merkle_nodes", "checkpoints", "alerts"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(f"DELETE FROM {table}")
    # The database owner (a superuser here) has the grants, and the triggers still refuse.
    owner = await asyncpg.connect(str(audit_app.extras["database_url"]))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await owner.execute("UPDATE events SET action = 'z' WHERE sequence = $1", resp.first_sequence)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await owner.execute("DELETE FROM events WHERE sequence = $1", resp.first_sequence)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await owner.execute("TRUNCATE events")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await owner.execute("DELETE FROM merkle_nodes")
    finally:
        await owner.close()
    assert (await service.verify_log()).ok  # type: ignore[attr-defined]
