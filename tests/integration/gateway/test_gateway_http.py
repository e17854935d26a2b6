"""The gateway over real HTTPS in front of fake backends over real mTLS: envelopes, errors, auth,
principal forwarding, tracing and audit."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import uuid

import aiohttp
import pytest
from opentelemetry.trace import SpanKind

from gateway.app import build
from gateway.edge import SECURITY_HEADERS
from sendsafe.audit.v1 import event_pb2
from sendsafe.context.v1 import principal_pb2
from tests.integration.gateway.gw_support import (
    ALICE,
    ALICE_KEY,
    INACTIVE_KEY,
    MAX_BODY,
    READER_KEY,
    Backends,
    RunningGateway,
    basic,
)
from tests.support import CertBundle

SEND = {"messages": [{"to": "+61411111111", "body": "hello there", "source": "test"}]}
TRACEPARENT_RE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


async def _call(
    http: aiohttp.ClientSession, gw: RunningGateway, method: str, path: str, **kw
) -> tuple[aiohttp.ClientResponse, dict]:
    async with http.request(method, gw.url + path, **kw) as resp:
        body = await resp.read()
        return resp, json.loads(body) if body else {}


async def _event(backends: Backends, gw: RunningGateway, request_id: str) -> event_pb2.Event:
    await gw.gateway.audit.flush(timeout=5)
    (event,) = backends.audit.by_request(request_id)
    return event


def _assert_security_headers(resp: aiohttp.ClientResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert resp.headers.get(name) == value, name
    assert re.fullmatch(r"[A-Za-z0-9-]{8,64}", resp.headers["X-Request-Id"])
    assert TRACEPARENT_RE.fullmatch(resp.headers["traceparent"])


async def test_send_sms_envelope_and_types(http, gw, gw_backends) -> None:
    resp, body = await _call(http, gw, "POST", "/v3/sms/send", json=SEND, headers=ALICE)
    assert resp.status == 200
    _assert_security_headers(resp)
    assert list(body) == ["http_code", "response_code", "response_msg", "data"]
    assert body["http_code"] == 200 and body["response_code"] == "SUCCESS"
    assert body["response_msg"] == "Messages queued for delivery."
    data = body["data"]
    assert type(data["total_count"]) is int and isinstance(data["total_price"], float)
    msg = data["messages"][0]
    assert msg["from"] == "SendSafe" and msg["message_price"] == "0.0770" and type(msg["date"]) is int
    assert data["_currency"]["currency_name_short"] == "AUD"
    assert gw_backends.rec.last("SendSms").request.messages[0].body == "hello there"


async def test_history_and_account(http, gw) -> None:
    resp, body = await _call(http, gw, "GET", "/v3/sms/history?page=1&limit=15", headers=ALICE)
    assert resp.status == 200 and body["response_msg"] == "Here are your history messages."
    page = body["data"]
    assert page["from"] == 1 and page["to"] == 2 and page["next_page_url"] is None
    first, second = page["data"]
    assert first["error_code"] is None and second["error_code"] == ""
    assert first["_api_username"] == "alice" and first["status_code"] == "200"
    resp, body = await _call(http, gw, "GET", "/v3/account", headers=ALICE)
    assert resp.status == 200 and body["response_msg"] == "Here's your account"
    assert body["data"]["_subaccount"]["notes"] is None and body["data"]["account"] == 42


async def test_v1_route_plain_body(http, gw, gw_backends) -> None:
    await _call(http, gw, "GET", "/v3/account", headers=ALICE)
    await gw.gateway.audit.flush(timeout=5)
    resp, body = await _call(http, gw, "GET", "/v1/audit/events?page_size=5", headers=ALICE)
    assert resp.status == 200 and "http_code" not in body
    assert body["events"] and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", body["events"][0]["event_time"])
    assert body["events"][0]["outcome"].startswith("OUTCOME_")
    assert gw_backends.rec.last("ListEvents").request.page_size == 5


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("alice", "ssk_test_wrong_key"),
        basic("mallory", ALICE_KEY),  # a real key with someone else's username
        basic("bob", INACTIVE_KEY),
        {"Authorization": "Bearer whatever"},
        {"Authorization": "Basic not-base64!"},
    ],
)
async def test_401_envelope(http, gw, gw_backends, headers) -> None:
    before = gw_backends.rec.count("SendSms")
    resp, body = await _call(http, gw, "POST", "/v3/sms/send", json=SEND, headers=headers)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="SendSafe"'
    _assert_security_headers(resp)
    assert body["http_code"] == 401 and body["response_code"] == "UNAUTHORIZED" and body["data"] is None
    assert "CREDENTIALS" in body["response_msg"]
    assert gw_backends.rec.count("SendSms") == before
    event = await _event(gw_backends, gw, resp.headers["X-Request-Id"])
    assert event.action == "gateway.unauthenticated" and event.outcome == event_pb2.OUTCOME_DENIED
    assert event.actor.type == "anonymous" and event.source.client_address == "127.0.0.1"
    assert ALICE_KEY.encode() not in event.SerializeToString()


async def test_401_on_v1_surface(http, gw) -> None:
    resp, body = await _call(http, gw, "GET", "/v1/audit/events", headers=basic("alice", "nope"))
    assert resp.status == 401
    assert body["error"]["code"] == 401 and body["error"]["status"] == "UNAUTHENTICATED"
    assert body["error"]["reason"] == "INVALID_CREDENTIALS"


async def test_403_when_key_scope_lacks_permission(http, gw, gw_backends) -> None:
    before = gw_backends.rec.count("SendSms")
    resp, body = await _call(http, gw, "POST", "/v3/sms/send", json=SEND, headers=basic("alice", READER_KEY))
    assert resp.status == 403 and body["response_code"] == "FORBIDDEN" and "sms.send" in body["response_msg"]
    assert gw_backends.rec.count("SendSms") == before
    event = await _event(gw_backends, gw, resp.headers["X-Request-Id"])
    assert event.action == "gateway.SendSms" and event.outcome == event_pb2.OUTCOME_DENIED
    assert event.actor.api_key_id == "key_reader" and event.error_reason == "API_KEY_SCOPE"  # held, not in scope
    # ...and the same key may read history.
    resp, _ = await _call(http, gw, "GET", "/v3/sms/history", headers=basic("alice", READER_KEY))
    assert resp.status == 200


async def test_413_on_oversized_body(http, gw, gw_backends) -> None:
    before = gw_backends.rec.count("SendSms")
    big = json.dumps({"messages": [{"to": "+61411111111", "body": "x" * MAX_BODY}]}).encode()
    resp, body = await _call(
        http, gw, "POST", "/v3/sms/send", data=big, headers={**ALICE, "Content-Type": "application/json"}
    )
    assert resp.status == 413 and body["http_code"] == 413 and body["response_code"] == "BAD_REQUEST"
    _assert_security_headers(resp)

    async def chunks():  # no Content-Length: the cap must hold while streaming too
        for _ in range(8):
            yield b"x" * (MAX_BODY // 4)

    resp, body = await _call(
        http, gw, "POST", "/v3/sms/send", data=chunks(), headers={**ALICE, "Content-Type": "application/json"}
    )
    assert resp.status == 413 and body["http_code"] == 413
    assert gw_backends.rec.count("SendSms") == before


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b'{"messages": [', "not valid JSON"),
        (b'{"messages": [{"body": "x"}], "messages": []}', "duplicate"),
        (b'{"messages": [{"body": "x", "schedule": "soon"}]}', "messages[0].schedule"),
        (b'{"messages": [{"body": "x", "sender": "me"}]}', "messages[0].sender"),
        (b'{"mesages": []}', "mesages"),
    ],
)
async def test_400_on_bad_json(http, gw, gw_backends, raw: bytes, needle: str) -> None:
    before = gw_backends.rec.count("SendSms")
    resp, body = await _call(
        http, gw, "POST", "/v3/sms/send", data=raw, headers={**ALICE, "Content-Type": "application/json"}
    )
    assert resp.status == 400 and body["http_code"] == 400 and body["response_code"] == "BAD_REQUEST"
    assert needle in body["response_msg"]
    assert gw_backends.rec.count("SendSms") == before


async def test_400_bad_query_value(http, gw) -> None:
    resp, body = await _call(http, gw, "GET", "/v3/sms/history?page=two", headers=ALICE)
    assert resp.status == 400 and "page" in body["response_msg"]
    resp, body = await _call(http, gw, "GET", "/v3/sms/history?bogus=1", headers=ALICE)
    assert resp.status == 400 and "bogus" in body["response_msg"]


async def test_415_for_non_json_body(http, gw) -> None:
    resp, body = await _call(
        http, gw, "POST", "/v3/sms/send", data=json.dumps(SEND), headers={**ALICE, "Content-Type": "text/plain"}
    )
    assert resp.status == 415 and body["response_code"] == "BAD_REQUEST"


async def test_service_application_code_becomes_response_code(http, gw) -> None:
    resp, body = await _call(http, gw, "POST", "/v3/sms/send", json={"messages": []}, headers=ALICE)
    assert resp.status == 400
    assert body == {"http_code": 400, "response_code": "MISSING_REQUIRED_FIELDS",
                    "response_msg": "messages is required", "data": None}


async def test_service_bug_is_a_generic_500(http, gw, gw_backends) -> None:
    resp, body = await _call(http, gw, "POST", "/v3/sms/send", json={"messages": [{"body": "boom"}]}, headers=ALICE)
    assert resp.status == 500 and body["response_code"] == "INTERNAL_SERVER_ERROR"
    assert "an unexpected bug" not in body["response_msg"]
    event = await _event(gw_backends, gw, resp.headers["X-Request-Id"])
    assert event.outcome == event_pb2.OUTCOME_FAILURE and event.details["grpc_status"] == "INTERNAL"


async def test_404_and_405(http, gw, gw_backends) -> None:
    resp, body = await _call(http, gw, "GET", "/v3/nothing/here", headers=ALICE)
    assert resp.status == 404 and body["response_code"] == "NOT_FOUND" and body["http_code"] == 404
    _assert_security_headers(resp)
    event = await _event(gw_backends, gw, resp.headers["X-Request-Id"])
    assert event.action == "gateway.not_found" and event.resource.id == "/v3/nothing/here"
    resp, body = await _call(http, gw, "GET", "/v1/nothing")
    assert resp.status == 404 and body["error"]["status"] == "NOT_FOUND"
    resp, body = await _call(http, gw, "GET", "/v3/sms/send", headers=ALICE)
    assert resp.status == 405 and body["response_code"] == "METHOD_NOT_FOUND" and "POST" in resp.headers["Allow"]
    _assert_security_headers(resp)


async def test_principal_forwarded_and_not_injectable(http, gw, gw_backends) -> None:
    forged = principal_pb2.Principal(account_id=1, user_id=1, permissions=["sms.send"], api_username="root")
    forged_b64 = base64.b64encode(forged.SerializeToString()).decode()
    headers = {
        **ALICE,
        "User-Agent": "gateway-test/1.0",
        "X-Request-Id": "client-req-0001",
        "x-sendsafe-principal-bin": forged_b64,
        "X-SendSafe-Account": "1",
    }
    resp, _ = await _call(http, gw, "POST", "/v3/sms/send", json=SEND, headers=headers)
    assert resp.status == 200 and resp.headers["X-Request-Id"] == "client-req-0001"
    call = gw_backends.rec.last("SendSms")
    assert call.caller == "gateway"
    assert len(call.meta("x-sendsafe-principal-bin")) == 1
    assert not [k for k, _ in call.metadata if k.startswith("x-sendsafe-") and k != "x-sendsafe-principal-bin"]
    p = call.principal
    assert p is not None
    assert (p.account_id, p.user_id, p.api_username) == (42, 7, "alice")
    assert p.auth_method == principal_pb2.AUTH_METHOD_API_KEY and p.api_key_id == "key_alice"
    assert set(p.permissions) == {"sms.send", "sms.read", "account.read", "audit.read"}
    assert p.client_address == "127.0.0.1" and p.user_agent == "gateway-test/1.0"
    assert p.tls_version in ("TLSv1.2", "TLSv1.3") and "GCM" in p.tls_cipher
    assert p.request_id == "client-req-0001" and p.test_mode is True
    assert call.meta("x-request-id") == ["client-req-0001"]


async def test_bad_client_request_id_is_replaced(http, gw, gw_backends) -> None:
    resp, _ = await _call(http, gw, "GET", "/v3/account", headers={**ALICE, "X-Request-Id": "bad id!"})
    rid = resp.headers["X-Request-Id"]
    assert rid != "bad id!" and re.fullmatch(r"[0-9a-f]{32}", rid)
    assert gw_backends.rec.last("GetAccount").meta("x-request-id") == [rid]


async def test_own_trace_links_the_clients_and_is_propagated(http, gw, gw_backends) -> None:
    """The gateway starts its own trace (audit evidence holds ids the platform chose) and keeps the client's
    `traceparent` as a link; its trace reaches the service and the audit event."""
    client_trace, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    headers = {**ALICE, "traceparent": f"00-{client_trace}-{parent}-01"}
    resp, _ = await _call(http, gw, "POST", "/v3/sms/send", json=SEND, headers=headers)
    m = TRACEPARENT_RE.fullmatch(resp.headers["traceparent"])
    assert m and m.group(1) != client_trace and m.group(2) != parent
    trace_id = m.group(1)
    (seen,) = gw_backends.rec.last("SendSms").meta("traceparent")
    assert seen.split("-")[1] == trace_id
    spans = [s for s in gw.spans.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]
    server = next(s for s in spans if s.kind == SpanKind.SERVER and s.name == "POST /v3/sms/send")
    assert server.parent is None
    assert [(format(ln.context.trace_id, "032x"), format(ln.context.span_id, "016x")) for ln in server.links] == [
        (client_trace, parent)]
    attrs = dict(server.attributes or {})
    assert attrs["http.request.method"] == "POST" and attrs["http.route"] == "/v3/sms/send"
    assert attrs["url.path"] == "/v3/sms/send" and "error.type" not in attrs
    assert attrs["http.response.status_code"] == 200 and attrs["sendsafe.account_id"] == 42
    assert attrs["sendsafe.api_key_id"] == "key_alice" and attrs["client.address"] == "127.0.0.1"
    flat = json.dumps({k: str(v) for s in spans for k, v in (s.attributes or {}).items()})
    assert ALICE_KEY not in flat and "hello there" not in flat
    event = await _event(gw_backends, gw, resp.headers["X-Request-Id"])
    assert event.trace_id == trace_id


async def test_failed_request_span_names_the_error_type(http, gw) -> None:
    resp, _ = await _call(http, gw, "GET", "/v3/account", headers=basic("alice", "ssk_test_nope_0123456789abcdef0123"))
    assert resp.status == 401
    trace_id = TRACEPARENT_RE.fullmatch(resp.headers["traceparent"]).group(1)  # type: ignore[union-attr]
    (server,) = [s for s in gw.spans.get_finished_spans()
                 if format(s.context.trace_id, "032x") == trace_id and s.name == "GET /v3/account"]
    attrs = dict(server.attributes or {})
    assert attrs["http.response.status_code"] == 401 and attrs["error.type"] == "INVALID_CREDENTIALS"


async def test_new_trace_without_traceparent(http, gw, gw_backends) -> None:
    resp, _ = await _call(http, gw, "GET", "/v3/account", headers=ALICE)
    m = TRACEPARENT_RE.fullmatch(resp.headers["traceparent"])
    assert m
    (seen,) = gw_backends.rec.last("GetAccount").meta("traceparent")
    assert seen.split("-")[1] == m.group(1)


async def test_one_audit_event_per_call(http, gw, gw_backends) -> None:
    resp, _ = await _call(http, gw, "POST", "/v3/sms/send", json=SEND, headers={**ALICE, "User-Agent": "ua/1"})
    rid = resp.headers["X-Request-Id"]
    event = await _event(gw_backends, gw, rid)  # exactly one
    assert event.action == "gateway.SendSms" and event.outcome == event_pb2.OUTCOME_SUCCESS
    assert event.service == "gateway" and event.error_reason == ""
    assert event.resource.type == "http_route" and event.resource.id == "/v3/sms/send"
    assert (event.actor.type, event.actor.id, event.actor.account_id) == ("user", "7", 42)
    assert event.actor.auth_method == "api_key" and event.actor.api_key_id == "key_alice"
    assert event.source.client_address == "127.0.0.1" and event.source.user_agent == "ua/1"
    assert event.source.tls_version.startswith("TLSv1.") and "GCM" in event.source.tls_cipher
    assert event.trace_id == TRACEPARENT_RE.fullmatch(resp.headers["traceparent"]).group(1)  # type: ignore[union-attr]
    assert dict(event.details) == {
        "http_status": "200", "method": "POST", "route": "/v3/sms/send",
        "rpc": "/sendsafe.messaging.v1.MessagingService/SendSms",
    }
    raw = event.SerializeToString()
    assert ALICE_KEY.encode() not in raw and b"hello there" not in raw and b"Basic" not in raw
    assert gw_backends.rec.last("AppendEvents").caller == "gateway"


async def test_graceful_stop_drains_in_flight_requests(certs: CertBundle, gw_backends: Backends, http) -> None:
    from tests.integration.gateway.gw_support import gateway_settings

    gateway = await build(gateway_settings(certs, gw_backends))
    port = await gateway.start()
    url = f"https://localhost:{port}/v3/sms/send"

    async def slow() -> int:
        async with http.post(url, json={"messages": [{"body": "slow"}]}, headers=ALICE) as resp:
            await resp.read()
            return resp.status

    task = asyncio.create_task(slow())
    await asyncio.sleep(0.2)  # the request is inside the (slow) backend now
    await gateway.stop()
    assert await task == 200
    with pytest.raises(aiohttp.ClientConnectorError):
        async with aiohttp.ClientSession() as fresh:
            await fresh.get(f"https://localhost:{port}/v3/account", ssl=False)


async def test_health_port_reports_serving(certs: CertBundle, gw_backends: Backends) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tests.integration.gateway.gw_support import gateway_settings

    gateway = await build(gateway_settings(certs, gw_backends, health_listen="127.0.0.1:0"))
    await gateway.start()
    assert gateway.health_port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.health_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await gateway.stop()


async def test_client_baggage_is_not_forwarded(http, gw, gw_backends) -> None:
    resp, _ = await _call(http, gw, "GET", "/v3/account", headers={**ALICE, "baggage": "account_id=1,role=admin"})
    assert resp.status == 200
    assert gw_backends.rec.last("GetAccount").meta("baggage") == []
