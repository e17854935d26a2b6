"""Outbound gRPC channels: mTLS, request-id and trace propagation, default deadlines, rotated certificates.

Every call made through a channel from `secure_channel` carries the request id of the call being served
and the W3C trace context (see `svckit.telemetry`), and a unary call without a timeout gets the channel's
default deadline. This is done where the call is made (`_Follow`), not by a grpc.aio client interceptor:
an interceptor wraps every call in extra objects and a task, which cost more than the call itself here.

A grpc channel keeps the client certificate and CA it was built with, so `secure_channel` returns a
`ReloadingChannel`: at most every `reload_check_seconds` (on a call) it stats the certificate files;
once they changed to a consistent set it builds a new channel for the calls that follow and closes the
old one gracefully (calls in flight finish on it). Stubs built on it never need rebuilding.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from svckit import context as callctx
from svckit import telemetry
from svckit.tls import TlsFiles, TlsMaterial, TlsWatcher, material_channel_credentials

DEFAULT_TIMEOUT = 5.0
RELOAD_CHECK_SECONDS = 5.0
RETIRE_GRACE_SECONDS = 30.0

_LOG = logging.getLogger(__name__)


class ReloadingChannel(grpc.aio.Channel):
    """A `grpc.aio.Channel` that rebuilds its underlying channel when the TLS files change."""

    def __init__(
        self,
        build: Callable[[TlsMaterial], grpc.aio.Channel],
        tls: TlsFiles,
        *,
        name: str,
        timeout: float = DEFAULT_TIMEOUT,
        reload_check_seconds: float = RELOAD_CHECK_SECONDS,
        retire_grace_seconds: float = RETIRE_GRACE_SECONDS,
    ) -> None:
        self._build = build
        self._watcher = TlsWatcher(tls)
        self._name = name
        self.timeout = timeout  # the deadline of a unary call that sets none
        self._check_every = reload_check_seconds
        self._grace = retire_grace_seconds
        self._next_check = time.monotonic() + reload_check_seconds
        self._channel = build(self._watcher.material)
        self._retiring: set[asyncio.Task[None]] = set()
        self._closed = False
        self.generation = 0  # how many times the channel was rebuilt

    def current(self) -> grpc.aio.Channel:
        """The channel new calls go to, after a (rate-limited) look at the certificate files."""
        now = time.monotonic()
        if now >= self._next_check and not self._closed:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop to close the old channel on: look again on the next call
                return self._channel
            self._next_check = now + self._check_every
            material = self._watcher.poll()
            if material is not None:
                self._replace(material, loop)
        return self._channel

    def _replace(self, material: TlsMaterial, loop: asyncio.AbstractEventLoop) -> None:
        old, self._channel = self._channel, self._build(material)
        self.generation += 1
        task = loop.create_task(old.close(self._grace), name=f"retire-channel-{self._name}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        _LOG.info("tls client certificate reloaded for %s", self._name, extra={"event": "tls.client_reloaded"})

    async def retired(self) -> None:
        """Wait until every replaced channel has closed (its calls finished or the grace ran out)."""
        while self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def close(self, grace: float | None = None) -> None:
        self._closed = True
        await self._channel.close(grace)
        await self.retired()

    async def __aenter__(self) -> ReloadingChannel:
        return self

    async def __aexit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        await self.close(None)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self.current().get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self.current().wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self.current().channel_ready()

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    _registered_method: bool | None = False) -> Any:
        return _Follow(self, "unary_unary", method, request_serializer, response_deserializer, _registered_method)

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return _Follow(self, "unary_stream", method, request_serializer, response_deserializer, _registered_method)

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return _Follow(self, "stream_unary", method, request_serializer, response_deserializer, _registered_method)

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                      _registered_method: bool | None = False) -> Any:
        return _Follow(self, "stream_stream", method, request_serializer, response_deserializer, _registered_method)


class _Follow:
    """A multi-callable bound to whatever channel `ReloadingChannel.current()` is at call time."""

    __slots__ = ("_args", "_bound", "_kind", "_owner")

    def __init__(self, owner: ReloadingChannel, kind: str, method: str, *args: Any) -> None:
        self._owner = owner
        self._kind = kind
        self._args = (method, *args)
        self._bound: tuple[grpc.aio.Channel, Any] | None = None

    def __call__(self, request: Any, *, timeout: float | None = None, metadata: Any = None, **kwargs: Any) -> Any:
        channel = self._owner.current()
        bound = self._bound
        if bound is None or bound[0] is not channel:
            method, ser, deser, registered = self._args
            call = getattr(channel, self._kind)(
                method, request_serializer=ser, response_deserializer=deser, _registered_method=registered
            )
            bound = self._bound = (channel, call)
        if timeout is None and self._kind == "unary_unary":
            timeout = self._owner.timeout
        return bound[1](request, timeout=timeout, metadata=_outgoing(metadata), **kwargs)


def _outgoing(metadata: Any) -> Any:
    """The caller's metadata plus the request id being served and the trace context."""
    extra = telemetry.outgoing_trace_metadata()
    rid = callctx.request_id()
    if not extra and not rid:
        return metadata
    out = list(metadata or ())
    if rid and all(k != callctx.REQUEST_ID_METADATA_KEY for k, _ in out):
        out.append((callctx.REQUEST_ID_METADATA_KEY, rid))
    out.extend(extra)
    return out


def secure_channel(
    address: str,
    tls: TlsFiles,
    *,
    server_name: str,
    timeout: float = DEFAULT_TIMEOUT,
    reload_check_seconds: float = RELOAD_CHECK_SECONDS,
) -> ReloadingChannel:
    """A channel to `address` that verifies the server certificate for DNS name `server_name` and
    follows rotations of `tls` (checked at most every `reload_check_seconds`, on a call). `address` is a
    gRPC target: `host:port`, or several backends (`ipv4:h:p1,h:p2`, `dns:///name:port`) used round robin."""
    def build(material: TlsMaterial) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(
            address,
            material_channel_credentials(material),
            options=[
                ("grpc.ssl_target_name_override", server_name),
                # A target naming several backends (`ipv4:h:p1,h:p2`, or `dns:///` of a headless Service)
                # gets every call spread over all of them, not the first connection's backend only.
                ("grpc.lb_policy_name", "round_robin"),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ],
        )

    return ReloadingChannel(build, tls, name=f"{server_name} ({address})", timeout=timeout,
                            reload_check_seconds=reload_check_seconds)
