"""The alert engine's pure core: which events match which rules, threshold windows, cooldowns, and fires."""

from __future__ import annotations

import bisect
import fnmatch
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from services.audit.domain.rules import UNALERTABLE_PREFIX, Rule, RuleSpec


@dataclass(frozen=True)
class EventFacts:
    """What alert rules look at in an event."""

    sequence: int
    event_id: str
    account_id: int  # feed account
    event_time: datetime
    action: str
    outcome: int
    actor_id: str
    actor_type: str
    client_address: str
    details: Mapping[str, str] = field(default_factory=dict)
    cause: str = ""  # Event.cause: set on what alert deliveries caused; never matches a rule


def _in_any(address: str, networks: Sequence[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n) for n in networks)


def matches(spec: RuleSpec, ev: EventFacts) -> bool:
    if spec.disabled or ev.action.startswith(UNALERTABLE_PREFIX):
        return False
    if spec.actions and not any(fnmatch.fnmatchcase(ev.action, p) for p in spec.actions):
        return False
    if spec.outcomes and ev.outcome not in spec.outcomes:
        return False
    if spec.actor_ids and not any(fnmatch.fnmatchcase(ev.actor_id, p) for p in spec.actor_ids):
        return False
    if spec.actor_types and ev.actor_type not in spec.actor_types:
        return False
    if spec.client_networks and not _in_any(ev.client_address, spec.client_networks):
        return False
    return not (spec.exclude_client_networks and _in_any(ev.client_address, spec.exclude_client_networks))


def amount_of(spec: RuleSpec, ev: EventFacts) -> int:
    if not spec.sum_detail:
        return 1
    raw = ev.details.get(spec.sum_detail, "")
    return int(raw) if raw.isdigit() and len(raw) <= 12 else 0


@dataclass(frozen=True)
class Hit:
    rule_id: int
    event_time: datetime
    amount: int
    sequence: int


@dataclass(frozen=True)
class Fire:
    rule: Rule
    event: EventFacts
    count: int


@dataclass
class Evaluation:
    hits: list[Hit] = field(default_factory=list)
    fires: list[Fire] = field(default_factory=list)
    last_fire: dict[int, datetime] = field(default_factory=dict)


def evaluate(
    rules: Sequence[Rule], events: Sequence[EventFacts], window_hits: Mapping[int, Sequence[Hit]]
) -> Evaluation:
    """Run `events` (in log order) through the accounts' `rules`.

    `window_hits` holds, per threshold rule, the hits already stored that can still be inside a window
    of this batch. Each event counts once per rule; a per-event rule fires on every match outside its
    cooldown; a threshold rule fires when the matches in (t - window, t] reach the threshold and it has
    not fired within max(window, cooldown) before t: so once per window however the events interleave.
    """
    by_account: dict[int, list[Rule]] = {}
    for r in rules:
        by_account.setdefault(r.account_id, []).append(r)
    result = Evaluation()
    last_fire = {r.rule_id: r.last_fire_time for r in rules}
    times: dict[int, list[tuple[datetime, int, int]]] = {
        rid: sorted((h.event_time, h.sequence, h.amount) for h in hs) for rid, hs in window_hits.items()
    }
    for ev in events:
        if ev.cause:  # caused by an alert delivery: an alert never feeds on its own notification
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


def longest_window(rules: Iterable[Rule]) -> int:
    return max((r.spec.window_seconds for r in rules if r.spec.is_threshold), default=0)
