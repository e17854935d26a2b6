"""The audit service: the batching audit client, or nowhere when no audit service is configured."""

from __future__ import annotations

import contextlib

from sendsafe.audit.v1 import event_pb2
from services.messaging.config import Settings, tls_of
from svckit.audit import AuditClient
from svckit.rpc import secure_channel


async def open_audit(settings: Settings, stack: contextlib.AsyncExitStack) -> AuditClient | None:
    """The batching audit client, or None when no audit service is configured (AUDIT_ADDR empty)."""
    if not settings.audit_addr:
        return None
    channel = secure_channel(settings.audit_addr, tls_of(settings), server_name="audit")
    stack.push_async_callback(channel.close)
    client = AuditClient(channel)
    client.start()
    stack.push_async_callback(client.close)
    return client


async def discard(_event: event_pb2.Event) -> None:
    """Where audit events go when no audit service is configured (development only)."""
