"""The audit service's one gRPC dependency: messaging, to send alert SMS (NotificationService)."""

from __future__ import annotations

import contextlib

import grpc

from sendsafe.messaging.v1 import notification_service_pb2, notification_service_pb2_grpc
from services.audit.config import Settings
from services.audit.service import DeliveryError
from svckit.rpc import secure_channel
from svckit.tls import TlsFiles

_CHANNELS = {"sms": notification_service_pb2.NOTIFICATION_CHANNEL_SMS,
             "email": notification_service_pb2.NOTIFICATION_CHANNEL_EMAIL}
# Codes with which messaging refuses a notification for good (retrying cannot help).
_FINAL = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED})


def _reason(err: grpc.aio.AioRpcError) -> str:
    from google.rpc import error_details_pb2, status_pb2

    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for d in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if d.Unpack(info):
                    return info.reason
    return err.code().name


class MessagingNotifier:
    """`Notifier` over messaging's NotificationService."""

    def __init__(self, stub: notification_service_pb2_grpc.NotificationServiceStub, timeout: float = 5.0) -> None:
        self._stub = stub
        self._timeout = timeout

    async def notify(self, account_id: int, channel: str, to: str, subject: str, body: str,
                     notification_id: str) -> None:
        request = notification_service_pb2.SendNotificationRequest(
            account_id=account_id, channel=_CHANNELS[channel], to=to, subject=subject, body=body,
            notification_id=notification_id,
        )
        try:
            await self._stub.SendNotification(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            raise DeliveryError(_reason(err), retryable=err.code() not in _FINAL) from None


def open_notifier(settings: Settings, stack: contextlib.AsyncExitStack) -> MessagingNotifier | None:
    """None when MESSAGING_ADDR is not set (SMS/email deliveries then fail as MESSAGING_NOT_CONFIGURED)."""
    if not settings.messaging_addr:
        return None
    tls = TlsFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)
    channel = secure_channel(settings.messaging_addr, tls, server_name="messaging")
    stack.push_async_callback(channel.close)
    return MessagingNotifier(notification_service_pb2_grpc.NotificationServiceStub(channel))
