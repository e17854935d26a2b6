"""Messaging, as identity calls it: account balances (messaging owns billing) and sign-up codes by email."""

from __future__ import annotations

import asyncio
import logging

import grpc

from sendsafe.messaging.v1 import (
    messaging_service_pb2,
    messaging_service_pb2_grpc,
    notification_service_pb2,
    notification_service_pb2_grpc,
)
from services.identity.domain.errors import BalanceUnavailable
from svckit.errors import Unavailable

_LOG = logging.getLogger(__name__)
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


class MessagingBalances:
    """Balances come from messaging, which owns billing. GetBalance is a read, so one quick retry
    on UNAVAILABLE is safe; every attempt has a deadline."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = 2.0, retries: int = 1) -> None:
        self._stub = messaging_service_pb2_grpc.MessagingServiceStub(channel)
        self._timeout = timeout
        self._retries = retries

    async def get_balance(self, account_id: int) -> str:
        request = messaging_service_pb2.GetBalanceRequest(account_id=account_id)
        delay = 0.05
        for attempt in range(self._retries + 1):
            try:
                resp = await self._stub.GetBalance(request, timeout=self._timeout)
                return str(resp.balance)
            except grpc.aio.AioRpcError as err:
                if err.code() in _RETRYABLE and attempt < self._retries:
                    await asyncio.sleep(delay)
                    delay *= 2
                    continue
                _LOG.warning("messaging GetBalance failed: %s", err.code().name, extra={"code": err.code().name})
                break
        raise BalanceUnavailable("the balance is unavailable right now; try again shortly")


class SignupEmailNotSent(Unavailable):
    reason = "SIGNUP_EMAIL_NOT_SENT"


class MessagingMail:
    """Sign-up codes by email, through messaging's email channel to the account's owners: messaging reads the
    main user's address from identity (AccountOwners), so the address never travels in this call."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = 10.0) -> None:
        self._stub = notification_service_pb2_grpc.NotificationServiceStub(channel)
        self._timeout = timeout

    async def send(self, account_id: int, subject: str, body: str, notification_id: str) -> str:
        request = notification_service_pb2.SendNotificationRequest(
            account_id=account_id, channel=notification_service_pb2.NOTIFICATION_CHANNEL_EMAIL, subject=subject,
            body=body, notification_id=notification_id, account_owners=True,
        )
        try:
            resp = await self._stub.SendNotification(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            _LOG.warning("messaging SendNotification (sign-up code) failed: %s", err.code().name,
                         extra={"code": err.code().name})
            raise SignupEmailNotSent("the sign-up email could not be sent now; ask for a new code") from None
        return str(resp.message_id)
