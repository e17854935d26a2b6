"""One route: the per-route handler built from the route's descriptors (no gateway code per route).

body-size cap -> authentication -> the route's permission (and RFC 9470 step-up for privileged routes on a
session) -> JSON/query/path -> proto -> the gRPC call with the principal in `x-sendsafe-principal-bin` ->
proto -> JSON (the ClickSend envelope on /v3). Calls of an RPC that declares `coalesce` (SendSms) made at about
the same time travel to the service together in one batch call, each still checked and answered alone
(`svckit.batching`). A streamed route (server-streaming `google.api.HttpBody`) is
written out chunk by chunk instead (`gateway.streaming`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web
from google.api import httpbody_pb2

from gateway import compat_clicksend
from gateway.auth import Authenticator, Identity, second_factor_within
from gateway.config import Settings
from gateway.errors import (
    JSON_CONTENT_TYPE,
    GatewayError,
    body_too_large,
    deidentified_user,
    dumps,
    forbidden,
    from_rpc_error,
    step_up_required,
)
from gateway.principal import anonymous_principal, build_principal
from gateway.request_state import STATE, RequestState
from gateway.routes import Route
from gateway.streaming import serve_stream
from gateway.surface import Surface
from gateway.transcode.body import parse_json
from gateway.transcode.fields import message_class
from gateway.transcode.request import build_request
from gateway.transcode.response import message_to_json
from sendsafe.context.v1 import principal_pb2
from svckit import context as callctx
from svckit.access import access_for, destination_refused
from svckit.batching import Coalescer
from svckit.telemetry import trace_headers

_LOG = logging.getLogger(__name__)

# A client's retry key for non-idempotent calls (SendSms), forwarded to the service as gRPC metadata.
IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_METADATA_KEY = "idempotency-key"
MAX_IDEMPOTENCY_KEY = 256

UnaryCall = Callable[..., Awaitable[Any]]


class Dispatcher:
    """The gRPC method of every route, and the aiohttp handler that serves it (`mount`)."""

    def __init__(
        self,
        settings: Settings,
        routes: list[Route],
        channels: dict[str, grpc.aio.Channel],
        authenticator: Authenticator,
    ) -> None:
        self._settings = settings
        self._routes = routes
        self._auth = authenticator
        self._timeout = settings.upstream_timeout_seconds
        self._max_body = settings.max_body_bytes
        self._calls: dict[str, UnaryCall] = {}
        self._by_aiohttp_route: dict[Any, Route] = {}
        # Concurrent calls of a route whose RPC declares `coalesce` travel together (svckit.batching).
        self._coalescers: dict[str, Coalescer] = {
            route.service: Coalescer(channels[route.service], timeout=self._timeout,
                                     max_batch=settings.coalesce_max_batch,
                                     max_in_flight=settings.coalesce_max_in_flight)
            for route in routes if route.coalesce and settings.coalesce_max_batch > 1
        }
        for route in routes:
            output_cls = message_class(route.output_desc)
            make = channels[route.service].unary_stream if route.streaming else channels[route.service].unary_unary
            self._calls[route.key] = make(
                route.rpc_path,
                request_serializer=_serialize,
                response_deserializer=output_cls.FromString,
            )

    def mount(self, app: web.Application) -> None:
        """Add every route to `app`'s router."""
        for route in self._routes:
            aroute = app.router.add_route(route.http_method, route.aiohttp_path, self._handler_for(route))
            self._by_aiohttp_route[aroute] = route

    def route_of(self, request: web.Request) -> Route | None:
        """The route `request` matched (None: no route, or a method it does not have)."""
        return self._by_aiohttp_route.get(request.match_info.route)

    def _handler_for(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._serve(route, request)

        handler.__name__ = f"serve_{route.rpc_name}"
        return handler

    async def _serve(self, route: Route, request: web.Request) -> web.StreamResponse:
        state = request[STATE]
        length = request.content_length
        if length is not None and length > self._max_body:
            raise body_too_large(self._max_body)

        identity: Identity | None = None
        if not route.public:  # public routes (login) take no credentials and do their own throttling
            identity = await self._auth.authenticate(
                request.headers.get("Authorization"), state.request_id, state.conn.client_address
            )
            state.identity = identity
            if route.permission not in identity.permissions:
                raise forbidden(route.permission, outside_scope=route.permission in identity.outside_scope)
            if route.privileged and identity.auth_method == principal_pb2.AUTH_METHOD_SESSION:
                identity = await self._recent_second_factor(route, request, state)
            access = access_for(route.rpc_path)  # declared, or there would be no route
            if access is not None and destination_refused(access, identity.sms_deidentify_message):
                raise deidentified_user()

        body: Any = None
        upload: bytes | None = None
        if route.body:
            raw = await self._read_body(request)
            if route.upload:  # google.api.HttpBody: the bytes as sent, with their content type
                upload = raw
            elif raw.strip():
                if not _is_json(request.content_type):
                    raise GatewayError(
                        415, "INVALID_ARGUMENT", "UNSUPPORTED_MEDIA_TYPE", "Send the request body as application/json."
                    )
                body = parse_json(raw)
        path_params = {route.path_vars[k]: v for k, v in request.match_info.items() if k in route.path_vars}
        msg = build_request(
            route.input_desc, route.surface, body=body, body_field=route.body,
            query=request.query.items(), path_params=path_params,
        )
        if upload is not None:
            getattr(msg, route.body).MergeFrom(httpbody_pb2.HttpBody(content_type=request.content_type, data=upload))

        principal = (
            build_principal(identity, state.conn, state.request_id)
            if identity is not None
            else anonymous_principal(state.conn, state.request_id)
        )
        metadata: tuple[tuple[str, str | bytes], ...] = (
            (callctx.PRINCIPAL_METADATA_KEY, principal.SerializeToString()),
            (callctx.REQUEST_ID_METADATA_KEY, state.request_id),
        )
        idempotency_key = request.headers.get(IDEMPOTENCY_HEADER, "")
        if idempotency_key:  # the service validates it (the header is forwarded as is, never logged)
            metadata += ((IDEMPOTENCY_METADATA_KEY, idempotency_key[:MAX_IDEMPOTENCY_KEY]),)
        if route.streaming:  # a download (google.api.HttpBody messages), written as it comes
            return await serve_stream(request, state, self._calls[route.key], msg, metadata, self._timeout)
        coalescer = self._coalescers.get(route.service) if route.coalesce else None
        try:
            if coalescer is not None:  # its own trace headers: the batch call carries only the batch's
                raw = await coalescer.call(route.rpc_path, msg.SerializeToString(), (*metadata, *trace_headers()))
                reply = message_class(route.output_desc).FromString(raw)
            else:
                reply = await self._calls[route.key](msg, metadata=metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            state.upstream_code = err.code().name
            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL):
                _LOG.warning("%s failed upstream: %s %s", route.rpc_path, err.code().name, err.details())
            raise from_rpc_error(err) from None
        if route.surface is Surface.CLICKSEND:
            out = compat_clicksend.success_envelope(route, reply)
        else:
            out = message_to_json(reply, route.surface)
        return web.Response(status=200, body=dumps(out), content_type=JSON_CONTENT_TYPE)

    async def _recent_second_factor(self, route: Route, request: web.Request, state: RequestState) -> Identity:
        """RFC 9470 step-up for every privileged route called with a session (API keys are machine credentials:
        scope them instead): a second factor verified within max_age, else 401 with the challenge. A cached
        principal may predate a step-up, so a stale one is resolved afresh once before the challenge."""
        max_age = self._settings.step_up_max_age_seconds
        identity = state.identity
        assert identity is not None
        if second_factor_within(identity, max_age):
            return identity
        identity = await self._auth.reauthenticate(
            request.headers.get("Authorization"), state.request_id, state.conn.client_address
        )
        state.identity = identity
        if route.permission not in identity.permissions:
            raise forbidden(route.permission)
        if not second_factor_within(identity, max_age):
            raise step_up_required(max_age)
        return identity

    async def _read_body(self, request: web.Request) -> bytes:
        try:
            return await request.read()  # bounded by client_max_size
        except web.HTTPRequestEntityTooLarge:
            raise body_too_large(self._max_body) from None


def _serialize(msg: Any) -> bytes:
    data: bytes = msg.SerializeToString()
    return data


def _is_json(content_type: str) -> bool:
    return content_type == JSON_CONTENT_TYPE or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )
