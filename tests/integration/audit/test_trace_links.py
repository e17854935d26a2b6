"""Issue 16: audit events link to the trace UI. With AUDIT_TRACE_URL_TEMPLATE set, the customer's and the
staff's event lists, event proofs and the CEF and JSON Lines exports carry `trace_url` next to `trace_id`;
the link is never stored (an emitter's value is dropped, the leaf bytes hold none), so the evidence still
verifies. Without a template there is no link."""

from __future__ import annotations

import json
import secrets

import pytest

from sendsafe.audit.v1 import audit_service_pb2 as pb
from sendsafe.audit.v1 import event_pb2, evidence_pb2
from services.audit.domain.trace_links import check_template, trace_url
from tests.integration.audit.conftest import AuditFactory, event, principal
from tools import audit_verify

TEMPLATE = "https://traces.example.com/explore?traceId={trace_id}"
ACCOUNT = 7301


async def test_events_and_exports_link_their_trace(make_audit: AuditFactory) -> None:
    audit = await make_audit(trace_url_template=TEMPLATE)
    tid = secrets.token_hex(16)
    link = f"https://traces.example.com/explore?traceId={tid}"
    await audit.append(event(ACCOUNT, "sms.sent", trace_id=tid, trace_url="https://attacker.example/x"),
                       event(ACCOUNT, "keys.api_key.issued"))
    stub = audit.stub()
    listed = await stub.ListEvents(pb.ListEventsRequest(), metadata=principal(ACCOUNT))
    by_action = {e.action: e for e in listed.events}
    assert by_action["sms.sent"].trace_id == tid and by_action["sms.sent"].trace_url == link
    assert by_action["keys.api_key.issued"].trace_url == ""  # no trace, no link

    staff = principal(1, "audit.read_all", user_id=900, staff=True, address="10.9.9.9")
    found = await stub.SearchEvents(pb.SearchEventsRequest(account_id=ACCOUNT, action="sms.sent",
                                                           justification="TICKET-16"), metadata=staff)
    assert [e.trace_url for e in found.events] == [link]

    # Not in the stored bytes: the emitter's value was dropped and the proof's leaf holds no link.
    proof = await stub.GetEventProof(pb.GetEventProofRequest(event_id=by_action["sms.sent"].event_id),
                                     metadata=principal(ACCOUNT))
    assert proof.event.trace_url == link
    assert event_pb2.Event.FromString(proof.leaf_data).trace_url == ""

    cef = await stub.ExportEvents(pb.ExportEventsRequest(format=evidence_pb2.EXPORT_FORMAT_CEF),
                                  metadata=principal(ACCOUNT))
    sent = next(line for line in cef.data.splitlines() if "|sms.sent|" in line)
    escaped = link.replace("=", "\\=")  # CEF escapes '=' in extension values
    assert f"cs3={tid}" in sent and f"flexString1Label=traceUrl flexString1={escaped}" in sent
    issued = next(line for line in cef.data.splitlines() if "|keys.api_key.issued|" in line)
    assert "flexString1" not in issued

    jsonl = await stub.ExportEvents(pb.ExportEventsRequest(format=evidence_pb2.EXPORT_FORMAT_JSONL),
                                    metadata=principal(ACCOUNT))
    lines = [json.loads(line) for line in jsonl.data.splitlines()]
    events = [line for line in lines if line["type"] == "event"]
    linked = next(line for line in events if line["event"]["action"] == "sms.sent")
    assert linked["trace_url"] == link and "trace_url" not in linked["event"]  # beside the event, not in it
    checkpoint = await stub.GetCheckpoint(pb.GetCheckpointRequest(), metadata=principal(ACCOUNT))
    report = audit_verify.verify(jsonl.data.splitlines(), checkpoint.verifier_key)
    assert report.ok and report.events == len(events), report.problem  # the link does not break the evidence


async def test_no_template_no_link(make_audit: AuditFactory) -> None:
    audit = await make_audit()
    await audit.append(event(ACCOUNT, "sms.sent", trace_id=secrets.token_hex(16)))
    listed = await audit.stub().ListEvents(pb.ListEventsRequest(), metadata=principal(ACCOUNT))
    assert [e.trace_url for e in listed.events] == [""]


@pytest.mark.parametrize("bad", ["traces.example.com/{trace_id}", "https://traces.example.com/",
                                 "ftp://traces.example.com/{trace_id}", "https://t.example.com/{trace_id} x"])
def test_a_bad_template_stops_the_start(bad: str) -> None:
    with pytest.raises(ValueError, match="AUDIT_TRACE_URL_TEMPLATE"):
        check_template(bad)
    assert check_template("") == "" and check_template(TEMPLATE) == TEMPLATE
    assert trace_url(TEMPLATE, "0" * 32) == "" and trace_url(TEMPLATE, "not-a-trace") == ""
