"""SendNotification: the audit service's way to send an alert SMS as the account (real mTLS, PostgreSQL,
Redis, keys and audit)."""

from __future__ import annotations

import grpc
import pytest

from sendsafe.messaging.v1 import notification_service_pb2 as npb
from sendsafe.messaging.v1 import notification_service_pb2_grpc
from svckit.testing import CertBundle
from tests.conftest import channel_as
from tests.integration.messaging.conftest import Messaging
from tests.integration.messaging.test_api import TEST_NUMBER, reason_of

SMS, EMAIL = npb.NOTIFICATION_CHANNEL_SMS, npb.NOTIFICATION_CHANNEL_EMAIL


async def test_audit_sends_an_alert_sms_as_the_account(messaging: Messaging, certs: CertBundle) -> None:
    async with channel_as(certs, "audit", messaging.api.port, "messaging") as ch:
        stub = notification_service_pb2_grpc.NotificationServiceStub(ch)
        sent = await stub.SendNotification(npb.SendNotificationRequest(
            account_id=4101, channel=SMS, to=TEST_NUMBER, body="SendSafe alert: New API key", notification_id="n1"))
        assert sent.message_id
        assert await messaging.pool.fetchval(
            "SELECT account_id FROM messages WHERE id = $1::uuid", sent.message_id) == 4101

        with pytest.raises(grpc.aio.AioRpcError) as email:
            await stub.SendNotification(npb.SendNotificationRequest(
                account_id=4101, channel=EMAIL, to="ops@example.com", body="x"))
        assert reason_of(email.value) == "CHANNEL_NOT_AVAILABLE"

        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.SendNotification(npb.SendNotificationRequest(
                account_id=4101, channel=SMS, to="not a number", body="x"))
        assert bad.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason_of(bad.value) == "NOTIFICATION_REJECTED"


async def test_only_audit_may_send_notifications(messaging: Messaging, certs: CertBundle) -> None:
    async with channel_as(certs, "gateway", messaging.api.port, "messaging") as ch:
        stub = notification_service_pb2_grpc.NotificationServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SendNotification(npb.SendNotificationRequest(
                account_id=4101, channel=SMS, to=TEST_NUMBER, body="x"))
        assert reason_of(info.value) == "CALLER_NOT_ALLOWED"
