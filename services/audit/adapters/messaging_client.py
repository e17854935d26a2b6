"""The audit service's one gRPC dependency: messaging (NotificationService), to send alert SMS as the rule's
owner, to check that a rule's destination was verified, and to email security notices to an account's owners."""

from __future__ import annotations

import grpc

from sendsafe.context.v1 import principal_pb2
from sendsafe.messaging.v1 import notification_service_pb2, notification_service_pb2_grpc
from services.audit.domain.rules import RuleSpec
from services.audit.service.ports import DeliveryError
from svckit.errors import Unavailable
from svckit.rpcstatus import error_reason

_CHANNELS = {"sms": notification_service_pb2.NOTIFICATION_CHANNEL_SMS,
             "email": notification_service_pb2.NOTIFICATION_CHANNEL_EMAIL}
# Codes with which messaging refuses a notification for good (retrying cannot help).
_FINAL = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED})


class MessagingUnavailable(Unavailable):
    reason = "MESSAGING_UNAVAILABLE"


class MessagingNotifier:
    """`Notifier` over messaging's NotificationService."""

    def __init__(self, stub: notification_service_pb2_grpc.NotificationServiceStub, timeout: float = 5.0) -> None:
        self._stub = stub
        self._timeout = timeout

    async def notify(self, account_id: int, channel: str, to: str, subject: str, body: str,
                     notification_id: str, owner: RuleSpec) -> None:
        request = notification_service_pb2.SendNotificationRequest(
            account_id=account_id, channel=_CHANNELS[channel], to=to, subject=subject, body=body,
            notification_id=notification_id,
            owner=notification_service_pb2.NotificationOwner(
                user_id=owner.owner_user_id, api_username=owner.owner_api_username,
                api_key_id=owner.owner_api_key_id,
                send_limits=principal_pb2.SendLimits(
                    messages_per_minute=owner.owner_per_minute, messages_per_day=owner.owner_per_day,
                    allowed_countries=owner.owner_countries),
            ),
        )
        try:
            await self._stub.SendNotification(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            raise DeliveryError(error_reason(err) or err.code().name, retryable=err.code() not in _FINAL) from None

    async def email_owners(self, account_id: int, subject: str, body: str, notification_id: str) -> None:
        """A security notice by email to the account's owners (messaging resolves their addresses)."""
        request = notification_service_pb2.SendNotificationRequest(
            account_id=account_id, channel=notification_service_pb2.NOTIFICATION_CHANNEL_EMAIL, subject=subject,
            body=body, notification_id=notification_id, account_owners=True)
        try:
            await self._stub.SendNotification(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            raise DeliveryError(error_reason(err) or err.code().name, retryable=err.code() not in _FINAL) from None

    async def verified(self, account_id: int, channel: str, to: str) -> bool:
        """Whether the account verified this destination (an outage is UNAVAILABLE: the change is refused)."""
        request = notification_service_pb2.CheckDestinationRequest(
            account_id=account_id, channel=_CHANNELS[channel], to=to)
        try:
            return bool((await self._stub.CheckDestination(request, timeout=self._timeout)).verified)
        except grpc.aio.AioRpcError:
            raise MessagingUnavailable("cannot check the destination now; try again") from None

