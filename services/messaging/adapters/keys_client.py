"""The keys service: envelope encryption with data keys from keys (through svckit.envelope), whose
cached keys Redis notices clear on rotation and destruction."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence

from sendsafe.keys.v1 import keys_service_pb2_grpc
from services.messaging.config import Settings, tls_of
from svckit.envelope import Envelope, KeysStubSource, follow_key_notices
from svckit.envelope_rewrap import RewrapColumn, RewrapProgress, rewrap_pass
from svckit.rpc import secure_channel


async def open_envelope(settings: Settings, stack: contextlib.AsyncExitStack) -> Envelope:
    """Envelope encryption with data keys from the keys service (mTLS, per-call deadlines)."""
    channel = secure_channel(settings.keys_addr, tls_of(settings), server_name="keys")
    stack.push_async_callback(channel.close)
    envelope = Envelope(KeysStubSource(keys_service_pb2_grpc.KeysServiceStub(channel)),
                        ttl_seconds=settings.data_key_ttl_seconds)
    # Rotation and destruction of an account's keys clear its cached data keys at once (keys notices).
    follow_key_notices(envelope, settings.redis_url, settings.redis_prefix, stack)
    return envelope


def open_rewrap(
    settings: Settings, stack: contextlib.AsyncExitStack, envelope: Envelope, columns: Sequence[RewrapColumn]
) -> Callable[[], Awaitable[dict[str, RewrapProgress]]]:
    """One rewrap pass over messaging's encrypted columns, reported to keys (which retires a key version only
    once every data owner's pass shows nothing left under it)."""
    channel = secure_channel(settings.keys_addr, tls_of(settings), server_name="keys")
    stack.push_async_callback(channel.close)
    stub = keys_service_pb2_grpc.KeysServiceStub(channel)

    async def rewrap() -> dict[str, RewrapProgress]:
        return await rewrap_pass(envelope, columns, stub)

    return rewrap
