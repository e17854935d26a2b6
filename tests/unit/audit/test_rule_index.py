"""Alert rules indexed by action (issue 17): the indexed evaluation gives exactly what comparing every event
with every rule gave (the engine before the index, kept here verbatim as the reference), on randomized rules
and events with a fixed seed, and an event's comparisons do not grow with the rules that cannot match it."""

from __future__ import annotations

import bisect
import random
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from services.audit.domain.evaluation import Evaluation, EventFacts, Fire, Hit, evaluate, matches, needed_hits
from services.audit.domain.rule_index import RuleIndex, pattern_kind
from services.audit.domain.rules import Rule, RuleSpec, normalize_rule

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def naive_evaluate(rules: Sequence[Rule], events: Sequence[EventFacts],
                   window_hits: Mapping[int, Sequence[Hit]]) -> Evaluation:
    """The alert engine before issue 17: every event against every rule of its account."""
    from services.audit.domain.evaluation import amount_of

    by_account: dict[int, list[Rule]] = {}
    for r in rules:
        by_account.setdefault(r.account_id, []).append(r)
    result = Evaluation()
    last_fire = {r.rule_id: r.last_fire_time for r in rules}
    times: dict[int, list[tuple[datetime, int, int]]] = {
        rid: sorted((h.event_time, h.sequence, h.amount) for h in hs) for rid, hs in window_hits.items()
    }
    for ev in events:
        if ev.cause:
            continue
        for rule in by_account.get(ev.account_id, ()):
            spec = rule.spec
            if not matches(spec, ev):
                continue
            previous = last_fire.get(rule.rule_id)
            if not spec.is_threshold:
                cooldown = timedelta(seconds=spec.cooldown_seconds)
                if previous is None or ev.event_time >= previous + cooldown:
                    result.fires.append(Fire(rule, ev, 1))
                    last_fire[rule.rule_id] = result.last_fire[rule.rule_id] = ev.event_time
                continue
            amount = amount_of(spec, ev)
            if amount <= 0:
                continue
            hit = Hit(rule.rule_id, ev.event_time, amount, ev.sequence)
            result.hits.append(hit)
            window = times.setdefault(rule.rule_id, [])
            bisect.insort(window, (hit.event_time, hit.sequence, hit.amount))
            since = ev.event_time - timedelta(seconds=spec.window_seconds)
            lo = bisect.bisect_right(window, (since, 2**63, 0))
            hi = bisect.bisect_right(window, (ev.event_time, 2**63, 0))
            total = sum(a for _, _, a in window[lo:hi])
            rearm = timedelta(seconds=max(spec.window_seconds, spec.cooldown_seconds))
            if total >= spec.threshold and (previous is None or ev.event_time >= previous + rearm):
                result.fires.append(Fire(rule, ev, total))
                last_fire[rule.rule_id] = result.last_fire[rule.rule_id] = ev.event_time
    return result


ACTIONS = ["gateway.SendSms", "gateway.unauthenticated", "identity.login", "identity.login.failed",
           "identity.auth.otp", "keys.api_key.issued", "keys.api_key.revoked", "messaging.sms.sent",
           "messaging.contact.created", "audit.alert.messages_capped", "audit.alert_rule.created", "x[1]", "x*y"]
PATTERNS = ["*", "gateway.*", "gateway.SendSms", "identity.login*", "identity.*", "identity.?ogin", "*.failed",
            "keys.api_key.issued", "keys.*", "messaging.sms.sent", "messaging.*.created", "[gk]*", "audit.*",
            "x[[]1]", "x*y", "nothing.here", "identity.auth.*", "**", "gateway.SendSm?"]


def _random_rule(rng: random.Random, rule_id: int, account: int) -> Rule:
    actions = tuple(rng.sample(PATTERNS, rng.choice([0, 0, 1, 1, 1, 2, 3])))
    threshold = rng.choice([0, 0, 2, 3, 5, 8])
    spec = RuleSpec(
        name=f"r{rule_id}", actions=actions, disabled=rng.random() < 0.1,
        outcomes=tuple(rng.sample([1, 2, 3], rng.choice([0, 0, 1, 2]))),
        actor_types=tuple(rng.sample(["user", "staff", "service"], rng.choice([0, 0, 0, 1]))),
        actor_ids=("7*",) if rng.random() < 0.1 else (),
        client_networks=("203.0.113.0/28",) if rng.random() < 0.1 else (),
        exclude_client_networks=("203.0.113.0/30",) if rng.random() < 0.1 else (),
        threshold=threshold, window_seconds=rng.choice([5, 30, 120]) if threshold > 1 else 0,
        cooldown_seconds=rng.choice([0, 0, 10, 60]),
        sum_detail="sent" if threshold > 1 and rng.random() < 0.3 else "",
    )
    last = T0 + timedelta(seconds=rng.randint(-200, 50)) if rng.random() < 0.3 else None
    return Rule(rule_id, account, normalize_rule(spec), last_fire_time=last)


def _random_event(rng: random.Random, seq: int) -> EventFacts:
    # Roughly in time order, as emitters stamp their own times: a few seconds back and forth.
    t = T0 + timedelta(seconds=seq * 0.7 + rng.uniform(-5, 5))
    return EventFacts(
        seq, f"ev{seq}", rng.choice([1, 1, 2, 3]), t, rng.choice(ACTIONS), rng.choice([1, 2, 3]),
        rng.choice(["7", "70", "8"]), rng.choice(["user", "staff", "service", "anonymous"]),
        f"203.0.113.{rng.randint(0, 20)}", {"sent": str(rng.choice([0, 1, 3, 40]))} if rng.random() < 0.8 else {},
        cause="alert_delivery" if rng.random() < 0.05 else "",
    )


@pytest.mark.parametrize("seed", range(40))
def test_indexed_evaluation_equals_every_event_against_every_rule(seed: int) -> None:
    rng = random.Random(seed)
    rules = [_random_rule(rng, i, rng.choice([1, 1, 2, 4])) for i in range(1, rng.randint(2, 40))]
    index = RuleIndex()
    hits: dict[int, list[Hit]] = {}
    seq = 0
    for _ in range(4):  # consecutive passes with one index, stored hits and last fires carried over
        events = [_random_event(rng, seq + i) for i in range(1, rng.randint(1, 120))]
        seq += len(events)
        index.update({1, 2, 3, 4}, rules)
        got = evaluate(rules, events, hits, index)
        want = naive_evaluate(rules, events, hits)
        assert got.fires == want.fires
        assert sorted(got.hits, key=lambda h: (h.sequence, h.rule_id)) == sorted(
            want.hits, key=lambda h: (h.sequence, h.rule_id))
        assert got.last_fire == want.last_fire
        rules = [Rule(r.rule_id, r.account_id, r.spec, last_fire_time=got.last_fire.get(r.rule_id, r.last_fire_time))
                 for r in rules]
        for h in got.hits:
            hits.setdefault(h.rule_id, []).append(h)


@pytest.mark.parametrize("seed", range(40))
def test_the_stored_hits_a_pass_needs_count_like_all_of_them(seed: int) -> None:
    """What the store returns (hits at the windows' edges one by one, those inside every window as one sum)
    makes every threshold decision the full history of hits makes."""
    rng = random.Random(1000 + seed)
    rules = [Rule(i, 1, normalize_rule(RuleSpec(
        name=f"t{i}", actions=(rng.choice(["*", "gateway.*", "messaging.sms.sent"]),), threshold=rng.randint(2, 60),
        window_seconds=rng.choice([10, 60, 300]), cooldown_seconds=rng.choice([0, 30]),
        sum_detail=rng.choice(["", "sent"]))),
        last_fire_time=T0 + timedelta(seconds=rng.randint(-600, 0)) if rng.random() < 0.3 else None)
        for i in range(1, 6)]
    stored = {r.rule_id: [Hit(r.rule_id, T0 + timedelta(seconds=rng.uniform(-400, 40)), rng.randint(1, 5), -k)
                          for k in range(rng.randint(0, 300))] for r in rules}
    events = [EventFacts(i, f"e{i}", 1, T0 + timedelta(seconds=rng.uniform(0, rng.choice([3, 30, 500]))),
                         rng.choice(["gateway.SendSms", "messaging.sms.sent"]), 1, "7", "user", "203.0.113.1",
                         {"sent": str(rng.randint(0, 9))}) for i in range(1, rng.randint(2, 200))]
    earliest, latest = min(e.event_time for e in events), max(e.event_time for e in events)
    needed = {r.rule_id: needed_hits(stored[r.rule_id], r.spec.window_seconds, earliest, latest) for r in rules}
    got, want = evaluate(rules, events, needed), naive_evaluate(rules, events, stored)
    assert got.fires == want.fires and got.hits == want.hits and got.last_fire == want.last_fire
    assert sum(len(v) for v in needed.values()) <= sum(len(v) for v in stored.values()) + len(rules)


def test_comparisons_do_not_grow_with_rules_that_cannot_match() -> None:
    broad = Rule(1, 1, normalize_rule(RuleSpec(name="every event", actions=("*",), threshold=1000,
                                               window_seconds=3600)))
    events = [EventFacts(i, f"e{i}", 1, T0 + timedelta(seconds=i), "gateway.SendSms", 1, "7", "user", "203.0.113.1")
              for i in range(1, 501)]
    counts = []
    for others in (0, 10, 99):
        rules = [broad] + [Rule(100 + k, 1, normalize_rule(RuleSpec(
            name=f"other {k}", actions=(["keys.api_key.issued", "identity.*", "messaging.contact.*", "*.failed",
                                         "gateway.Send?mx", "gateway.unauth*"][k % 6] + ("" if k < 6 else f"{k}"),),
            threshold=5 if k % 2 else 0, window_seconds=60 if k % 2 else 0))) for k in range(others)]
        result = evaluate(rules, events, {})
        assert result.fires == naive_evaluate(rules, events, {}).fires
        counts.append(result.comparisons)
    assert counts == [500, 500, 500]  # one candidate per event: the broad rule, however many others
    # Other accounts' rules are never candidates either.
    theirs = [Rule(1000 + k, 2, normalize_rule(RuleSpec(name=f"theirs {k}", actions=("*",)))) for k in range(50)]
    assert evaluate([broad, *theirs], events, {}).comparisons == 500


def test_the_index_is_rebuilt_only_when_an_accounts_rules_change() -> None:
    spec = normalize_rule(RuleSpec(name="keys", actions=("keys.*",)))
    rules = [Rule(1, 1, spec, update_time=T0), Rule(2, 2, spec, update_time=T0)]
    index = RuleIndex()
    index.update([1, 2], rules)
    index.update([1, 2], rules)
    assert index.builds == 2
    changed = Rule(1, 1, normalize_rule(RuleSpec(name="logins", actions=("identity.login",))),
                   update_time=T0 + timedelta(seconds=1))
    index.update([1], [changed])
    assert index.builds == 3
    assert index.candidates(1, "keys.api_key.issued") == () and index.candidates(1, "identity.login") == (changed,)
    index.update([2], [])  # every rule of account 2 deleted (or disabled)
    assert index.candidates(2, "keys.api_key.issued") == ()
    assert index.candidates(1, "audit.alert.messages_capped") == ()  # never the log's own bookkeeping


def test_patterns_are_classified_as_fnmatch_reads_them() -> None:
    assert pattern_kind("keys.api_key.issued") == ("exact", "keys.api_key.issued")
    assert pattern_kind("*") == ("prefix", "")
    assert pattern_kind("identity.login*") == ("prefix", "identity.login")
    assert pattern_kind("*.failed")[0] == pattern_kind("a?*")[0] == pattern_kind("[ab]*")[0] == "glob"
