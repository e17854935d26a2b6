"""What the gateway learns about one request while serving it, shared by the edge middleware, the route
dispatcher and the audit evidence (`request[STATE]`)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.auth import AuthFailure, Identity
from gateway.errors import GatewayError
from gateway.principal import Connection
from gateway.routes import Route


@dataclass
class RequestState:
    request_id: str
    conn: Connection
    route: Route | None = None
    identity: Identity | None = None
    auth_failure: AuthFailure | None = None
    error: GatewayError | None = None
    upstream_code: str = ""
    unauthenticated: bool = False  # failed authentication, or no route and no credentials checked (gateway.unauth)
    rate_limited: bool = False


STATE = web.RequestKey("sendsafe_state", RequestState)
