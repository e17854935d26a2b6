"""Notifications are sends (issue 12): the fixed alert text, the owner a rule records, the skip of what
alert deliveries caused, and the hourly cap (pure domain rules)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from sendsafe.audit.v1 import event_pb2
from services.audit.domain.alerts import alert_cap_hit, alert_text, undeliverable
from services.audit.domain.errors import SendPermissionRequired
from services.audit.domain.evaluation import EventFacts, evaluate
from services.audit.domain.rules import Rule, RuleOwner, RuleSpec, normalize_rule, owned_spec
from services.audit.service import formats

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def _facts(seq: int, action: str = "messaging.sms.sent", cause: str = "") -> EventFacts:
    return EventFacts(seq, f"ev{seq}", 1, T0 + timedelta(seconds=seq), action, 1, "messaging", "service", "",
                        {"sent": "1"}, cause)


def test_alert_text_is_a_fixed_template_without_the_rule_name() -> None:
    at = datetime(2026, 5, 1, 22, 30, 59, tzinfo=timezone(timedelta(hours=10)))
    assert alert_text(42, 3, "gateway.unauthenticated", at) == (
        "SendSafe alert: rule 42 matched 3 event(s) (gateway.unauthenticated) at 2026-05-01 12:30 UTC.")
    # Nothing but the platform's action name goes in, and only its plain characters.
    text = alert_text(1, 1, "x Call +61400000000 now!" * 10, T0)
    assert " " not in text.split("(")[1].split(")")[0] and len(text) < 140
    assert alert_text(1, 1, "", T0).endswith("(unknown) at 2026-05-01 12:00 UTC.")


def test_a_rule_with_a_number_records_an_owner_who_may_send() -> None:
    spec = RuleSpec(name="n", sms_to="+61411111111")
    with pytest.raises(SendPermissionRequired) as info:
        owned_spec(spec, RuleOwner(7, api_key_id="k", may_send=False))
    assert info.value.reason == "SMS_SEND_REQUIRED"
    with pytest.raises(SendPermissionRequired):
        owned_spec(RuleSpec(name="n", email_to="a@example.com"), RuleOwner(7))
    owned = owned_spec(spec, RuleOwner(7, "alice", "k", 5, 50, ("AU",), may_send=True))
    assert (owned.owner_user_id, owned.owner_api_username, owned.owner_api_key_id, owned.owner_per_minute,
            owned.owner_per_day, owned.owner_countries) == (7, "alice", "k", 5, 50, ("AU",))
    # Without a number or address any audit.manage holder may set a rule.
    assert owned_spec(RuleSpec(name="n", webhook_url="https://example.com/"), RuleOwner(7)).owner_user_id == 7


def test_events_caused_by_alert_deliveries_never_match() -> None:
    rule = Rule(1, 1, normalize_rule(RuleSpec(name="sent", actions=("messaging.sms.sent",))))
    result = evaluate([rule], [_facts(1), _facts(2, cause="alert_delivery"), _facts(3)], {})
    assert [f.event.sequence for f in result.fires] == [1, 3]
    threshold = Rule(2, 1, normalize_rule(RuleSpec(name="many", actions=("messaging.sms.sent",),
                                                         threshold=2, window_seconds=60)))
    only_alerts = [_facts(i, cause="alert_delivery") for i in range(1, 5)]
    assert evaluate([threshold], only_alerts, {}).hits == []


def test_the_cause_is_read_from_the_stored_event() -> None:
    ev = event_pb2.Event(event_id="e", action="messaging.sms.sent", cause="alert_delivery")
    ev.event_time.FromDatetime(T0)
    assert formats.facts(1, ev.SerializeToString()).cause == "alert_delivery"


def test_the_hourly_cap_holds_back_and_reports_once() -> None:
    verdicts = [alert_cap_hit(n, 3) for n in range(1, 7)]
    assert verdicts == [(False, False)] * 3 + [(True, True), (True, False), (True, False)]


def test_a_pending_alert_goes_only_to_a_destination_its_rule_still_names() -> None:
    rule = RuleSpec(name="n", sms_to="+61411111111", owner_user_id=7)
    assert undeliverable(rule, "sms", "+61411111111") == ""
    assert undeliverable(None, "sms", "+61411111111") == "ALERT_RULE_DELETED"
    # Changed by someone else since it fired: the old number is not sent to as the new owner.
    assert undeliverable(RuleSpec(name="n", owner_user_id=8), "sms", "+61411111111") == "ALERT_TARGET_CHANGED"
    assert undeliverable(rule, "email", "+61411111111") == "ALERT_TARGET_CHANGED"
