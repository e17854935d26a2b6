"""Fake backends and helpers for the gateway integration tests (fixtures are in conftest.py).

The real gateway (real TLS, real aiohttp, real grpc.aio mTLS channels) runs in front of these fakes.

The fakes implement the generated servicers minimally and run under `svckit.server.start_server`, so
the real Guard checks the gateway's client certificate, the RPC's allowed callers and the principal's
permission exactly as the real services do. Each fake records what it received (request, metadata,
principal) so tests can assert on what crossed the wire.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app import Gateway
from gateway.config import Settings
from sendsafe.audit.v1 import audit_service_pb2, audit_service_pb2_grpc, event_pb2
from sendsafe.context.v1 import principal_pb2
from sendsafe.identity.v1 import account_pb2, identity_service_pb2, identity_service_pb2_grpc
from sendsafe.keys.v1 import keys_service_pb2, keys_service_pb2_grpc
from sendsafe.messaging.v1 import messaging_service_pb2, messaging_service_pb2_grpc, sms_pb2
from svckit import context as callctx
from svckit.errors import InvalidArgument, NotFound, Unauthenticated
from svckit.server import RunningServer
from tests.support import CertBundle

ALICE_KEY = "ssk_test_alice_0123456789abcdef0123456789"
READER_KEY = "ssk_test_reader_0123456789abcdef012345678"
INACTIVE_KEY = "ssk_test_inactive_0123456789abcdef0123456"
ALL_PERMISSIONS = ["sms.send", "sms.read", "account.read", "audit.read"]
MAX_BODY = 64 * 1024


@dataclass
class Call:
    rpc: str
    request: Any
    metadata: list[tuple[str, Any]]
    principal: principal_pb2.Principal | None
    caller: str

    def meta(self, key: str) -> list[Any]:
        return [v for k, v in self.metadata if k == key]


@dataclass
class Recorder:
    calls: list[Call] = field(default_factory=list)

    def record(self, rpc: str, request: Any, context: grpc.aio.ServicerContext) -> Call:
        ctx = callctx.get()
        call = Call(
            rpc, request, list(context.invocation_metadata() or ()), ctx.principal if ctx else None,
            ctx.caller if ctx else "",
        )
        self.calls.append(call)
        return call

    def last(self, rpc: str) -> Call:
        return next(c for c in reversed(self.calls) if c.rpc == rpc)

    def count(self, rpc: str) -> int:
        return sum(1 for c in self.calls if c.rpc == rpc)


class FakeKeys(keys_service_pb2_grpc.KeysServiceServicer):
    KEYS = {
        ALICE_KEY: keys_service_pb2.VerifyApiKeyResponse(key_id="key_alice", account_id=42, user_id=7),
        READER_KEY: keys_service_pb2.VerifyApiKeyResponse(
            key_id="key_reader", account_id=42, user_id=7, scopes=["sms.read"]
        ),
        INACTIVE_KEY: keys_service_pb2.VerifyApiKeyResponse(key_id="key_bob", account_id=42, user_id=9),
    }

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    async def VerifyApiKey(self, request, context):  # type: ignore[no-untyped-def]
        self.rec.record("VerifyApiKey", request, context)
        found = self.KEYS.get(request.api_key)
        if found is None:
            raise Unauthenticated("unknown API key", reason="INVALID_API_KEY")
        return found


class FakeIdentity(identity_service_pb2_grpc.IdentityServiceServicer):
    USERS = {
        7: account_pb2.User(
            user_id=7, account_id=42, api_username="alice", active=True, test_mode=True, permissions=ALL_PERMISSIONS
        ),
        9: account_pb2.User(user_id=9, account_id=42, api_username="bob", active=False, permissions=ALL_PERMISSIONS),
    }

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    async def GetUser(self, request, context):  # type: ignore[no-untyped-def]
        self.rec.record("GetUser", request, context)
        if request.user_id not in self.USERS:
            raise NotFound("no such user")
        return identity_service_pb2.GetUserResponse(user=self.USERS[request.user_id])

    async def GetAccount(self, request, context):  # type: ignore[no-untyped-def]
        call = self.rec.record("GetAccount", request, context)
        p = call.principal
        assert p is not None
        return identity_service_pb2.GetAccountResponse(
            user_id=p.user_id, username=p.api_username, user_email="alice@example.com", active=1, banned=0,
            date_sign_up=1_700_000_000, balance="12.500000", user_phone="+61411111111", user_first_name="Alice",
            user_last_name="Example", account=p.account_id, account_name="Example Pty", country="AU",
            default_country_sms="AU", timezone="Australia/Melbourne", setting_unicode_sms=0,
            setting_fix_sender_id=0, setting_sms_message_char_limit=6, on_trial=1, auto_recharge=0,
            low_credit_amount="5.000000",
            currency=account_pb2.Currency(
                currency_name_short="AUD", currency_prefix_d="$", currency_prefix_c="c",
                currency_name_long="Australian Dollars", min_recharge_amount="20.00", max_recharge_amount="5000.00",
            ),
            subaccount=account_pb2.Subaccount(
                subaccount_id=p.user_id, api_username=p.api_username, email="alice@example.com",
                phone_number="+61411111111", first_name="Alice", last_name="Example", api_key="****",
                is_main=1, sign_up_type="api", access_sms=1, access_reporting=1,
            ),
        )


class FakeMessaging(messaging_service_pb2_grpc.MessagingServiceServicer):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    async def SendSms(self, request, context):  # type: ignore[no-untyped-def]
        call = self.rec.record("SendSms", request, context)
        if not request.messages:
            raise InvalidArgument("messages is required", reason="MISSING_REQUIRED_FIELDS")
        if any(m.body == "slow" for m in request.messages):
            await asyncio.sleep(0.5)
        if any(m.body == "boom" for m in request.messages):
            raise RuntimeError("an unexpected bug")  # the Guard turns this into INTERNAL
        p = call.principal
        assert p is not None
        out = []
        for i, m in enumerate(request.messages):
            out.append(sms_pb2.SentSms(
                direction="out", date=1_764_000_000, to=m.to, body=m.body, sender=m.sender or "SendSafe",
                schedule=m.schedule, message_id=f"B7E7F7E2-0000-4000-8000-{i:012d}", message_parts=1,
                message_price="0.0770", custom_string=m.custom_string, contact_id=str(m.contact_id or ""),
                user_id=p.user_id, subaccount_id=p.user_id, is_shared_system_number=False, country="AU",
                carrier="Telstra", status="SUCCESS",
            ))
        return messaging_service_pb2.SendSmsResponse(
            total_price=round(0.077 * len(out), 4), total_count=len(out), queued_count=len(out), blocked_count=0,
            currency=sms_pb2.Currency(currency_name_short="AUD", currency_prefix_d="$", currency_prefix_c="c",
                                      currency_name_long="Australian Dollars"),
            messages=out,
        )

    async def ListSmsHistory(self, request, context):  # type: ignore[no-untyped-def]
        self.rec.record("ListSmsHistory", request, context)
        item = sms_pb2.HistorySms(
            direction="out", date=1_764_000_000, to="+61411111111", body="hello", sender="SendSafe", schedule="",
            status="Sent", status_code="200", status_text="Sent to network", message_id="M-1", message_parts=1,
            message_price="0.0770", user_id=7, subaccount_id=7, country="AU", carrier="Telstra",
            api_username="alice",
        )
        delivered = sms_pb2.HistorySms()
        delivered.CopyFrom(item)
        delivered.message_id, delivered.error_code, delivered.error_text = "M-2", "", ""
        limit = request.limit or 15
        return messaging_service_pb2.ListSmsHistoryResponse(
            total=2, per_page=limit, current_page=request.page or 1, last_page=1, first_index=1, last_index=2,
            data=[item, delivered],
        )


class FakeAudit(audit_service_pb2_grpc.AuditServiceServicer):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.events: list[event_pb2.Event] = []
        self.arrived = asyncio.Event()

    async def AppendEvents(self, request, context):  # type: ignore[no-untyped-def]
        self.rec.record("AppendEvents", request, context)
        self.events.extend(request.events)
        self.arrived.set()
        return audit_service_pb2.AppendEventsResponse(first_sequence=1, last_sequence=len(self.events))

    async def ListEvents(self, request, context):  # type: ignore[no-untyped-def]
        call = self.rec.record("ListEvents", request, context)
        assert call.principal is not None
        mine = [e for e in self.events if e.actor.account_id == call.principal.account_id]
        return audit_service_pb2.ListEventsResponse(events=mine[: request.page_size or 10], next_page_token="")

    def by_request(self, request_id: str) -> list[event_pb2.Event]:
        return [e for e in self.events if e.request_id == request_id]


@dataclass
class Backends:
    rec: Recorder
    keys: FakeKeys
    identity: FakeIdentity
    messaging: FakeMessaging
    audit: FakeAudit
    servers: dict[str, RunningServer]

    def addr(self, name: str) -> str:
        return f"127.0.0.1:{self.servers[name].port}"


def gateway_settings(certs: CertBundle, backends: Backends, **overrides: Any) -> Settings:
    gw = certs.tls("gateway")
    values: dict[str, Any] = dict(
        https_listen="127.0.0.1:0",
        https_cert_file=certs.https_cert,
        https_key_file=certs.https_key,
        tls_cert_file=gw.cert,
        tls_key_file=gw.key,
        tls_ca_file=gw.ca,
        identity_addr=backends.addr("identity"),
        keys_addr=backends.addr("keys"),
        messaging_addr=backends.addr("messaging"),
        audit_addr=backends.addr("audit"),
        max_body_bytes=MAX_BODY,
        auth_cache_seconds=1.0,
        shutdown_grace_seconds=3.0,
    )
    values.update(overrides)
    return Settings(**values)


@dataclass
class RunningGateway:
    gateway: Gateway
    spans: InMemorySpanExporter

    @property
    def port(self) -> int:
        return self.gateway.port

    @property
    def url(self) -> str:
        return f"https://localhost:{self.gateway.port}"


def client_ssl(certs: CertBundle) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certs.public_ca))


def basic(user: str, key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()}


ALICE = basic("alice", ALICE_KEY)
