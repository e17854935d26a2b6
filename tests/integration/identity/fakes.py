"""Stand-ins for the services identity talks to, served over real mTLS behind the real Guard."""

from __future__ import annotations

import itertools
import socket

import grpc

from sendsafe.keys.v1 import keys_service_pb2, keys_service_pb2_grpc
from sendsafe.messaging.v1 import messaging_service_pb2, messaging_service_pb2_grpc

BALANCE = "12.500000"


class FakeMessaging(messaging_service_pb2_grpc.MessagingServiceServicer):
    def __init__(self) -> None:
        self.balance_calls: list[int] = []

    async def GetBalance(
        self, request: messaging_service_pb2.GetBalanceRequest, context: grpc.aio.ServicerContext
    ) -> messaging_service_pb2.GetBalanceResponse:
        self.balance_calls.append(request.account_id)
        return messaging_service_pb2.GetBalanceResponse(balance=BALANCE)


class FakeKeys(keys_service_pb2_grpc.KeysServiceServicer):
    def __init__(self) -> None:
        self.issued: list[keys_service_pb2.IssueApiKeyRequest] = []
        self._n = itertools.count(1)

    async def IssueApiKey(
        self, request: keys_service_pb2.IssueApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> keys_service_pb2.IssueApiKeyResponse:
        self.issued.append(request)
        n = next(self._n)
        return keys_service_pb2.IssueApiKeyResponse(key_id=f"key{n}", api_key=f"sk_test_fake_{n:04d}")


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
