"""Audit domain rules: sealing, filters, integrity findings, alert rules and their evaluation."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sendsafe.audit.v1 import event_pb2
from services.audit.domain.alerts import mask_target
from services.audit.domain.delivery import retry_delay, webhook_secret
from services.audit.domain.errors import CursorInvalid, RuleInvalid
from services.audit.domain.evaluation import EventFacts, evaluate
from services.audit.domain.events import IncomingEvent, sequence_events
from services.audit.domain.filters import build_filter
from services.audit.domain.integrity import Problem, classify_leaf
from services.audit.domain.rules import Rule, RuleSpec, default_rules, normalize_rule
from services.audit.domain.siem import ExportCursor, cef_ext, cef_header
from svckit.errors import InvalidArgument

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def _incoming(account: int, subject: int = 0, event_id: str = "e") -> IncomingEvent:
    ev = event_pb2.Event(event_id=event_id, action="x.y", subject_account_id=subject)
    ev.actor.account_id = account
    return IncomingEvent(event_id, T0, account, "7", "x.y", 1, "", ev.SerializeToString(deterministic=True),
                           subject_account_id=subject)


def test_sealed_bytes_are_an_event_that_commits_to_its_positions() -> None:
    sealed, counts = sequence_events(41, {9: 4}, [_incoming(9, event_id="a"), _incoming(1, 9, "b"),
                                                    _incoming(3, event_id="c")])
    assert [(s.sequence, s.account_sequence) for s in sealed] == [(42, 5), (43, 6), (44, 1)]
    assert counts == {9: 6, 3: 1}
    ev = event_pb2.Event.FromString(sealed[1].leaf)
    assert (ev.event_id, ev.sequence, ev.account_sequence, ev.subject_account_id) == ("b", 43, 6, 9)
    assert sealed[1].leaf_hash == hashlib.sha256(b"\x00" + sealed[1].leaf).digest()


def test_staff_access_lands_in_the_subject_accounts_feed() -> None:
    assert _incoming(1, 9).feed_account == 9 and _incoming(9).feed_account == 9


def test_filters_are_checked() -> None:
    kw: dict[str, Any] = dict(start_time=None, end_time=None, action="", actor_id="", actor_type="", outcome=0,
              client_address="", trace_id="", resource_type="", resource_id="", request_id="", page_size=0,
              page_token="")
    f = build_filter(5, **{**kw, "action": "keys.*", "client_address": "10.1.2.3/16", "page_size": 9999})
    assert (f.action, f.action_prefix, f.client_network, f.limit) == ("keys.", True, "10.1.0.0/16", 500)
    for bad in ({"action": "a*b*"}, {"client_address": "nope"}, {"outcome": 9}, {"page_token": "x"},
                {"page_token": str(2**63)}, {"page_token": "9" * 19}, {"page_token": "\uff11\uff12"},
                {"start_time": T0, "end_time": T0}):
        with pytest.raises(InvalidArgument):
            build_filter(5, **{**kw, **bad})
    assert build_filter(5, **{**kw, "page_token": str(2**63 - 1)}).after_sequence == 2**63 - 1


def test_leaf_problems_are_named() -> None:
    c = [b"a", b"b", b"c", b"d"]
    assert classify_leaf(1, b"c", c, b"b") is Problem.REORDERED  # b and c swapped
    assert classify_leaf(1, b"x", c, b"b") is Problem.INSERTED  # x put in before b
    assert classify_leaf(1, b"c", c, b"d") is Problem.REMOVED  # b taken out
    assert classify_leaf(1, b"d", c, b"c") is Problem.REORDERED
    assert classify_leaf(1, b"x", c, b"c") is Problem.ALTERED


def test_export_cursor_round_trips_and_rejects_forgeries() -> None:
    c = ExportCursor(1234, 5678)
    assert ExportCursor.parse(c.encode()) == c and ExportCursor.parse("") == ExportCursor()
    for bad in ("v2.1.2", "v1.-1.2", "v1.1", "v1.a.b"):
        with pytest.raises(CursorInvalid):
            ExportCursor.parse(bad)


def test_cef_escapes() -> None:
    assert cef_header("a|b\\c") == "a\\|b\\\\c"
    assert cef_ext("k=v\nx") == "k\\=v\\nx"


# -- alert rules ----------------------------------------------------------------------------------------


def test_rules_are_validated_and_normalized() -> None:
    r = normalize_rule(RuleSpec(name="  x ", threshold=0, client_networks=("10.0.0.1",), outcomes=(2, 2)))
    assert (r.name, r.threshold, r.client_networks, r.outcomes) == ("x", 1, ("10.0.0.1/32",), (2,))
    bad = [
        RuleSpec(name=""),
        RuleSpec(name="x", threshold=5),  # no window
        RuleSpec(name="x", sms_to="0411111111"),
        RuleSpec(name="x", email_to="nope"),
        RuleSpec(name="x", actor_types=("robot",)),
        RuleSpec(name="x", client_networks=("300.1.1.1",)),
        RuleSpec(name="x", sum_detail="sent"),  # needs a threshold
        RuleSpec(name="x", actions=tuple("a" for _ in range(21))),
    ]
    for spec in bad:
        with pytest.raises(RuleInvalid):
            normalize_rule(spec)
    assert all(normalize_rule(s) == s for s in default_rules())


def _facts(seq: int, *, t: datetime = T0, action: str = "gateway.unauthenticated", outcome: int = 3,
           account: int = 1, address: str = "203.0.113.9", actor_type: str = "anonymous",
           details: dict[str, str] | None = None) -> EventFacts:
    return EventFacts(seq, f"ev{seq}", account, t, action, outcome, "7", actor_type, address, details or {})


def _rule(spec: RuleSpec, rule_id: int = 1, account: int = 1, last: datetime | None = None) -> Rule:
    return Rule(rule_id, account, normalize_rule(spec), last_fire_time=last)


FAILED_LOGINS = RuleSpec(name="logins", actions=("gateway.unauthenticated",), outcomes=(2, 3), threshold=6,
                           window_seconds=600)


def test_threshold_fires_once_per_window() -> None:
    rule = _rule(FAILED_LOGINS)
    burst = [_facts(i, t=T0 + timedelta(seconds=i)) for i in range(1, 40)]
    result = evaluate([rule], burst, {})
    assert [(f.event.sequence, f.count) for f in result.fires] == [(6, 6)]
    assert len(result.hits) == 39
    # Later, within the window of that firing: nothing; once the window has passed, it can fire again.
    later = evaluate([_rule(FAILED_LOGINS, last=result.last_fire[1])],
                       [_facts(100 + i, t=T0 + timedelta(seconds=300 + i)) for i in range(10)],
                       {1: result.hits})
    assert later.fires == []
    after = evaluate([_rule(FAILED_LOGINS, last=result.last_fire[1])],
                       [_facts(200 + i, t=T0 + timedelta(seconds=700 + i)) for i in range(6)],
                       {1: result.hits})
    assert len(after.fires) == 1


def test_threshold_counts_only_the_sliding_window() -> None:
    spread = [_facts(i, t=T0 + timedelta(minutes=3 * i)) for i in range(1, 12)]  # one every 3 min
    assert evaluate([_rule(FAILED_LOGINS)], spread, {}).fires == []


def test_per_event_rules_cooldown_and_conditions() -> None:
    keys = _rule(RuleSpec(name="new key", actions=("keys.api_key.*",), cooldown_seconds=60))
    events = [_facts(1, action="keys.api_key.issued"), _facts(2, action="keys.api_key.issued",
                                                            t=T0 + timedelta(seconds=30)),
              _facts(3, action="keys.api_key.revoked", t=T0 + timedelta(seconds=61)),
              _facts(4, action="sms.send", t=T0 + timedelta(seconds=200))]
    assert [f.event.sequence for f in evaluate([keys], events, {}).fires] == [1, 3]
    outside = _rule(RuleSpec(name="not from the office", exclude_client_networks=("198.51.100.0/24",)))
    got = evaluate([outside], [_facts(1, address="198.51.100.7"), _facts(2), _facts(3, account=2)], {})
    assert [f.event.sequence for f in got.fires] == [2]  # account 2's event is not this account's
    staff = _rule(RuleSpec(name="staff", actor_types=("staff",)))
    assert len(evaluate([staff], [_facts(1, actor_type="staff"), _facts(2)], {}).fires) == 1
    # The log's own alert bookkeeping never triggers rules.
    anything = _rule(RuleSpec(name="all"))
    assert evaluate([anything], [_facts(1, action="audit.alert.fired")], {}).fires == []


def test_sum_detail_counts_messages_not_events() -> None:
    volume = _rule(default_rules()[3])
    batches = [_facts(i, action="messaging.sms.sent", outcome=1, details={"sent": "400"},
                      t=T0 + timedelta(minutes=i)) for i in range(1, 4)]
    fired = evaluate([volume], batches, {}).fires
    assert [(f.event.sequence, f.count) for f in fired] == [(3, 1200)]


def test_webhook_secrets_are_derived_per_account_and_version() -> None:
    # (URL checks and signatures are svckit.webhooks': tests/unit/test_webhooks.py)
    root = b"r" * 32
    s1, s2 = webhook_secret(root, 7, 1), webhook_secret(root, 7, 2)
    assert s1 != s2 != webhook_secret(root, 8, 1) and s1.startswith("whsec_")
    assert s1 == webhook_secret(root, 7, 1) and len(base64.b64decode(s1[6:], validate=True)) == 48


def test_targets_are_masked() -> None:
    assert mask_target("sms", "+61411111111") == "+614*****111"
    assert mask_target("email", "alice@example.com") == "a***@example.com"
    assert mask_target("webhook", "https://hooks.example.com/secret-path") == "https://hooks.example.com/…"


def test_retry_delays_grow_and_cap() -> None:
    assert [retry_delay(n) for n in (1, 2, 3)] == [5.0, 10.0, 20.0]
    assert retry_delay(30) == 1800.0
