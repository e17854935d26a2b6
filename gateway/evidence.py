"""Evidence: exactly one audit event per request, built from what the request state says; unauthenticated
failures go through `gateway.unauth` (limited and summarised) before the permanent log."""

from __future__ import annotations

import logging
import time
import uuid

from aiohttp import web

from gateway.request_state import RequestState
from gateway.unauth import UnauthenticatedRequests
from sendsafe.audit.v1 import event_pb2
from svckit.audit import AuditClient

_LOG = logging.getLogger(__name__)

MAX_AUDITED_PATH = 256


class Evidence:
    def __init__(self, audit: AuditClient, unauth: UnauthenticatedRequests, service: str) -> None:
        self._audit = audit
        self._unauth = unauth
        self._service = service

    async def record(self, request: web.Request, state: RequestState, status: int, trace_id: str) -> None:
        try:
            event = self._event(request, state, status, trace_id)
            if state.unauthenticated:  # limited and summarised before it reaches the permanent log
                await self._unauth.record(event, always_summarise=state.rate_limited)
            else:
                await self._audit.record(event)
        except Exception:  # never fail the request because of the audit client's buffer
            _LOG.exception("could not queue the audit event")

    def _event(self, request: web.Request, state: RequestState, status: int, trace_id: str) -> event_pb2.Event:
        route = state.route
        err = state.error
        if route is None:
            action = "gateway.not_found"
            resource = request.path[:MAX_AUDITED_PATH]
        elif state.auth_failure is not None:
            action = "gateway.unauthenticated"
            resource = route.template
        else:
            action = f"gateway.{route.rpc_name}"
            resource = route.template
        if status < 400:
            outcome = event_pb2.OUTCOME_SUCCESS
        elif status in (401, 403):
            outcome = event_pb2.OUTCOME_DENIED
        else:
            outcome = event_pb2.OUTCOME_FAILURE
        details = {
            "http_status": str(status),
            "method": request.method,
            "route": route.template if route is not None else "",
            "rpc": route.rpc_path if route is not None else "",
        }
        if state.upstream_code:
            details["grpc_status"] = state.upstream_code
        now = time.time_ns()
        ev = event_pb2.Event(
            event_id=uuid.uuid4().hex,
            action=action,
            outcome=outcome,  # type: ignore[arg-type]
            error_reason=err.reason if err is not None else "",
            request_id=state.request_id,
            trace_id=trace_id,
            service=self._service,
            details=details,
        )
        ev.event_time.seconds, ev.event_time.nanos = divmod(now, 1_000_000_000)
        ev.resource.type = "http_route"
        ev.resource.id = resource
        ident = state.identity
        if ident is not None:
            ev.actor.type = "staff" if ident.staff else "user"
            ev.actor.id = str(ident.user_id)
            ev.actor.account_id = ident.account_id
            ev.actor.auth_method = ident.auth_method_name
            ev.actor.api_key_id = ident.api_key_id
            ev.actor.session_id = ident.session_id
        else:
            ev.actor.type = "anonymous"
            failure = state.auth_failure
            if failure is not None:
                # A real key used with the wrong username (say) is evidence for that key's account.
                ev.actor.account_id = failure.account_id
                ev.actor.api_key_id = failure.api_key_id
                ev.actor.auth_method = "api_key" if failure.api_key_id else ""
                ev.details["auth_detail"] = failure.detail
        ev.source.client_address = state.conn.client_address
        ev.source.user_agent = state.conn.user_agent
        ev.source.tls_version = state.conn.tls_version
        ev.source.tls_cipher = state.conn.tls_cipher
        return ev
