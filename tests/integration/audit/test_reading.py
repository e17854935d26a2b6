"""Reading the log over real mTLS and PostgreSQL: filters and paging, staff search that is itself audited and
shown to the accounts concerned, SIEM forwarding from a persisted cursor, and the SRE metrics."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import aiohttp
import grpc
import pytest
from google.protobuf import timestamp_pb2
from standardwebhooks import Webhook

from sendsafe.audit.v1 import alert_pb2, event_pb2, evidence_pb2
from sendsafe.audit.v1 import audit_service_pb2 as pb
from tests.integration.audit.conftest import AuditFactory, Receiver, event, eventually, principal, reason_of

FAILURE, DENIED = event_pb2.OUTCOME_FAILURE, event_pb2.OUTCOME_DENIED


def _ts(when: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


async def test_filters_and_paging(make_audit: AuditFactory) -> None:
    audit = await make_audit()
    acct = 7001
    evs = [
        event(acct, "keys.api_key.issued", address="203.0.113.7", trace_id="a" * 32),
        event(acct, "gateway.SendSms", outcome=FAILURE, address="198.51.100.20"),
        event(acct, "gateway.unauthenticated", outcome=DENIED, address="198.51.100.21"),
        event(acct, "gateway.ListEvents", address="2001:db8::1", request_id="req-xyz"),
    ]
    evs[1].resource.type, evs[1].resource.id = "http_route", "/v3/sms/send"
    await audit.append(*evs, event(7002, "gateway.SendSms", outcome=FAILURE))
    stub = audit.stub()
    md = principal(acct)

    async def actions(**kw: object) -> list[str]:
        got = await stub.ListEvents(pb.ListEventsRequest(**kw), metadata=md)  # type: ignore[arg-type]
        return [e.action for e in got.events]

    assert await actions(action="gateway.*") == ["gateway.SendSms", "gateway.unauthenticated", "gateway.ListEvents"]
    assert await actions(outcome=DENIED) == ["gateway.unauthenticated"]
    assert await actions(client_address="198.51.100.0/24") == ["gateway.SendSms", "gateway.unauthenticated"]
    assert await actions(client_address="2001:db8::/32") == ["gateway.ListEvents"]
    assert await actions(trace_id="a" * 32) == ["keys.api_key.issued"]
    assert await actions(request_id="req-xyz") == ["gateway.ListEvents"]
    assert await actions(resource_type="http_route", resource_id="/v3/sms/send") == ["gateway.SendSms"]
    assert await actions(actor_type="user", actor_id="7", outcome=FAILURE) == ["gateway.SendSms"]
    now = datetime.now(UTC)
    assert len(await actions(start_time=_ts(now - timedelta(minutes=5)), end_time=_ts(now + timedelta(minutes=5)))) == 4
    assert await actions(start_time=_ts(now + timedelta(minutes=5))) == []
    first = await stub.ListEvents(pb.ListEventsRequest(page_size=3), metadata=md)
    rest = await stub.ListEvents(pb.ListEventsRequest(page_size=3, page_token=first.next_page_token), metadata=md)
    assert [e.event_id for e in [*first.events, *rest.events]] == [e.event_id for e in evs]
    assert rest.next_page_token == ""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListEvents(pb.ListEventsRequest(client_address="not-an-ip"), metadata=md)
    assert reason_of(info.value) == "FILTER_INVALID"


async def test_staff_search_is_audited_and_shown_to_the_customer(make_audit: AuditFactory) -> None:
    audit = await make_audit()
    customer, other = 7101, 7102
    await audit.append(event(customer, "sms.sent"), event(other, "sms.sent"), event(customer, "keys.api_key.issued"))
    stub = audit.stub()
    staff = principal(1, "audit.read_all", user_id=900, staff=True, address="10.9.9.9")

    one = await stub.SearchEvents(pb.SearchEventsRequest(account_id=customer, justification="TICKET-42"),
                                  metadata=staff)
    assert {e.actor.account_id for e in one.events} == {customer}
    everyone = await stub.SearchEvents(pb.SearchEventsRequest(action="sms.sent"), metadata=staff)
    assert {e.actor.account_id for e in everyone.events} == {customer, other}

    # The customer sees both searches in its own feed, with who (staff) and why.
    feed = await stub.ListEvents(pb.ListEventsRequest(action="audit.events.read_by_staff"),
                                 metadata=principal(customer))
    assert len(feed.events) == 2
    seen = feed.events[0]
    assert (seen.actor.type, seen.actor.id, seen.subject_account_id) == ("staff", "900", customer)
    assert seen.details["justification"] == "TICKET-42" and seen.source.client_address == "10.9.9.9"
    assert len((await stub.ListEvents(pb.ListEventsRequest(action="audit.events.read_by_staff"),
                                      metadata=principal(other))).events) == 1
    # ... and the platform keeps the search itself.
    platform = await stub.SearchEvents(pb.SearchEventsRequest(action="audit.events.searched"), metadata=staff)
    assert [e.details["scope"] for e in platform.events][:2] == [str(customer), "all"]
    # A customer cannot search across accounts.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SearchEvents(pb.SearchEventsRequest(), metadata=principal(customer, "audit.read"))
    assert reason_of(info.value) == "MISSING_PERMISSION"


async def test_forwarding_delivers_every_event_in_order_through_failures(
    make_audit: AuditFactory, receiver: Receiver
) -> None:
    audit = await make_audit()
    acct = 7201
    stub = audit.stub()
    md = principal(acct, "audit.manage", "audit.read")
    before = event(acct, "test.before")
    await audit.append(before)
    receiver.fail_next = 3  # the SIEM is down for a while
    state = await stub.SetForwarding(pb.SetForwardingRequest(forwarding=alert_pb2.Forwarding(
        enabled=True, kind=alert_pb2.FORWARDING_KIND_WEBHOOK, url=receiver.url("/siem"),
        format=evidence_pb2.EXPORT_FORMAT_JSONL, backfill=True)), metadata=md)
    assert state.forwarding.enabled and state.forwarding.delivered_sequence == 0
    sent = [event(acct, f"test.f{i}") for i in range(25)]
    for i in range(0, 25, 5):
        await audit.append(*sent[i:i + 5], event(7202, "test.other"))
    secret = (await stub.GetWebhookSecret(pb.GetWebhookSecretRequest(), metadata=md)).secret

    async def all_delivered() -> list[dict]:  # type: ignore[type-arg]
        lines = [json.loads(x) for r in receiver.received for x in r.body.decode().splitlines()]
        ids = [line["event"]["event_id"] for line in lines]
        return lines if before.event_id in ids and sent[-1].event_id in ids else []

    lines = await eventually(all_delivered, what="forwarding to catch up")
    for r in receiver.received:  # Standard Webhooks, checked by the spec's own library (the body is JSONL)
        Webhook(secret).verify(r.body, r.headers, json_parse=False)
        first, last = r.headers["X-SendSafe-Events"].split("-")
        assert r.headers["webhook-id"] == f"fwd_{acct}_{first}_{last}"
    # Failed attempts leave the cursor where it was: the three failures and the first success all start at
    # the same event (the batch may have grown meanwhile: the id names the range it carried).
    assert len({i.split("_")[2] for i in receiver.attempt_ids[:4]}) == 1
    assert receiver.attempt_ids[3] == receiver.received[0].headers["webhook-id"]
    # Every event of the account (and only those), in log order, none skipped, none twice.
    got = [line["event"]["event_id"] for line in lines]
    want = [e.event_id for e in (before, *sent)]
    assert [i for i in got if i in set(want)] == want
    assert all(line["event"]["actor"]["account_id"] == str(acct) for line in lines
               if not line["event"]["action"].startswith("audit."))
    seqs = [int(line["event"]["account_sequence"]) for line in lines]
    assert seqs == list(range(1, len(seqs) + 1))
    status = (await stub.GetForwarding(pb.GetForwardingRequest(), metadata=md)).forwarding
    assert status.delivered_sequence == max(line["leaf_index"] for line in lines) + 1
    assert status.consecutive_failures == 0 and status.last_error == ""


async def test_metrics_for_sres(make_audit: AuditFactory) -> None:
    audit = await make_audit(metrics_listen="127.0.0.1:0")
    await audit.append(event(7301, "test.m"), event(7301, "test.m"))
    await audit.stub().VerifyLog(pb.VerifyLogRequest(), metadata=principal(1, "audit.verify", staff=True))
    port = audit.app.extras["metrics_port"]
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values["sendsafe_audit_events_appended_total"] >= 2
    assert values["sendsafe_audit_integrity_ok"] == 1
    assert values["sendsafe_audit_tree_size"] >= 2
    assert values['sendsafe_audit_ingest_lag_seconds_bucket{le="+Inf"}'] >= 2
    assert "sendsafe_audit_alert_backlog_events" in values and "sendsafe_audit_forwarding_backlog_events" in values
