"""Security notifications end to end inside the platform (issue 14): a real audit service turns a security
event into a notice and asks the real messaging service (over mTLS) to email the account's owners; messaging
finds them through the real identity service and sends over SMTP (STARTTLS, certificate verified) to a real
SMTP server (aiosmtpd). A server that says "later" is retried by audit until it takes the mail; one that
refuses it for good leaves the notice failed. Real PostgreSQL and Redis throughout."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sendsafe.audit.v1 import audit_service_pb2 as apb
from sendsafe.audit.v1 import audit_service_pb2_grpc
from sendsafe.audit.v1 import security_notification_pb2 as snpb
from sendsafe.identity.v1 import identity_service_pb2 as ipb
from sendsafe.identity.v1 import identity_service_pb2_grpc
from services.audit.config import Settings as AuditSettings
from services.messaging.config import Settings
from svckit.app import App
from svckit.audit import new_event
from tests.conftest import channel_as
from tests.integration.messaging.smtp_server import Inbox, smtp_server
from tests.integration.messaging.test_notification import until
from tests.support import CertBundle, NewDatabase

KEY_SECRET = "ss_live_kABC_0123456789abcdefSECRETsecret"
SENT = snpb.SECURITY_NOTIFICATION_STATUS_SENT
FAILED = snpb.SECURITY_NOTIFICATION_STATUS_FAILED
PENDING = snpb.SECURITY_NOTIFICATION_STATUS_PENDING


@dataclasses.dataclass
class Chain:
    inbox: Inbox
    audit: App
    certs: CertBundle
    account_id: int
    owner_email: str

    async def key_created(self, key_id: str) -> str:
        ev = new_event("keys", "keys.api_key.created", resource_type="api_key", resource_id=key_id,
                       account_id=self.account_id, details={"name": "ci key", "api_key": KEY_SECRET})
        ev.actor.type, ev.actor.id = "user", "1"
        ev.source.client_address = "198.51.100.23"
        async with channel_as(self.certs, "keys", self.audit.port, "audit") as ch:
            await audit_service_pb2_grpc.AuditServiceStub(ch).AppendEvents(apb.AppendEventsRequest(events=[ev]))
        return ev.event_id

    async def notice(self, event_id: str) -> snpb.SecurityNotification | None:
        from tests.integration.audit.conftest import principal

        async with channel_as(self.certs, "gateway", self.audit.port, "audit") as ch:
            got = await audit_service_pb2_grpc.AuditServiceStub(ch).ListSecurityNotifications(
                apb.ListSecurityNotificationsRequest(page_size=100), metadata=principal(self.account_id))
        return next((n for n in got.notifications if n.event_id == event_id), None)

    async def settled(self, event_id: str) -> snpb.SecurityNotification:
        async def check() -> snpb.SecurityNotification | None:
            n = await self.notice(event_id)
            return n if n is not None and n.status != PENDING else None

        result: snpb.SecurityNotification = await until(check, what="the notice to settle")
        return result


@pytest.fixture
async def chain(certs: CertBundle, new_database: NewDatabase, messaging_settings: Settings, identity_app: App
                ) -> AsyncIterator[Chain]:
    from services.audit.app import build as build_audit
    from services.messaging.app import build as build_messaging

    name = f"sec{uuid.uuid4().hex[:10]}"
    async with channel_as(certs, "ops", identity_app.port, "identity") as ops:
        made = await identity_service_pb2_grpc.IdentityServiceStub(ops).CreateAccount(ipb.CreateAccountRequest(
            account_name="Notices Pty Ltd", api_username=name, email=f"{name}@example.com", country="AU"))
    async with smtp_server(certs.https_cert, certs.https_key) as inbox:
        messaging = await build_messaging(dataclasses.replace(
            messaging_settings, smtp_host="127.0.0.1", smtp_port=inbox.port, smtp_tls="starttls",
            smtp_ca_file=str(certs.public_ca), smtp_from="security@sendsafe.example", smtp_timeout_seconds=2.0))
        tls = certs.tls("audit")
        settings: dict[str, Any] = dict(
            tls_cert_file=tls.cert, tls_key_file=tls.key, tls_ca_file=tls.ca,
            database_url=await new_database("audit_notices"), signing_key="33" * 32, webhook_key="44" * 32,
            poll_seconds=0.2, retry_base_seconds=0.05, verify_interval_seconds=0, db_pool_size=4,
            messaging_addr=f"127.0.0.1:{messaging.port}")
        audit = await build_audit(AuditSettings(**settings))
        try:
            yield Chain(inbox, audit, certs, made.account_id, f"{name}@example.com")
        finally:
            await audit.stop()
            await messaging.stop()


async def test_a_new_api_key_reaches_the_owners_inbox_without_its_secret(chain: Chain) -> None:
    event_id = await chain.key_created("ak_live_kABC")
    notice = await chain.settled(event_id)
    assert (notice.status, notice.attempts, notice.kind) == (SENT, 1, "api_key_created")
    [mail] = chain.inbox.received
    assert mail.rcpt_tos == [chain.owner_email] and mail.tls in ("TLSv1.2", "TLSv1.3")
    msg = mail.message
    assert msg["Subject"] == notice.subject == "SendSafe security notice: a new API key"
    assert msg["To"] == chain.owner_email and msg["From"] == "SendSafe <security@sendsafe.example>"
    text = msg.get_content().replace("\r\n", "\n").rstrip("\n")
    assert text == notice.body
    assert "API key id: ak_live_kABC." in text and "From address: 198.51.100.23" in text
    assert KEY_SECRET.encode() not in mail.data and b"ci key" not in mail.data


async def test_a_mail_server_saying_later_is_retried_and_one_refusing_fails_the_notice(chain: Chain) -> None:
    chain.inbox.rcpt_reply = "451 4.3.0 try again later"
    later = await chain.key_created("ak_live_later")

    async def retried() -> bool:
        n = await chain.notice(later)
        return n is not None and n.attempts >= 2 and n.status == PENDING and n.last_error == "EMAIL_UNAVAILABLE"

    await until(retried, what="audit to retry the notice")
    chain.inbox.rcpt_reply = ""
    notice = await chain.settled(later)
    assert notice.status == SENT and notice.attempts >= 3 and notice.last_error == ""
    assert [m.rcpt_tos for m in chain.inbox.received] == [[chain.owner_email]]

    chain.inbox.rcpt_reply = "550 5.1.1 no such mailbox"
    refused = await chain.settled(await chain.key_created("ak_live_refused"))
    assert (refused.status, refused.attempts, refused.last_error) == (FAILED, 1, "EMAIL_REJECTED")
    assert len(chain.inbox.received) == 1
