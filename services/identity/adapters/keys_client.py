"""The keys service, as identity calls it: sub-accounts' API keys (TOTP secrets are sealed through
`svckit.envelope.Envelope` over the same keys channel, built in app.py)."""

from __future__ import annotations

import asyncio
import logging

import grpc

from sendsafe.keys.v1 import keys_service_pb2, keys_service_pb2_grpc
from svckit.errors import Unavailable

_LOG = logging.getLogger(__name__)
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


class KeysUnavailable(Unavailable):
    reason = "KEYS_UNAVAILABLE"


class KeysClient:
    """API keys are owned by the keys service: identity asks it to issue a sub-account's key and to revoke
    every key of a user (regen, delete). Neither call is retried blindly: issuing is not idempotent, and a
    failed revoke is reported so the caller can refuse the operation."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = 5.0) -> None:
        self._stub = keys_service_pb2_grpc.KeysServiceStub(channel)
        self._timeout = timeout

    async def issue(self, account_id: int, user_id: int, name: str, test_mode: bool) -> tuple[str, str]:
        """(key_id, api_key): the secret is returned once and never stored here."""
        try:
            resp = await self._stub.IssueApiKey(
                keys_service_pb2.IssueApiKeyRequest(
                    account_id=account_id, user_id=user_id, name=name, test_mode=test_mode
                ),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as err:
            _LOG.warning("keys IssueApiKey failed: %s", err.code().name)
            raise KeysUnavailable("the API key could not be issued; nothing was changed") from None
        return resp.key_id, resp.api_key

    async def revoke_user_keys(self, account_id: int, user_id: int, *, keep_key_id: str = "", reason: str) -> int:
        """Revoke every key of the user except `keep_key_id`; returns how many were revoked. Idempotent."""
        request = keys_service_pb2.RevokeUserApiKeysRequest(
            account_id=account_id, user_id=user_id, keep_key_id=keep_key_id, reason=reason
        )
        delay = 0.05
        for attempt in range(3):
            try:
                resp = await self._stub.RevokeUserApiKeys(request, timeout=self._timeout)
                return len(resp.revoked_key_ids)
            except grpc.aio.AioRpcError as err:
                if err.code() in _RETRYABLE and attempt < 2:
                    await asyncio.sleep(delay)
                    delay *= 2
                    continue
                _LOG.warning("keys RevokeUserApiKeys failed: %s", err.code().name)
                break
        raise KeysUnavailable("the user's API keys could not be revoked; try again")
