"""Fixtures for the audit integration tests: audit services with logs of their own, a local HTTPS receiver
(for alert webhooks and SIEM forwarding), a stand-in for messaging's NotificationService over real mTLS,
and helpers to call the service as the gateway with a principal."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
import pytest
from aiohttp import web

from sendsafe.audit.v1 import audit_service_pb2, audit_service_pb2_grpc, event_pb2
from sendsafe.context.v1 import principal_pb2
from sendsafe.messaging.v1 import notification_service_pb2 as npb
from sendsafe.messaging.v1 import notification_service_pb2_grpc
from services.audit.config import Settings
from svckit.app import App
from svckit.audit import new_event
from svckit.rpcstatus import error_reason as reason_of  # noqa: F401 - re-exported for this package's tests
from svckit.server import start_server
from tests.conftest import channel_as
from tests.support import CertBundle, NewDatabase

PRINCIPAL_KEY = "x-sendsafe-principal-bin"
SIGNING_SEED = "11" * 32
WEBHOOK_KEY = "22" * 32


def principal(account_id: int, *perms: str, user_id: int = 7, staff: bool = False,
              address: str = "203.0.113.10", api_key_id: str = "",
              limits: principal_pb2.SendLimits | None = None) -> tuple[tuple[str, bytes], ...]:
    p = principal_pb2.Principal(account_id=account_id, user_id=user_id, permissions=list(perms or ("audit.read",)),
                                request_id="req-1", client_address=address, staff=staff, api_key_id=api_key_id,
                                send_limits=limits)
    return ((PRINCIPAL_KEY, p.SerializeToString()),)




def event(account_id: int, action: str = "test.action", *, outcome: int = event_pb2.OUTCOME_SUCCESS,
          address: str = "", details: dict[str, str] | None = None, **fields: Any) -> event_pb2.Event:
    ev = new_event("gateway", action, outcome=outcome, account_id=account_id, details=details)
    ev.actor.type, ev.actor.id = "user", "7"
    if address:
        ev.source.client_address = address
    for name, value in fields.items():
        setattr(ev, name, value)
    return ev


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll observable state until `check()` is truthy; fail after `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Audit:
    """An audit service with a database of its own, and ways to call it."""

    app: App
    certs: CertBundle
    dsn: str
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.app.port

    def stub(self, caller: str = "gateway") -> audit_service_pb2_grpc.AuditServiceStub:
        ch = channel_as(self.certs, caller, self.app.port, "audit")
        self.channels.append(ch)
        return audit_service_pb2_grpc.AuditServiceStub(ch)

    async def append(
        self, *events: event_pb2.Event, caller: str = "messaging"
    ) -> audit_service_pb2.AppendEventsResponse:
        return await self.stub(caller).AppendEvents(audit_service_pb2.AppendEventsRequest(events=list(events)))

    async def admin(self) -> asyncpg.Connection:
        """A superuser connection to the log's database (what an attacker with the database would have)."""
        return await asyncpg.connect(self.dsn)

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()


AuditFactory = Callable[..., Awaitable[Audit]]


@pytest.fixture
async def make_audit(certs: CertBundle, new_database: NewDatabase) -> AsyncIterator[AuditFactory]:
    """Factory: `await make_audit(**settings)` -> an audit service on a fresh database (or on `dsn`)."""
    from services.audit.app import build

    made: list[Audit] = []

    async def make(dsn: str | None = None, **overrides: Any) -> Audit:
        tls = certs.tls("audit")
        url = dsn or await new_database("audit_it")
        settings: dict[str, Any] = dict(
            tls_cert_file=tls.cert, tls_key_file=tls.key, tls_ca_file=tls.ca, database_url=url,
            signing_key=SIGNING_SEED, webhook_key=WEBHOOK_KEY, poll_seconds=0.2, retry_base_seconds=0.05,
            webhook_allow_private=True, webhook_ca_file=certs.public_ca, verify_interval_seconds=0,
            checkpoint_min_interval_seconds=0, db_pool_size=4,
        )
        settings.update(overrides)
        audit = Audit(await build(Settings(**settings)), certs, url)
        made.append(audit)
        return audit

    yield make
    for a in made:
        await a.close()
        await a.app.stop()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A local HTTPS endpoint (the test public CA's localhost certificate) that records what it gets."""

    port: int
    received: list[Received] = field(default_factory=list)
    attempt_ids: list[str] = field(default_factory=list)  # webhook-id of every POST, failed ones too
    fail_next: int = 0
    status_when_failing: int = 503

    def url(self, path: str = "/hook") -> str:
        return f"https://localhost:{self.port}{path}"


@pytest.fixture
async def receiver(certs: CertBundle) -> AsyncIterator[Receiver]:
    state = Receiver(0)

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        state.attempt_ids.append(request.headers.get("webhook-id", ""))
        if state.fail_next > 0:
            state.fail_next -= 1
            return web.Response(status=state.status_when_failing)
        state.received.append(Received(request.path, dict(request.headers), body))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs.https_cert, certs.https_key)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    state.port = int(runner.addresses[0][1])
    yield state
    await runner.cleanup()


@dataclass
class FakeNotifications(notification_service_pb2_grpc.NotificationServiceServicer):
    """Stands in for messaging's NotificationService (behind the real mTLS guard, with messaging's cert)."""

    requests: list[npb.SendNotificationRequest] = field(default_factory=list)
    verified: set[str] = field(default_factory=set)  # destinations the account "verified"

    async def CheckDestination(
        self, request: npb.CheckDestinationRequest, context: Any
    ) -> npb.CheckDestinationResponse:
        return npb.CheckDestinationResponse(verified=request.to in self.verified)

    async def SendNotification(
        self, request: npb.SendNotificationRequest, context: Any
    ) -> npb.SendNotificationResponse:
        from svckit.errors import FailedPrecondition

        if request.channel not in (npb.NOTIFICATION_CHANNEL_SMS, npb.NOTIFICATION_CHANNEL_EMAIL):
            raise FailedPrecondition("SMS or EMAIL", reason="CHANNEL_NOT_AVAILABLE")  # messaging sends both (issue 14)
        self.requests.append(request)
        return npb.SendNotificationResponse(message_id=f"M{len(self.requests)}")


@pytest.fixture
async def fake_messaging(certs: CertBundle) -> AsyncIterator[tuple[FakeNotifications, str]]:
    servicer = FakeNotifications()
    tls = certs.tls("messaging")
    server = await start_server(
        listen="127.0.0.1:0", tls=tls,
        register=lambda s: notification_service_pb2_grpc.add_NotificationServiceServicer_to_server(servicer, s),
        service_names=["sendsafe.messaging.v1.NotificationService"],
    )
    yield servicer, f"127.0.0.1:{server.port}"
    await server.stop(0)
