"""The authorization matrix: every external RPC the protos declare x every kind of caller, end to end through the
HTTPS gateway against the real suite.

The rows come from the descriptors (`discover_routes`), so a new RPC is covered without editing this file. The
expected outcome of a row comes only from the RPC's declaration (`svckit.access.access_for`: permission, privileged,
public, session_only, data_out) and the permission tables (svckit.permissions' PERMISSION_FLAGS and
ROLE_PERMISSIONS, the key's scopes):

- the credential lacks the permission: 403, MISSING_PERMISSION, or API_KEY_SCOPE when the key's owner holds it;
- a `session_only` RPC (one's own sessions, second factors, password) with an API key: 403 SESSION_REQUIRED;
- a de-identified user on an RPC that sets a standing destination (DATA_OUT_DESTINATION): 403 DEIDENTIFIED_USER;
- a privileged RPC on a session whose second factor is not recent: 401 with the RFC 9470 step-up challenge;
- otherwise the call passes authorization: any answer but 401/403 (the calls carry ids that do not exist and an
  empty JSON body -- with the caller's own password where the request asks for it again -- so nothing real
  changes);
- a public RPC (login) answers every caller exactly as it answers a caller without credentials.

Every call lands in an account of its own in test mode (test hooks allowed, nothing sent or charged). The actors
(tests/security/actors.py) are made once per module; calls on the caller's own session get a fresh one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest
from google.protobuf import descriptor

from gateway.errors import STEP_UP_REASON, forbidden
from gateway.routes import Route, discover_routes
from gateway.surface import Surface
from svckit.access import DEIDENTIFIED_USER, SESSION_REQUIRED, access_for
from tests.e2e.api_client import Http, Response
from tests.security.actors import ACTOR_KINDS, Actor, Actors, reauthentication

ROUTES: list[Route] = discover_routes()
PASSES = "passes authorization"
PUBLIC = "same answer as without credentials"
_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)(?:=[^{}]*)?\}")
# Ids that exist nowhere: big enough never to be issued in a test run, small enough for any integer field.
_MISSING_INT = "987654321"
_MISSING_STR = "mx-missing-0"


@dataclass(frozen=True)
class Expect:
    outcome: str  # PASSES, PUBLIC, or "refused"
    status: int = 0
    reason: str = ""


def expected(route: Route, actor: Actor) -> Expect:
    access = access_for(route.rpc_path)
    assert access is not None, route.rpc_path
    if access.public:
        return Expect(PUBLIC)
    if access.permission not in actor.permissions:
        scoped_out = access.permission in actor.owner_permissions
        return Expect("refused", 403, "API_KEY_SCOPE" if scoped_out else "MISSING_PERMISSION")
    if access.session_only and not actor.session:
        return Expect("refused", 403, SESSION_REQUIRED)
    if actor.deidentified and access.sets_destination:
        return Expect("refused", 403, DEIDENTIFIED_USER)
    if access.privileged and actor.session and not actor.fresh_mfa:
        return Expect("refused", 401, STEP_UP_REASON)
    return Expect(PASSES)


def _row_id(route: Route, kind: str) -> str:
    return f"{route.service}.{route.rpc_name}-{route.http_method}-{route.template}-{kind}"


ROWS = [(route, kind) for route in ROUTES for kind in ACTOR_KINDS]


@pytest.fixture(scope="module")
def anonymous_answers() -> dict[str, Response]:
    return {}


@pytest.mark.parametrize(("route", "kind"), ROWS, ids=[_row_id(r, k) for r, k in ROWS])
def test_matrix(route: Route, kind: str, actors: Actors, http: Http, anonymous_answers: dict[str, Response]) -> None:
    actor = actors.for_row(kind, route)
    want = expected(route, actor)
    got = call(http, route, actor.headers, actor.password)
    where = f"{route.http_method} {route.template} as {kind}: expected {want.outcome} {want.status or ''} " \
            f"{want.reason}, got {got.status} {got.body[:300]!r}"
    assert not _route_missed(got), f"the request did not reach the route; {where}"
    if want.outcome == PUBLIC:
        if route.key not in anonymous_answers:
            anonymous_answers[route.key] = call(http, route, {})
        anonymous = anonymous_answers[route.key]
        assert got.status != 403 and not _step_up_challenge(got), where
        assert (got.status, _reason(route, got)) == (anonymous.status, _reason(route, anonymous)), where
    elif want.outcome == PASSES:
        assert got.status not in (401, 403), where
    else:
        assert got.status == want.status, where
        if want.status == 401:
            assert _step_up_challenge(got), f"no RFC 9470 challenge; {where}"
        _assert_reason(route, got, want, where)


def call(http: Http, route: Route, headers: dict[str, str], password: str = "") -> Response:
    """The route with harmless values: ids that do not exist in the path, an empty JSON object as the body (but
    for the caller's own password where the request asks for it again)."""
    path = _VAR.sub(lambda m: _missing(route.input_desc, m.group(1)), route.template)
    if route.body:
        body = reauthentication(route.input_desc, password) if route.body == "*" else {}
        return http.call(route.http_method, path, headers=headers, json_body=body)
    return http.call(route.http_method, path, headers=headers)


def _missing(message: descriptor.Descriptor, dotted: str) -> str:
    field: Any = None
    for name in dotted.split("."):
        field = message.fields_by_name[name]
        message = field.message_type
    return _MISSING_STR if field.type == descriptor.FieldDescriptor.TYPE_STRING else _MISSING_INT


def _body(r: Response) -> dict[str, Any]:
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _reason(route: Route, r: Response) -> str:
    """The stable reason (/v1) or the ClickSend response_code (/v3, whose envelope has no reason)."""
    body = _body(r)
    if route.surface is Surface.CLICKSEND:
        return str(body.get("response_code", ""))
    return str(body.get("error", {}).get("reason", ""))


def _assert_reason(route: Route, got: Response, want: Expect, where: str) -> None:
    if route.surface is not Surface.CLICKSEND:
        assert _reason(route, got) == want.reason, where
        return
    # The ClickSend envelope carries no reason: its code, and for the gateway's permission refusals the message
    # that names the missing permission and why.
    body = _body(got)
    assert body.get("http_code") == want.status, where
    assert body.get("response_code") == ("FORBIDDEN" if want.status == 403 else "UNAUTHORIZED"), where
    access = access_for(route.rpc_path)
    assert access is not None
    if want.reason in ("MISSING_PERMISSION", "API_KEY_SCOPE"):
        refusal = forbidden(access.permission, outside_scope=want.reason == "API_KEY_SCOPE")
        assert body.get("response_msg") == refusal.message, where


def _step_up_challenge(r: Response) -> bool:
    return 'error="insufficient_user_authentication"' in r.headers.get("www-authenticate", "")


def _route_missed(r: Response) -> bool:
    """The gateway's own 404/405 (no route for this method and path): the row would test nothing."""
    if r.status == 405:
        return True
    return r.status == 404 and _body(r).get("error", {}).get("reason") == "ROUTE_NOT_FOUND"
