"""Outbound dependencies of the messaging service: the keys service (through svckit.envelope) and audit."""

from __future__ import annotations

import contextlib

from sendsafe.audit.v1 import event_pb2
from sendsafe.keys.v1 import keys_service_pb2_grpc
from services.messaging.config import Settings
from svckit.audit import AuditClient
from svckit.envelope import Envelope, KeysStubSource, follow_key_notices
from svckit.rpc import secure_channel
from svckit.tls import TlsFiles


def tls_of(settings: Settings) -> TlsFiles:
    return TlsFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)


async def open_envelope(settings: Settings, stack: contextlib.AsyncExitStack) -> Envelope:
    """Envelope encryption with data keys from the keys service (mTLS, per-call deadlines)."""
    channel = secure_channel(settings.keys_addr, tls_of(settings), server_name="keys")
    stack.push_async_callback(channel.close)
    envelope = Envelope(KeysStubSource(keys_service_pb2_grpc.KeysServiceStub(channel)),
                        ttl_seconds=settings.data_key_ttl_seconds)
    # Rotation and destruction of an account's keys clear its cached data keys at once (keys notices).
    follow_key_notices(envelope, settings.redis_url, settings.redis_prefix, stack)
    return envelope


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
