"""Identity (GetUser), with keys (CheckApiKey), to re-check an alert rule's owner before each alert SMS or email;
identity (GetAccountOwners) for the addresses security notifications go to."""

from __future__ import annotations

import contextlib
import logging

import grpc

from sendsafe.identity.v1 import identity_service_pb2, identity_service_pb2_grpc
from sendsafe.keys.v1 import keys_service_pb2, keys_service_pb2_grpc
from services.messaging.config import Settings, tls_of
from services.messaging.domain.destinations import OwnerUser
from svckit.errors import Unavailable
from svckit.rpc import secure_channel

_LOG = logging.getLogger(__name__)


class OwnerCheckUnavailable(Unavailable):
    reason = "OWNER_CHECK_UNAVAILABLE"


class AlertOwners:
    """`Owners` over identity (GetUser) and keys (CheckApiKey): one call each per alert SMS, no cache (alerts
    are rare, and a revocation must count at once); and `AccountContacts` (GetAccountOwners). An outage is
    UNAVAILABLE, so audit tries again later."""

    def __init__(self, identity: grpc.aio.Channel, keys: grpc.aio.Channel, timeout: float = 5.0) -> None:
        self._identity = identity_service_pb2_grpc.IdentityServiceStub(identity)
        self._keys = keys_service_pb2_grpc.KeysServiceStub(keys)
        self._timeout = timeout

    async def user(self, user_id: int) -> OwnerUser | None:
        try:
            got = await self._identity.GetUser(identity_service_pb2.GetUserRequest(user_id=user_id),
                                               timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return None
            _LOG.warning("identity GetUser failed: %s", err.code().name)
            raise OwnerCheckUnavailable("cannot check the alert rule's owner now; try again") from None
        u = got.user
        return OwnerUser(u.account_id, u.active, frozenset(u.permissions))

    async def owner_emails(self, account_id: int) -> list[str]:
        """The account's owners' addresses (identity's GetAccountOwners): where security notifications go."""
        try:
            got = await self._identity.GetAccountOwners(
                identity_service_pb2.GetAccountOwnersRequest(account_id=account_id), timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            _LOG.warning("identity GetAccountOwners failed: %s", err.code().name)
            raise OwnerCheckUnavailable("cannot find the account's owners now; try again") from None
        return [o.email for o in got.owners if o.email]

    async def key_scopes(self, account_id: int, user_id: int, key_id: str) -> tuple[str, ...] | None:
        try:
            got = await self._keys.CheckApiKey(keys_service_pb2.CheckApiKeyRequest(
                account_id=account_id, user_id=user_id, key_id=key_id), timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT:  # not a key id: no key stands for it
                return None
            _LOG.warning("keys CheckApiKey failed: %s", err.code().name)
            raise OwnerCheckUnavailable("cannot check the alert rule's API key now; try again") from None
        return tuple(got.scopes) if got.active else None


def open_owners(settings: Settings, stack: contextlib.AsyncExitStack) -> AlertOwners | None:
    """None when IDENTITY_ADDR is not set (alert SMS are then refused as IDENTITY_NOT_CONFIGURED)."""
    if not settings.identity_addr:
        return None
    identity = secure_channel(settings.identity_addr, tls_of(settings), server_name="identity")
    stack.push_async_callback(identity.close)
    keys = secure_channel(settings.keys_addr, tls_of(settings), server_name="keys")
    stack.push_async_callback(keys.close)
    return AlertOwners(identity, keys)
