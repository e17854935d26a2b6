"""Following one message in its trace: the send's trace continues through the dispatch stream into the
worker (claim, decrypt, carrier submit) and its audit append; the receipt's span names the message id.
No span holds the number, the body or the key."""

from __future__ import annotations

import time

from tests.e2e.api_client import Http
from tests.e2e.conftest import Customer, OtlpReceiver, SpanRecord


def _traces(spans: list[SpanRecord], trace_id: str) -> set[str]:
    """The send's trace and any delivery trace linked to it (a worker batch gathering several sends)."""
    return {trace_id} | {s.trace_id for s in spans if trace_id in s.links}


def test_one_send_is_followed_to_the_carrier_and_its_receipt(
    customer: Customer, otlp: tuple[OtlpReceiver, int]
) -> None:
    receiver, _ = otlp
    http = Http(customer.url, str(customer.ca))
    # Earlier tests may leave the processes' export queues full (bulk imports make thousands of database
    # spans): first wait until a probe call's messaging span arrives, so what follows is not dropped.
    probe = http.call("GET", "/v3/sms/history?limit=1", auth=(customer.username, customer.api_key))
    probe_trace = probe.headers["traceparent"].split("-")[1]
    receiver.wait_for(lambda ss: any(s.trace_id == probe_trace and s.service == "messaging" for s in ss), timeout=90)
    number, body = "+61422233344", f"follow-me-{time.monotonic_ns()}"
    r = http.call("POST", "/v3/sms/send", auth=(customer.username, customer.api_key),
                  json_body={"messages": [{"to": number, "body": body}]})
    assert r.status == 200, r.body
    trace_id = r.headers["traceparent"].split("-")[1]
    sent = r.json()["data"]["messages"][0]
    assert sent["status"] == "SUCCESS", sent["status"]
    message_id = sent["message_id"]

    wanted = {"dispatch.deliver", "dispatch.claim", "dispatch.decrypt", "carrier.submit"}

    def delivered(spans: list[SpanRecord]) -> bool:
        """The worker's spans, and (exports come in batches) every parent they name in the send's trace."""
        traces = _traces(spans, trace_id)  # once: the predicate runs under the receiver's lock
        mine = [s for s in spans if s.trace_id in traces]
        ids = {s.span_id for s in spans if s.trace_id == trace_id} | {""}
        return wanted <= {s.name for s in mine} and all(s.parent_span_id in ids for s in mine
                                                        if s.trace_id == trace_id and s.name == "dispatch.deliver")

    spans = receiver.wait_for(delivered, timeout=60)
    traces = _traces(spans, trace_id)
    mine = [s for s in spans if s.trace_id in traces]
    assert delivered(spans), sorted({(s.service, s.name) for s in mine})
    deliver = next(s for s in mine if s.name == "dispatch.deliver")
    submit = next((s for s in mine if s.name == "carrier.submit" and s.parent_span_id == deliver.span_id), None)
    assert submit is not None, sorted((s.name, s.parent_span_id) for s in mine)
    # The worker's spans hang off the delivery span, which continues the send (or links to it in a batch).
    assert submit.trace_id == deliver.trace_id and submit.parent_span_id == deliver.span_id
    assert deliver.service != "gateway" and submit.attributes["sendsafe.outcome"] == "ok"
    assert int(submit.attributes["sendsafe.messages.count"]) >= 1
    if deliver.trace_id == trace_id:  # continued: its parent is a span of the send's trace
        assert deliver.parent_span_id in {s.span_id for s in spans if s.trace_id == trace_id}
    # The audit append of the send's evidence is a span of the same trace.
    def appended(spans: list[SpanRecord]) -> bool:
        traces = _traces(spans, trace_id)
        return any(s.name == "audit.append" and s.trace_id in traces for s in spans)

    assert appended(receiver.wait_for(appended))

    # The receipt: its span names the message id (the simulator reports every delivery) and links to the
    # send's trace (the message row keeps the send's traceparent).
    def receipted(spans: list[SpanRecord]) -> bool:
        return any(s.name == "receipt.apply" and message_id in s.attributes.get("sendsafe.message_ids", "")
                   and trace_id in s.links for s in spans)

    assert receipted(receiver.wait_for(receipted, timeout=30)), "no receipt span names the message and links"
    flat = " ".join(f"{s.name} {k}={v}" for s in receiver.spans for k, v in s.attributes.items())
    for secret in (number, number[1:], body, customer.api_key):
        assert secret not in flat
