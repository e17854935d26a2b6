"""One SMS produces one trace across gateway -> keys -> messaging -> database, and an audit event with
that trace id, the client address, the API key id and the outcome."""

from __future__ import annotations

import asyncio
import os
import time

from sendsafe.identity.v1 import identity_service_pb2, identity_service_pb2_grpc
from sendsafe.keys.v1 import keys_service_pb2, keys_service_pb2_grpc
from svckit.rpc import secure_channel
from tests.e2e.api_client import Http
from tests.e2e.conftest import Customer, OtlpReceiver
from tests.support import CertBundle
from tools.suite import Suite


def _fresh_key(suite: Suite, certs: CertBundle, username: str) -> str:
    """A new API key for the customer, issued by operator tooling: its first use cannot hit a cache."""

    async def issue() -> str:
        tls = certs.tls("ops")
        async with secure_channel(suite.addrs["identity"], tls, server_name="identity") as ich, \
                secure_channel(suite.addrs["keys"], tls, server_name="keys") as kch:
            user = (await identity_service_pb2_grpc.IdentityServiceStub(ich).GetUser(
                identity_service_pb2.GetUserRequest(api_username=username))).user
            resp = await keys_service_pb2_grpc.KeysServiceStub(kch).IssueApiKey(
                keys_service_pb2.IssueApiKeyRequest(account_id=user.account_id, user_id=user.user_id, name="trace"))
            return resp.api_key

    return asyncio.run(issue())


def test_one_trace_across_services_and_matching_audit_event(
    customer: Customer, otlp: tuple[OtlpReceiver, int], suite: Suite, certs: CertBundle
) -> None:
    receiver, _ = otlp
    http = Http(customer.url, str(customer.ca))
    api_key = _fresh_key(suite, certs, customer.username)
    trace_id = os.urandom(16).hex()
    parent = os.urandom(8).hex()
    r = http.call(
        "POST", "/v3/sms/send", auth=(customer.username, api_key),
        json_body={"messages": [{"to": "+61422222222", "body": "traced"}]},
        headers={"traceparent": f"00-{trace_id}-{parent}-01", "User-Agent": "e2e-trace/1.0"},
    )
    assert r.status == 200
    # The gateway chose its own trace id; the client's trace is a link of the gateway's span.
    client_trace, trace_id = trace_id, r.headers["traceparent"].split("-")[1]
    assert trace_id != client_trace
    request_id = r.headers["x-request-id"]

    def complete(spans) -> bool:  # type: ignore[no-untyped-def]
        """All hops present and every span's parent has arrived too (exports come in batches)."""
        mine = [s for s in spans if s.trace_id == trace_id]
        services = {s.service for s in mine}
        has_db = any(
            s.service == "messaging" and ("INSERT" in s.name or "postgresql" in s.attributes.get("db.system", ""))
            for s in mine
        )
        ids = {s.span_id for s in mine} | {""}
        return {"gateway", "keys", "messaging"} <= services and has_db and all(s.parent_span_id in ids for s in mine)

    spans = [s for s in receiver.wait_for(complete) if s.trace_id == trace_id]
    # One trace through every hop, and no orphan: each span hangs off one the trace already holds.
    assert complete(spans), sorted({(s.service, s.name, s.parent_span_id) for s in spans})
    root = next(s for s in spans if s.service == "gateway" and not s.parent_span_id)
    assert root.links == (client_trace,) and parent not in {s.parent_span_id for s in spans}
    # Never the key or the body in a span attribute.
    flat = " ".join(f"{k}={v}" for s in spans for k, v in s.attributes.items())
    assert api_key not in flat and "traced" not in flat

    # The audit event for the call, read back through the API.
    end = time.monotonic() + 20
    event = None
    while event is None and time.monotonic() < end:
        token = ""
        while event is None:
            listed = http.call("GET", f"/v1/audit/events?action=gateway.SendSms&page_size=500&page_token={token}",
                               auth=(customer.username, api_key))
            assert listed.status == 200, listed.body
            page = listed.json()
            matches = [e for e in page["events"] if e.get("trace_id") == trace_id]
            event = matches[0] if matches else None
            token = page["next_page_token"]
            if not token:
                break
        if event is None:
            time.sleep(0.2)
    assert event is not None, "no gateway audit event carries the trace id"
    assert event["request_id"] == request_id
    assert event["outcome"] == "OUTCOME_SUCCESS"
    assert event["source"]["client_address"] == "127.0.0.1"
    assert event["source"]["user_agent"] == "e2e-trace/1.0"
    assert event["source"]["tls_version"].startswith("TLSv1.")
    assert event["actor"]["api_key_id"] and event["actor"]["api_key_id"] in api_key
    assert api_key not in str(event)
