"""Security notifications (issue 14) with the real audit service (real PostgreSQL, real mTLS): recorded once
per notifying event even with two alert engines racing, the new-address sign-in rule over the real log, and
delivery through a NotificationService over mTLS (a stand-in that speaks messaging's email contract:
UNAVAILABLE/EMAIL_UNAVAILABLE retried, FAILED_PRECONDITION/EMAIL_REJECTED failed, CHANNEL_NOT_AVAILABLE not
sent), each outcome listed to the account through ListSecurityNotifications."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import grpc
import pytest

from sendsafe.audit.v1 import audit_service_pb2 as pb
from sendsafe.audit.v1 import event_pb2
from sendsafe.audit.v1 import security_notification_pb2 as snpb
from sendsafe.messaging.v1 import notification_service_pb2 as npb
from sendsafe.messaging.v1 import notification_service_pb2_grpc
from svckit.errors import DomainError, FailedPrecondition, Unavailable
from svckit.server import start_server
from tests.integration.audit.conftest import Audit, AuditFactory, event, eventually, principal, reason_of
from tests.support import CertBundle

PENDING = snpb.SECURITY_NOTIFICATION_STATUS_PENDING
SENT = snpb.SECURITY_NOTIFICATION_STATUS_SENT
FAILED = snpb.SECURITY_NOTIFICATION_STATUS_FAILED
NOT_SENT = snpb.SECURITY_NOTIFICATION_STATUS_NOT_SENT
KEY_SECRET = "ss_live_k123_SECRETSECRETSECRETSECRET"


@dataclass
class EmailNotifications(notification_service_pb2_grpc.NotificationServiceServicer):
    """Messaging's email contract for security notices; `failures` are raised, one per call, first."""

    requests: list[npb.SendNotificationRequest] = field(default_factory=list)
    failures: list[DomainError] = field(default_factory=list)

    async def SendNotification(self, request: npb.SendNotificationRequest, context: Any
                               ) -> npb.SendNotificationResponse:
        self.requests.append(request)
        if self.failures:
            raise self.failures.pop(0)
        return npb.SendNotificationResponse(message_id=f"E{len(self.requests)}")


@pytest.fixture
async def email_messaging(certs: CertBundle) -> AsyncIterator[tuple[EmailNotifications, str]]:
    servicer = EmailNotifications()
    server = await start_server(
        listen="127.0.0.1:0", tls=certs.tls("messaging"),
        register=lambda s: notification_service_pb2_grpc.add_NotificationServiceServicer_to_server(servicer, s),
        service_names=["sendsafe.messaging.v1.NotificationService"],
    )
    yield servicer, f"127.0.0.1:{server.port}"
    await server.stop(0)


async def _notices(audit: Audit, account: int) -> list[snpb.SecurityNotification]:
    got = await audit.stub().ListSecurityNotifications(pb.ListSecurityNotificationsRequest(page_size=100),
                                                       metadata=principal(account))
    return list(got.notifications)


async def _settled(audit: Audit, account: int, n: int) -> list[snpb.SecurityNotification]:
    async def check() -> list[snpb.SecurityNotification]:
        got = await _notices(audit, account)
        return got if len(got) >= n and all(x.status != PENDING for x in got) else []

    return await eventually(check, what=f"{n} settled security notices")


async def _evaluated(audit: Audit) -> None:
    pool = audit.app.extras["pool"]

    async def caught_up() -> bool:
        size = await pool.fetchval("SELECT size FROM tree_head")  # type: ignore[attr-defined]
        cursor = await pool.fetchval("SELECT sequence FROM processor_cursors WHERE name = 'alerts'")  # type: ignore[attr-defined]
        return bool(cursor >= size)

    await eventually(caught_up, what="the alert engine to catch up")


def _key_created(account: int, key_id: str = "ak_live_k123") -> event_pb2.Event:
    ev = event(account, "keys.api_key.created", address="203.0.113.5",
               details={"name": "Bob's key", "api_key": KEY_SECRET, "user_id": "7"})
    ev.resource.type, ev.resource.id = "api_key", key_id
    ev.source.user_agent = "sendsafe-cli/1.0"
    return ev


def _sign_in(account: int, user: str, address: str, *, outcome: int = event_pb2.OUTCOME_SUCCESS,
             days_ago: int = 0) -> event_pb2.Event:
    ev = event(account, "auth.login", outcome=outcome, address=address,
               details={"directory": "user", "session_id": "s1"})
    ev.actor.id = user
    if days_ago:
        ev.event_time.FromDatetime(datetime.now(UTC).replace(tzinfo=None) - timedelta(days=days_ago))
    return ev


async def test_a_new_api_key_is_emailed_to_the_owners_and_listed_as_sent(
    make_audit: AuditFactory, email_messaging: tuple[EmailNotifications, str]
) -> None:
    servicer, addr = email_messaging
    audit = await make_audit(messaging_addr=addr)
    account = 7101
    created = _key_created(account)
    await audit.append(created, caller="keys")
    (notice,) = await _settled(audit, account, 1)
    assert (notice.kind, notice.status, notice.attempts, notice.last_error) == ("api_key_created", SENT, 1, "")
    assert notice.event_id == created.event_id and "API key id: ak_live_k123." in notice.body
    (sent,) = servicer.requests
    assert sent.channel == npb.NOTIFICATION_CHANNEL_EMAIL and sent.account_owners and not sent.to
    assert sent.account_id == account and sent.notification_id == f"security-notice-{notice.notification_id}"
    assert (sent.subject, sent.body) == (notice.subject, notice.body)
    assert "From address: 203.0.113.5" in sent.body and "User agent: sendsafe-cli/1.0" in sent.body
    assert KEY_SECRET not in sent.body and "Bob" not in sent.body
    # Another account sees none of it; the list needs audit.read, from the gateway only.
    assert await _notices(audit, account + 1) == []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await audit.stub().ListSecurityNotifications(pb.ListSecurityNotificationsRequest(),
                                                     metadata=principal(account, "sms.send"))
    assert reason_of(info.value) == "MISSING_PERMISSION"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await audit.stub("keys").ListSecurityNotifications(pb.ListSecurityNotificationsRequest(),
                                                           metadata=principal(account))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await audit.stub().ListSecurityNotifications(pb.ListSecurityNotificationsRequest(page_token="x"),
                                                     metadata=principal(account))
    assert reason_of(info.value) == "PAGE_TOKEN_INVALID"


async def test_each_delivery_outcome_is_recorded(
    make_audit: AuditFactory, email_messaging: tuple[EmailNotifications, str]
) -> None:
    servicer, addr = email_messaging
    audit = await make_audit(messaging_addr=addr)
    # Three notices, in order: a passing outage twice then sent; refused for good; no email channel.
    servicer.failures = [Unavailable("smtp down", reason="EMAIL_UNAVAILABLE"),
                         Unavailable("smtp down", reason="EMAIL_UNAVAILABLE")]
    await audit.append(_key_created(7201), caller="keys")
    (retried,) = await _settled(audit, 7201, 1)
    assert (retried.status, retried.attempts, retried.last_error) == (SENT, 3, "")
    # The same notification id on every attempt (messaging's idempotency key).
    assert [r.notification_id for r in servicer.requests] == [f"security-notice-{retried.notification_id}"] * 3

    servicer.failures = [FailedPrecondition("mailbox refused", reason="EMAIL_REJECTED")]
    await audit.append(_key_created(7202), caller="keys")
    (refused,) = await _settled(audit, 7202, 1)
    assert (refused.status, refused.attempts, refused.last_error) == (FAILED, 1, "EMAIL_REJECTED")

    servicer.failures = [FailedPrecondition("no email", reason="CHANNEL_NOT_AVAILABLE")]
    await audit.append(_key_created(7203), caller="keys")
    (skipped,) = await _settled(audit, 7203, 1)
    assert (skipped.status, skipped.attempts, skipped.last_error) == (NOT_SENT, 1, "EMAIL_NOT_CONFIGURED")
    # Neither is tried again: a later notice goes out, and the calls stay one each.
    await audit.append(_key_created(7204), caller="keys")
    await _settled(audit, 7204, 1)
    assert [r.account_id for r in servicer.requests] == [7201] * 3 + [7202, 7203, 7204]


async def test_a_passing_outage_that_lasts_fails_after_the_last_retry(
    make_audit: AuditFactory, email_messaging: tuple[EmailNotifications, str]
) -> None:
    servicer, addr = email_messaging
    servicer.failures = [Unavailable("smtp down", reason="EMAIL_UNAVAILABLE") for _ in range(20)]
    audit = await make_audit(messaging_addr=addr, retry_base_seconds=0.01, metrics_listen="127.0.0.1:0")
    await audit.append(_key_created(7301), caller="keys")
    (notice,) = await _settled(audit, 7301, 1)
    assert (notice.status, notice.attempts, notice.last_error) == (FAILED, 8, "EMAIL_UNAVAILABLE")
    assert len(servicer.requests) == 8
    # What an SRE sees: every failed attempt counted, nothing left pending.
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{audit.app.extras['metrics_port']}/metrics") as resp:
        values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in (await resp.text()).splitlines()
                  if line and not line.startswith("#")}
    assert values["sendsafe_audit_security_notice_failures_total"] == 8
    assert values["sendsafe_audit_security_notices_pending"] == 0


async def test_without_messaging_notices_are_recorded_as_not_sent(make_audit: AuditFactory) -> None:
    audit = await make_audit()
    await audit.append(_key_created(7401), caller="keys")
    (notice,) = await _settled(audit, 7401, 1)
    assert (notice.status, notice.last_error) == (NOT_SENT, "MESSAGING_NOT_CONFIGURED")


async def test_sign_ins_notify_only_from_an_address_not_seen_before(make_audit: AuditFactory) -> None:
    audit = await make_audit()
    account = 7501
    steps: list[tuple[event_pb2.Event, bool]] = [
        (_sign_in(account, "7", "198.51.100.1"), False),  # the user's first sign-in: the baseline
        (_sign_in(account, "7", "198.51.100.1"), False),
        (_sign_in(account, "7", "198.51.100.2"), True),  # a new address
        (_sign_in(account, "7", "198.51.100.2"), False),
        (_sign_in(account, "8", "198.51.100.2"), False),  # another user's first sign-in
        (_sign_in(account, "8", "198.51.100.1"), True),  # ...seen for user 7, not for user 8
        (_sign_in(account, "7", "2001:db8:1:2::10"), True),
        (_sign_in(account, "7", "2001:db8:1:2:ffff::99"), False),  # the same /64
        (_sign_in(account, "7", "203.0.113.9", outcome=event_pb2.OUTCOME_FAILURE), False),
        (_sign_in(account, "7", "203.0.113.9"), True),  # a failed attempt does not make an address known
        (_sign_in(account, "9", "192.0.2.1", days_ago=120), False),
        (_sign_in(account, "9", "192.0.2.1"), True),  # seen, but longer ago than the 90-day window
        (_sign_in(account, "9", "192.0.2.1"), False),
    ]
    for ev, _ in steps:  # one at a time, so the log's order is the order above
        await audit.append(ev, caller="identity")
    await _evaluated(audit)
    notices = await _settled(audit, account, 4)
    expected = [ev.event_id for ev, notify in steps if notify]
    assert [n.event_id for n in reversed(notices)] == expected
    assert {n.kind for n in notices} == {"new_sign_in"}
    assert "From address: 2001:db8:1:2::10" in notices[2].body


async def test_each_event_is_noticed_once_with_two_engines_racing(make_audit: AuditFactory) -> None:
    audit = await make_audit()
    replica = await make_audit(dsn=audit.dsn)  # a second audit process on the same database
    account = 7601

    async def emit(i: int) -> None:
        target = audit if i % 2 else replica
        await target.append(*[_key_created(account, f"ak_live_{i}_{j}") for j in range(1 + i % 3)], caller="keys")

    await asyncio.gather(*(emit(i) for i in range(20)))
    await _evaluated(audit)
    emitted = sum(1 + i % 3 for i in range(20))
    notices = await _settled(audit, account, emitted)
    assert len(notices) == len({n.event_id for n in notices}) == emitted
    # Restarting the engine over the same events adds nothing (the cursor moved in the notices' transaction).
    pool = audit.app.extras["pool"]
    await pool.execute("UPDATE processor_cursors SET sequence = 0 WHERE name = 'alerts'")  # type: ignore[attr-defined]
    await _evaluated(audit)
    assert len(await _notices(audit, account)) == emitted
