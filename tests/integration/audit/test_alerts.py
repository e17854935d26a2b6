"""Alert rules over real mTLS and PostgreSQL: the API, default rules, the threshold rule firing exactly once
per window under concurrent appends (and concurrent alert engines), and notifications by HMAC-signed
webhook (a local HTTPS receiver) and by SMS through messaging's NotificationService (over mTLS)."""

from __future__ import annotations

import asyncio
import json
import re

import asyncpg
import grpc
import pytest
from standardwebhooks import Webhook

from sendsafe.audit.v1 import alert_pb2, event_pb2
from sendsafe.audit.v1 import audit_service_pb2 as pb
from sendsafe.context.v1 import principal_pb2
from services.audit.domain.forwarding import ForwardingSpec
from services.audit.domain.rules import RuleSpec
from services.audit.service.alerts import AlertService
from tests.integration.audit.conftest import (
    Audit,
    AuditFactory,
    FakeNotifications,
    Receiver,
    event,
    eventually,
    principal,
    reason_of,
)

MANAGE = ("audit.manage", "audit.read")
DENIED = event_pb2.OUTCOME_DENIED


async def test_rules_crud_defaults_and_account_scope(make_audit: AuditFactory) -> None:
    audit = await make_audit()
    stub = audit.stub()
    mine, theirs = principal(6001, *MANAGE), principal(6002, *MANAGE)
    listed = await stub.ListAlertRules(pb.ListAlertRulesRequest(), metadata=mine)
    defaults = {r.name for r in listed.rules}
    assert {"Repeated failed sign-ins", "New API key", "Staff access to the account"} <= defaults
    assert all(r.is_default for r in listed.rules)

    rule = alert_pb2.AlertRule(name="logins from abroad", actions=["gateway.*"], outcomes=[DENIED],
                               exclude_client_networks=["198.51.100.0/24"], cooldown_seconds=30)
    created = (await stub.CreateAlertRule(pb.CreateAlertRuleRequest(rule=rule), metadata=mine)).rule
    assert created.rule_id and not created.is_default and created.exclude_client_networks == ["198.51.100.0/24"]
    rule.name = "renamed"
    updated = await stub.UpdateAlertRule(pb.UpdateAlertRuleRequest(rule_id=created.rule_id, rule=rule), metadata=mine)
    assert updated.rule.name == "renamed"
    # Another account can neither see nor change it.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.UpdateAlertRule(pb.UpdateAlertRuleRequest(rule_id=created.rule_id, rule=rule), metadata=theirs)
    assert reason_of(info.value) == "ALERT_RULE_NOT_FOUND"
    assert created.rule_id not in {r.rule_id for r in (await stub.ListAlertRules(
        pb.ListAlertRulesRequest(), metadata=theirs)).rules}
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CreateAlertRule(pb.CreateAlertRuleRequest(rule=alert_pb2.AlertRule(
            name="x", webhook_url="http://insecure.example/")), metadata=mine)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason_of(info.value) == "INVALID_WEBHOOK_URL"
    with pytest.raises(grpc.aio.AioRpcError) as info:  # managing rules needs audit.manage
        await stub.ListAlertRules(pb.ListAlertRulesRequest(), metadata=principal(6001, "audit.read"))
    assert reason_of(info.value) == "MISSING_PERMISSION"
    await stub.DeleteAlertRule(pb.DeleteAlertRuleRequest(rule_id=created.rule_id), metadata=mine)
    # Every change to the rules is itself in the account's feed (alerts can be turned off by an intruder).
    feed = await stub.ListEvents(pb.ListEventsRequest(action="audit.alert_rule.*"), metadata=mine)
    assert [e.action for e in feed.events] == ["audit.alert_rule.created", "audit.alert_rule.updated",
                                               "audit.alert_rule.deleted"]


async def _alerts(audit, account: int) -> list[alert_pb2.Alert]:  # type: ignore[no-untyped-def]
    got = await audit.stub().ListAlerts(pb.ListAlertsRequest(page_size=100), metadata=principal(account))
    return list(got.alerts)


async def _evaluated(audit) -> None:  # type: ignore[no-untyped-def]
    """Wait until the alert engine has evaluated every event stored so far."""
    pool = audit.app.extras["pool"]

    async def caught_up() -> bool:
        size = await pool.fetchval("SELECT size FROM tree_head")
        return bool(await pool.fetchval("SELECT sequence FROM processor_cursors WHERE name = 'alerts'") >= size)

    await eventually(caught_up, what="the alert engine to catch up")


async def test_threshold_rule_fires_exactly_once_per_window_under_concurrent_events(make_audit: AuditFactory) -> None:
    audit = await make_audit()
    # A second audit process on the same database: two alert engines race for the same events.
    replica = await make_audit(dsn=audit.dsn)
    account = 6101
    stub = audit.stub()
    rule = alert_pb2.AlertRule(name="burst", actions=["test.login"], outcomes=[DENIED], threshold=5,
                               window_seconds=600)
    created = await stub.CreateAlertRule(pb.CreateAlertRuleRequest(rule=rule), metadata=principal(account, *MANAGE))

    # 60 matching events from 4 emitters at once, in batches of one to three, to both processes.
    async def emit(i: int) -> None:
        target = audit if i % 2 else replica
        caller = ("gateway", "identity", "keys", "messaging")[i % 4]
        batch = [event(account, "test.login", outcome=DENIED) for _ in range(1 + i % 3)]
        await target.append(*batch, caller=caller)

    await asyncio.gather(*(emit(i) for i in range(30)))
    await _evaluated(audit)
    fired = [a for a in await _alerts(audit, account) if a.rule_id == created.rule.rule_id]
    assert len(fired) == 1
    # Emitters stamp their own times, so the log's order is not quite time order: the count when it fired
    # is the matching events in the ten minutes up to the firing event's time, at least the threshold.
    assert fired[0].match_count >= 5 and fired[0].window_seconds == 600
    pool: asyncpg.Pool = audit.app.extras["pool"]  # type: ignore[assignment]
    rows = await pool.fetch(
        "SELECT sequence FROM events WHERE account_id = $1 AND action = 'test.login' ORDER BY sequence", account)
    assert len(rows) == 60 and fired[0].event_sequence in {r["sequence"] for r in rows[4:]}


async def test_webhook_notification_is_signed_retried_and_recorded(
    make_audit: AuditFactory, receiver: Receiver
) -> None:
    audit = await make_audit()
    account = 6201
    stub = audit.stub()
    md = principal(account, *MANAGE)
    rule = alert_pb2.AlertRule(name="new key", actions=["keys.api_key.issued"], webhook_url=receiver.url("/alerts"))
    await stub.CreateAlertRule(pb.CreateAlertRuleRequest(rule=rule), metadata=md)
    secret = (await stub.GetWebhookSecret(pb.GetWebhookSecretRequest(), metadata=md)).secret
    receiver.fail_next = 1  # the first attempt gets a 503
    trigger = event(account, "keys.api_key.issued", address="203.0.113.5")
    await audit.append(trigger, caller="keys")
    got = await eventually(lambda: _delivered(receiver), what="the webhook")
    body = got.body
    # Standard Webhooks, checked by the spec's own library; the retry repeated the first attempt's webhook-id.
    assert Webhook(secret).verify(body, got.headers) == json.loads(body)
    assert receiver.attempt_ids == [got.headers["webhook-id"]] * 2 and "X-SendSafe-Signature" not in got.headers
    payload = json.loads(body)
    assert payload["rule_name"] == "new key" and payload["event"]["event_id"] == trigger.event_id

    async def history() -> list[alert_pb2.Alert]:
        alerts = [a for a in await _alerts(audit, account) if a.rule_name == "new key"]
        done = alerts and alerts[0].deliveries[0].status == alert_pb2.DELIVERY_STATUS_DELIVERED
        return alerts if done else []

    (alert,) = await eventually(history, what="the delivery status")
    (delivery,) = alert.deliveries
    assert (delivery.channel, delivery.attempts, delivery.target) == ("webhook", 2, "https://localhost/…")
    assert alert.event_id == trigger.event_id
    # Rotating the secret changes the signature's key; the reveal and the rotation are in the feed.
    rotated = await stub.RotateWebhookSecret(pb.RotateWebhookSecretRequest(), metadata=md)
    assert rotated.secret != secret and rotated.version == 2
    feed = await stub.ListEvents(pb.ListEventsRequest(action="audit.webhook_secret.*"), metadata=md)
    assert [e.action for e in feed.events] == ["audit.webhook_secret.revealed", "audit.webhook_secret.rotated"]
    assert all(secret not in e.SerializeToString().decode(errors="replace") for e in feed.events)


async def _delivered(receiver: Receiver):  # type: ignore[no-untyped-def]
    return receiver.received[0] if receiver.received else None


async def test_sms_goes_through_messaging_as_the_rule_owner_with_the_fixed_text(
    make_audit: AuditFactory, fake_messaging: tuple[FakeNotifications, str]
) -> None:
    servicer, addr = fake_messaging
    servicer.verified.add("+61411111111")
    audit = await make_audit(messaging_addr=addr)
    account = 6301
    limits = principal_pb2.SendLimits(messages_per_minute=5, allowed_countries=["AU"])
    md = principal(account, *MANAGE, "sms.send", user_id=77, api_key_id="key-77", limits=limits)
    rule = alert_pb2.AlertRule(name="Card locked call +61400000000", actor_types=["staff"], sms_to="+61411111111",
                               webhook_url="https://127.0.0.1:1/")
    created = (await audit.stub().CreateAlertRule(pb.CreateAlertRuleRequest(rule=rule), metadata=md)).rule
    staff = event(1, "support.account.viewed", subject_account_id=account)
    staff.actor.type = "staff"
    await audit.append(staff, caller="identity")

    async def settled() -> list[alert_pb2.AlertDelivery]:
        alerts = [a for a in await _alerts(audit, account) if a.rule_id == created.rule_id]
        if not alerts or any(d.status == alert_pb2.DELIVERY_STATUS_PENDING for d in alerts[0].deliveries):
            return []
        return list(alerts[0].deliveries)

    by_channel = {d.channel: d for d in await eventually(settled, what="deliveries to settle")}
    assert by_channel["sms"].status == alert_pb2.DELIVERY_STATUS_DELIVERED
    assert by_channel["sms"].target == "+614*****111"  # never shown in full
    # A webhook to a closed port is retried, then given up (here quickly: AUDIT_RETRY_BASE_SECONDS=0.05).
    assert by_channel["webhook"].status == alert_pb2.DELIVERY_STATUS_FAILED
    assert by_channel["webhook"].attempts == 8 and by_channel["webhook"].last_error == "CONNECTION_FAILED"
    (sms,) = servicer.requests
    assert (sms.account_id, sms.to) == (account, "+61411111111")
    # Sent as the rule's owner: its user, its key, that key's limits and countries.
    assert (sms.owner.user_id, sms.owner.api_key_id) == (77, "key-77")
    assert sms.owner.send_limits.messages_per_minute == 5 and list(sms.owner.send_limits.allowed_countries) == ["AU"]
    # A fixed template: the rule's name (customer-written text) is never sent.
    assert re.fullmatch(rf"SendSafe alert: rule {created.rule_id} matched 1 event\(s\) \(support\.account\.viewed\)"
                        r" at \d{4}-\d\d-\d\d \d\d:\d\d UTC\.", sms.body), sms.body
    assert "Card" not in sms.body and "+6140" not in sms.body and sms.subject == "SendSafe alert"


async def test_an_sms_rule_needs_sms_send_and_a_verified_destination(
    make_audit: AuditFactory, fake_messaging: tuple[FakeNotifications, str]
) -> None:
    """Issue 12, attack 3: a key scoped to audit.* only made the platform SMS any number."""
    servicer, addr = fake_messaging
    servicer.verified.add("+61411111111")
    audit = await make_audit(messaging_addr=addr)
    stub = audit.stub()
    account = 6311
    attack = alert_pb2.AlertRule(name="Card locked call +61400000000", actions=["gateway.*"], sms_to="+61411111111")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CreateAlertRule(pb.CreateAlertRuleRequest(rule=attack), metadata=principal(account, *MANAGE))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED and reason_of(info.value) == "SMS_SEND_REQUIRED"
    sender = principal(account, *MANAGE, "sms.send")
    for unverified in (alert_pb2.AlertRule(name="x", actions=["gateway.*"], sms_to="+61422222222"),
                       alert_pb2.AlertRule(name="x", actions=["gateway.*"], email_to="ops@example.com")):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreateAlertRule(pb.CreateAlertRuleRequest(rule=unverified), metadata=sender)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason_of(info.value) == "DESTINATION_NOT_VERIFIED"
    # A rule without a destination is fine for audit.manage alone; adding a number to it is not.
    plain = (await stub.CreateAlertRule(pb.CreateAlertRuleRequest(rule=alert_pb2.AlertRule(
        name="quiet", actions=["gateway.*"])), metadata=principal(account, *MANAGE))).rule
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.UpdateAlertRule(pb.UpdateAlertRuleRequest(rule_id=plain.rule_id, rule=attack),
                                   metadata=principal(account, *MANAGE))
    assert reason_of(info.value) == "SMS_SEND_REQUIRED"
    assert (await stub.CreateAlertRule(pb.CreateAlertRuleRequest(rule=attack), metadata=sender)).rule.rule_id
    names = [r.name for r in (await stub.ListAlertRules(pb.ListAlertRulesRequest(), metadata=sender)).rules
             if r.sms_to or r.email_to]
    assert names == ["Card locked call +61400000000"]  # only the one by an sms.send holder, verified


async def test_alert_messages_stop_at_the_hourly_cap_with_one_event(
    make_audit: AuditFactory, fake_messaging: tuple[FakeNotifications, str]
) -> None:
    servicer, addr = fake_messaging
    servicer.verified.add("+61411111111")
    audit = await make_audit(messaging_addr=addr, alert_messages_per_hour=2)
    account = 6321
    md = principal(account, *MANAGE, "sms.send")
    rule = alert_pb2.AlertRule(name="every call", actions=["test.cap"], sms_to="+61411111111")
    await audit.stub().CreateAlertRule(pb.CreateAlertRuleRequest(rule=rule), metadata=md)
    await audit.append(*[event(account, "test.cap") for _ in range(5)])

    async def settled() -> list[alert_pb2.AlertDelivery]:
        alerts = [a for a in await _alerts(audit, account) if a.rule_name == "every call"]
        ds = [d for a in alerts for d in a.deliveries]
        return ds if len(ds) == 5 and all(d.status != alert_pb2.DELIVERY_STATUS_PENDING for d in ds) else []

    deliveries = await eventually(settled, what="the five deliveries to settle")
    assert len(servicer.requests) == 2
    held = [d for d in deliveries if d.status == alert_pb2.DELIVERY_STATUS_FAILED]
    assert len(held) == 3 and {d.last_error for d in held} == {"ALERT_MESSAGE_CAP_REACHED"}
    feed = await audit.stub().ListEvents(pb.ListEventsRequest(action="audit.alert.*"), metadata=md)
    capped = [e for e in feed.events if e.action == "audit.alert.messages_capped"]
    assert len(capped) == 1 and capped[0].details["cap_per_hour"] == "2"  # once per window, not per message

    # The window is the hour from its first message, not a clock hour: once that hour has passed (moved back
    # here in the database), the next alert goes out and a new window starts.
    pool: asyncpg.Pool = audit.app.extras["pool"]  # type: ignore[assignment]
    assert await pool.fetchval("SELECT sent FROM alert_message_counts WHERE account_id = $1", account) == 5
    await pool.execute("UPDATE alert_message_counts SET hour = hour - interval '59 minutes' WHERE account_id = $1",
                       account)  # whatever the clock: 59 minutes into the window, it still holds
    await audit.append(event(account, "test.cap"))
    await eventually(lambda: _held_count(audit, account, 4), what="the sixth delivery to be held back")
    assert len(servicer.requests) == 2
    await pool.execute("UPDATE alert_message_counts SET hour = hour - interval '2 minutes' WHERE account_id = $1",
                       account)
    await audit.append(event(account, "test.cap"))
    await eventually(lambda: _sent_count(servicer, 3), what="the alert of the new window")
    assert await pool.fetchval("SELECT sent FROM alert_message_counts WHERE account_id = $1", account) == 1


async def _held_count(audit: Audit, account: int, n: int) -> bool:
    ds = [d for a in await _alerts(audit, account) for d in a.deliveries]
    return sum(d.last_error == "ALERT_MESSAGE_CAP_REACHED" for d in ds) == n


async def _sent_count(servicer: FakeNotifications, n: int) -> bool:
    return len(servicer.requests) == n


async def test_webhook_urls_outside_the_policy_are_refused_when_configured(make_audit: AuditFactory,
                                                                          receiver: Receiver) -> None:
    """Issue 12, attack 5: alert-rule webhooks and forwarding URLs were accepted and failed only at delivery."""
    audit = await make_audit(webhook_allow_private=False)
    stub, md = audit.stub(), principal(6402, *MANAGE)
    before = [r.rule_id for r in (await stub.ListAlertRules(pb.ListAlertRulesRequest(), metadata=md)).rules]
    for url in ("https://127.0.0.1:22/", receiver.url(), "https://[64:ff9b::a00:1]/", "https://[2002:a00:1::1]/",
                "https://[::127.0.0.1]/", "https://[::ffff:10.0.0.1]/", "https://100.64.0.1/",
                "https://169.254.169.254/latest/meta-data/", "https://hooks.example.com:8443/",
                "https://user:pw@hooks.example.com/", "http://hooks.example.com/"):
        rule = alert_pb2.AlertRule(name="ssrf", actions=["test.ssrf"], webhook_url=url)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreateAlertRule(pb.CreateAlertRuleRequest(rule=rule), metadata=md)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, url
        assert reason_of(info.value) == "INVALID_WEBHOOK_URL", url
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.UpdateAlertRule(pb.UpdateAlertRuleRequest(rule_id=before[0], rule=rule), metadata=md)
        assert reason_of(info.value) == "INVALID_WEBHOOK_URL", url
    after = (await stub.ListAlertRules(pb.ListAlertRulesRequest(), metadata=md)).rules
    assert [r.rule_id for r in after] == before and not any(r.webhook_url for r in after)  # nothing written
    for url in ("https://10.0.0.1/siem", "https://127.0.0.1:22/", receiver.url("/siem")):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SetForwarding(pb.SetForwardingRequest(forwarding=alert_pb2.Forwarding(
                enabled=True, kind=alert_pb2.FORWARDING_KIND_WEBHOOK, url=url)), metadata=md)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason_of(info.value) == "INVALID_WEBHOOK_URL"
    assert not (await stub.GetForwarding(pb.GetForwardingRequest(), metadata=md)).forwarding.enabled
    ok = alert_pb2.AlertRule(name="public", actions=["test.ssrf"], webhook_url="https://93.184.216.34/hook")
    created = (await stub.CreateAlertRule(pb.CreateAlertRuleRequest(rule=ok), metadata=md)).rule
    assert created.webhook_url == "https://93.184.216.34/hook"


async def test_webhooks_stored_before_the_check_are_refused_at_delivery(make_audit: AuditFactory,
                                                                         receiver: Receiver) -> None:
    # Rules and forwarding written before configuration-time checks existed (here straight into the store)
    # still meet the policy at every delivery attempt.
    audit = await make_audit(webhook_allow_private=False)
    account = 6401
    alerts: AlertService = audit.app.extras["alerts"]  # type: ignore[assignment]
    await alerts._store.create_rule(account, RuleSpec(name="any", actions=("test.ssrf",), webhook_url=receiver.url()),
                                    100)
    await alerts._store.set_forwarding(account, ForwardingSpec(enabled=True, kind=1, url=receiver.url("/siem"),
                                                               format=1))
    await audit.append(event(account, "test.ssrf"))

    async def failed() -> alert_pb2.AlertDelivery | None:
        alerts = await _alerts(audit, account)
        d = alerts[0].deliveries[0] if alerts else None
        return d if d is not None and d.status == alert_pb2.DELIVERY_STATUS_FAILED else None

    delivery = await eventually(failed, what="the delivery to be refused")
    assert delivery.last_error == "DESTINATION_NOT_ALLOWED" and delivery.attempts == 1

    async def forwarding_refused() -> bool:
        state = (await audit.stub().GetForwarding(pb.GetForwardingRequest(),
                                                  metadata=principal(account, *MANAGE))).forwarding
        return state.last_error == "DESTINATION_NOT_ALLOWED"

    await eventually(forwarding_refused, what="forwarding to be refused")
    assert receiver.received == [] and receiver.attempt_ids == []


async def test_a_threshold_rule_on_every_action_fires_once_over_a_batch_and_counts_it(
    make_audit: AuditFactory,
) -> None:
    """Issue 17: a rule on actions ["*"] counts every event of the account (whatever its action) through the
    index and the stored-hits query (edges one by one, the rest as a sum), and fires exactly once per window."""
    audit = await make_audit()
    account = 6501
    stub = audit.stub()
    md = principal(account, *MANAGE)
    everything = (await stub.CreateAlertRule(pb.CreateAlertRuleRequest(rule=alert_pb2.AlertRule(
        name="everything", actions=["*"], threshold=150, window_seconds=3600)), metadata=md)).rule
    # Rules on other actions never match these events; another account's events never count.
    await stub.CreateAlertRule(pb.CreateAlertRuleRequest(rule=alert_pb2.AlertRule(
        name="keys", actions=["keys.*"], threshold=2, window_seconds=60)), metadata=md)
    await audit.append(*[event(account + 1, "test.other") for _ in range(200)])
    actions = ("gateway.SendSms", "messaging.sms.sent", "test.a.b")
    first = [event(account, actions[i % 3]) for i in range(100)]
    await audit.append(*first)
    await _evaluated(audit)  # a first pass: 100 hits stored, nothing fired
    assert [a for a in await _alerts(audit, account) if a.rule_id == everything.rule_id] == []
    await audit.append(*[event(account, actions[i % 3]) for i in range(300)])  # the 150th event is in here
    await _evaluated(audit)
    fired = [a for a in await _alerts(audit, account) if a.rule_id == everything.rule_id]
    assert len(fired) == 1
    assert fired[0].match_count == 150 and fired[0].window_seconds == 3600
    pool: asyncpg.Pool = audit.app.extras["pool"]  # type: ignore[assignment]
    # The account's feed also holds the two rule changes' own events (audit.alert_rule.created): they count too.
    rows = await pool.fetch("SELECT sequence, action FROM events WHERE account_id = $1 ORDER BY sequence", account)
    assert len(rows) == 402 and [r["action"] for r in rows[:2]] == ["audit.alert_rule.created"] * 2
    assert fired[0].event_sequence == rows[149]["sequence"]
    assert await pool.fetchval("SELECT count(*) FROM alert_hits WHERE rule_id = $1", everything.rule_id) == 402
    assert [a.rule_name for a in await _alerts(audit, account)] == ["everything"]
