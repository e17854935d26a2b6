"""What the account export reads from the other services (identity's users, keys' API-key metadata, audit's alert
rules and the account's events with proofs), over their internal RPCs, as JSON-ready records without secrets."""

from __future__ import annotations

import contextlib
from typing import Any

import grpc
from google.protobuf import json_format, message

from sendsafe.audit.v1 import audit_service_pb2, audit_service_pb2_grpc
from sendsafe.identity.v1 import identity_service_pb2, identity_service_pb2_grpc
from sendsafe.keys.v1 import keys_service_pb2, keys_service_pb2_grpc
from services.messaging.config import Settings, tls_of
from svckit.errors import Unavailable
from svckit.rpc import secure_channel

PAGE = 100
# Audit lines carry their event's bytes and inclusion proof (a few KiB each): a page stays far below gRPC's 4 MiB.
AUDIT_PAGE = 200
# Fields a record never carries out, even masked (an API key's secret is never stored; a sub-account's is masked).
_DROP = frozenset({"api_key"})


class ExportPeerUnavailable(Unavailable):
    reason = "EXPORT_PEER_UNAVAILABLE"


def _record(msg: message.Message) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return {k: v for k, v in out.items() if k not in _DROP}


class ExportPeers:
    """`ExportPeers` over identity (ListAccountUsers), keys (ListAccountApiKeys) and audit (ListAccountAlertRules,
    ExportAccountEvents). An outage fails the export (the job records it; the owner starts another)."""

    def __init__(self, identity: grpc.aio.Channel, keys: grpc.aio.Channel, audit: grpc.aio.Channel,
                 timeout: float = 30.0) -> None:
        self._identity = identity_service_pb2_grpc.IdentityServiceStub(identity)
        self._keys = keys_service_pb2_grpc.KeysServiceStub(keys)
        self._audit = audit_service_pb2_grpc.AuditServiceStub(audit)
        self._timeout = timeout

    async def users(self, account_id: int, after_user_id: int) -> tuple[list[dict[str, Any]], int]:
        got = await self._call(self._identity.ListAccountUsers, identity_service_pb2.ListAccountUsersRequest(
            account_id=account_id, after_user_id=after_user_id, page_size=PAGE))
        return [_record(u) for u in got.users], got.next_after_user_id

    async def api_keys(self, account_id: int, page_token: str) -> tuple[list[dict[str, Any]], str]:
        got = await self._call(self._keys.ListAccountApiKeys, keys_service_pb2.ListAccountApiKeysRequest(
            account_id=account_id, page_size=PAGE, page_token=page_token))
        return [_record(k) for k in got.api_keys], got.next_page_token

    async def alert_rules(self, account_id: int) -> list[dict[str, Any]]:
        got = await self._call(self._audit.ListAccountAlertRules,
                               audit_service_pb2.ListAccountAlertRulesRequest(account_id=account_id))
        return [_record(r) for r in got.rules]

    async def audit_events(self, account_id: int, cursor: str) -> tuple[str, str, bool]:
        got = await self._call(self._audit.ExportAccountEvents, audit_service_pb2.ExportAccountEventsRequest(
            account_id=account_id, cursor=cursor, page_size=AUDIT_PAGE))
        return got.data, got.next_cursor, got.complete

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise ExportPeerUnavailable(f"a service the export reads is unavailable ({err.code().name})") from None
            raise


def open_export_peers(settings: Settings, stack: contextlib.AsyncExitStack) -> ExportPeers | None:
    """None when identity or audit is not configured (exports then fail with EXPORT_NOT_CONFIGURED)."""
    if not settings.identity_addr or not settings.audit_addr:
        return None
    channels = []
    for addr, name in ((settings.identity_addr, "identity"), (settings.keys_addr, "keys"),
                       (settings.audit_addr, "audit")):
        channel = secure_channel(addr, tls_of(settings), server_name=name)
        stack.push_async_callback(channel.close)
        channels.append(channel)
    return ExportPeers(*channels)


class ExportNotConfigured(Unavailable):
    reason = "EXPORT_NOT_CONFIGURED"


class UnconfiguredPeers:
    """Where the export's peers are when IDENTITY_ADDR or AUDIT_ADDR is unset (development): every export fails."""

    async def users(self, account_id: int, after_user_id: int) -> tuple[list[dict[str, Any]], int]:
        raise ExportNotConfigured("exports need IDENTITY_ADDR and AUDIT_ADDR")

    async def api_keys(self, account_id: int, page_token: str) -> tuple[list[dict[str, Any]], str]:
        raise ExportNotConfigured("exports need IDENTITY_ADDR and AUDIT_ADDR")

    async def alert_rules(self, account_id: int) -> list[dict[str, Any]]:
        raise ExportNotConfigured("exports need IDENTITY_ADDR and AUDIT_ADDR")

    async def audit_events(self, account_id: int, cursor: str) -> tuple[str, str, bool]:
        raise ExportNotConfigured("exports need IDENTITY_ADDR and AUDIT_ADDR")
