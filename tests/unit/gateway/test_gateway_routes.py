"""The route table comes from the descriptors, and only external RPCs are reachable."""

from __future__ import annotations

import pytest

from gateway.routes import RouteError, _aiohttp_path, discover_routes
from gateway.surface import Surface
from svckit.access import access_for


@pytest.fixture(scope="module")
def table() -> dict[str, object]:
    return {r.key: r for r in discover_routes()}


def test_expected_routes(table: dict) -> None:
    assert {"POST /v3/sms/send", "GET /v3/sms/history", "GET /v3/account", "GET /v1/audit/events"} <= set(table)
    send = table["POST /v3/sms/send"]
    assert send.rpc_path == "/sendsafe.messaging.v1.MessagingService/SendSms"
    assert send.service == "messaging" and send.permission == "sms.send" and send.body == "*"
    assert send.surface is Surface.CLICKSEND and send.response_msg == "Messages queued for delivery."
    assert table["GET /v3/account"].service == "identity"
    assert table["GET /v3/account"].response_msg == "Here's your account"
    events = table["GET /v1/audit/events"]
    assert events.surface is Surface.V1 and events.permission == "audit.read" and events.service == "audit"


def test_no_internal_rpc_is_routed(table: dict) -> None:
    rpcs = {r.rpc_name for r in table.values()}
    for internal in ("VerifyApiKey", "IssueApiKey", "GenerateDataKey", "DecryptDataKey", "GetUser",
                     "CreateAccount", "AppendEvents", "GetBalance"):
        assert internal not in rpcs


def test_every_route_allows_the_gateway_and_names_a_permission(table: dict) -> None:
    for route in table.values():
        access = access_for(route.rpc_path)
        assert access is not None and "gateway" in access.allowed_callers
        assert route.permission == access.permission
        assert route.public == (route.permission == "")  # public routes (login) only


def test_path_templates() -> None:
    cancel = "/v3/sms/{message_id}/cancel"
    assert _aiohttp_path(cancel, "x") == (cancel, {"message_id": "message_id"})
    assert _aiohttp_path("/v1/a/{thing.id}", "x") == ("/v1/a/{thing__id}", {"thing__id": "thing.id"})
    assert _aiohttp_path("/v1/files/{path=**}", "x") == ("/v1/files/{path:.+}", {"path": "path"})
    with pytest.raises(RouteError):
        _aiohttp_path("/v1/a/{name=shelves/*}", "x")
    with pytest.raises(RouteError):
        _aiohttp_path("/v1/a/{id", "x")


def test_only_http_body_streams_are_streamed_routes(table: dict) -> None:
    download = table["GET /v1/account/exports/{export_id}/download"]
    assert download.streaming and download.output_desc.full_name == "google.api.HttpBody"
    assert download.service == "messaging" and download.privileged and download.permission == "account.export"
    assert [r.key for r in table.values() if r.streaming] == [download.key]  # every other route is unary
