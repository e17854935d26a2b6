"""Outbound gRPC channels: mTLS, request-id propagation, default deadlines."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from svckit import context as callctx
from svckit.tls import TlsFiles, channel_credentials

DEFAULT_TIMEOUT = 5.0


class _ContextInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds the request id of the call being served and a deadline when the caller set none."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        metadata = grpc.aio.Metadata(*(client_call_details.metadata or ()))
        rid = callctx.request_id()
        if rid and callctx.REQUEST_ID_METADATA_KEY not in metadata:
            metadata.add(callctx.REQUEST_ID_METADATA_KEY, rid)
        details = grpc.aio.ClientCallDetails(
            method=client_call_details.method,
            timeout=client_call_details.timeout if client_call_details.timeout is not None else self._timeout,
            metadata=metadata,
            credentials=client_call_details.credentials,
            wait_for_ready=client_call_details.wait_for_ready,
        )
        return await continuation(details, request)


def secure_channel(
    address: str, tls: TlsFiles, *, server_name: str, timeout: float = DEFAULT_TIMEOUT
) -> grpc.aio.Channel:
    """A channel to `address` that verifies the server certificate for DNS name `server_name`."""
    return grpc.aio.secure_channel(
        address,
        channel_credentials(tls),
        options=[
            ("grpc.ssl_target_name_override", server_name),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ],
        interceptors=[_ContextInterceptor(timeout)],
    )
