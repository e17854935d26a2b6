"""One SMS produces one trace across gateway -> keys -> messaging -> database, and an audit event with
that trace id, the client address, the API key id and the outcome."""

from __future__ import annotations

import os
import time

from tests.e2e.api_client import Http
from tests.e2e.conftest import Customer, OtlpReceiver


def test_one_trace_across_services_and_matching_audit_event(customer: Customer, otlp: tuple[OtlpReceiver, int]) -> None:
    receiver, _ = otlp
    http = Http(customer.url, str(customer.ca))
    trace_id = os.urandom(16).hex()
    parent = os.urandom(8).hex()
    r = http.call(
        "POST", "/v3/sms/send", auth=(customer.username, customer.api_key),
        json_body={"messages": [{"to": "+61422222222", "body": "traced"}]},
        headers={"traceparent": f"00-{trace_id}-{parent}-01", "User-Agent": "e2e-trace/1.0"},
    )
    assert r.status == 200
    assert r.headers["traceparent"].split("-")[1] == trace_id
    request_id = r.headers["x-request-id"]

    def complete(spans) -> bool:  # type: ignore[no-untyped-def]
        mine = [s for s in spans if s.trace_id == trace_id]
        services = {s.service for s in mine}
        return {"gateway", "keys", "messaging"} <= services and any(
            s.service == "messaging" and ("INSERT" in s.name or "postgresql" in s.attributes.get("db.system", ""))
            for s in mine
        )

    spans = [s for s in receiver.wait_for(complete) if s.trace_id == trace_id]
    assert complete(spans), sorted({(s.service, s.name) for s in spans})
    # Every span hangs off the caller's parent: one trace, no orphans besides the gateway root.
    ids = {s.span_id for s in spans} | {parent}
    assert all(s.parent_span_id in ids for s in spans)
    # Never the key or the body in a span attribute.
    flat = " ".join(f"{k}={v}" for s in spans for k, v in s.attributes.items())
    assert customer.api_key not in flat and "traced" not in flat

    # The audit event for the call, read back through the API.
    end = time.monotonic() + 20
    event = None
    while event is None and time.monotonic() < end:
        listed = http.call("GET", "/v1/audit/events?page_size=500", auth=(customer.username, customer.api_key))
        assert listed.status == 200, listed.body
        matches = [e for e in listed.json()["events"] if e.get("trace_id") == trace_id and e["service"] == "gateway"]
        event = matches[0] if matches else None
        if event is None:
            time.sleep(0.2)
    assert event is not None, "no gateway audit event carries the trace id"
    assert event["request_id"] == request_id
    assert event["outcome"] == "OUTCOME_SUCCESS"
    assert event["source"]["client_address"] == "127.0.0.1"
    assert event["source"]["user_agent"] == "e2e-trace/1.0"
    assert event["source"]["tls_version"].startswith("TLSv1.")
    assert event["actor"]["api_key_id"] and event["actor"]["api_key_id"] in customer.api_key
    assert customer.api_key not in str(event)
