"""The alert engine's pure core: which events match which rules, threshold windows, cooldowns, and fires."""

from __future__ import annotations

import bisect
import fnmatch
import functools
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from services.audit.domain.rule_index import RuleIndex
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


@functools.lru_cache(maxsize=4096)
def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def _in_any(address: str, networks: Sequence[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in _network(n) for n in networks)


def action_matches(spec: RuleSpec, action: str) -> bool:
    return not spec.actions or any(fnmatch.fnmatchcase(action, p) for p in spec.actions)


def conditions_match(spec: RuleSpec, ev: EventFacts) -> bool:
    """Every condition of the rule but its actions (which `RuleIndex` has matched already)."""
    if spec.outcomes and ev.outcome not in spec.outcomes:
        return False
    if spec.actor_ids and not any(fnmatch.fnmatchcase(ev.actor_id, p) for p in spec.actor_ids):
        return False
    if spec.actor_types and ev.actor_type not in spec.actor_types:
        return False
    if spec.client_networks and not _in_any(ev.client_address, spec.client_networks):
        return False
    return not (spec.exclude_client_networks and _in_any(ev.client_address, spec.exclude_client_networks))


def matches(spec: RuleSpec, ev: EventFacts) -> bool:
    """Whether the rule matches the event, rule by rule (what the index must agree with)."""
    if spec.disabled or ev.action.startswith(UNALERTABLE_PREFIX):
        return False
    return action_matches(spec, ev.action) and conditions_match(spec, ev)


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
    comparisons: int = 0  # (event, rule) pairs whose conditions were checked: the index's candidates only


class _Window:
    """A threshold rule's hits during one pass - the stored ones and this batch's, whose times are known
    before the pass - summed over any (since, until] in O(log n): a Fenwick tree over their (time, sequence)
    order. Before, each event re-summed every hit of the window (quadratic in a busy window)."""

    def __init__(self, stored: Sequence[Hit], coming: Sequence[tuple[datetime, int]]) -> None:
        self._keys = sorted([(h.event_time, h.sequence) for h in stored] + list(coming))
        self._tree = [0] * (len(self._keys) + 1)
        for h in stored:
            self.add(h.event_time, h.sequence, h.amount)

    def add(self, event_time: datetime, sequence: int, amount: int) -> None:
        i = bisect.bisect_left(self._keys, (event_time, sequence)) + 1
        tree = self._tree
        while i < len(tree):
            tree[i] += amount
            i += i & -i

    def _upto(self, t: datetime) -> int:
        i = bisect.bisect_right(self._keys, (t, 2**63))
        total, tree = 0, self._tree
        while i:
            total += tree[i]
            i -= i & -i
        return total

    def total(self, since: datetime, until: datetime) -> int:
        """The amounts added with since < time <= until."""
        return self._upto(until) - self._upto(since)


def evaluate(
    rules: Sequence[Rule], events: Sequence[EventFacts], window_hits: Mapping[int, Sequence[Hit]],
    index: RuleIndex | None = None,
) -> Evaluation:
    """Run `events` (in log order) through the accounts' `rules`.

    `window_hits` holds, per threshold rule, the hits already stored that can still be inside a window
    of this batch. Each event counts once per rule; a per-event rule fires on every match outside its
    cooldown; a threshold rule fires when the matches in (t - window, t] reach the threshold and it has
    not fired within max(window, cooldown) before t: so once per window however the events interleave.

    `index` (kept by the caller across passes, updated with these `rules`) finds each event's candidate
    rules by account and action; without one it is built here. `rules` give each rule's last fire time.
    """
    if index is None:
        index = RuleIndex(rules)
    result = Evaluation()
    last_fire = {r.rule_id: r.last_fire_time for r in rules}
    current = {r.rule_id: r for r in rules}  # the index may hold an earlier read of an unchanged rule
    # First which rules each event matches (nothing here depends on earlier fires), so each threshold
    # rule's window knows every time it will hold.
    matched: list[tuple[EventFacts, list[tuple[Rule, int]]]] = []
    coming: dict[int, list[tuple[datetime, int]]] = {}
    for ev in events:
        if ev.cause:  # caused by an alert delivery: an alert never feeds on its own notification
            continue
        mine: list[tuple[Rule, int]] = []
        for candidate in index.candidates(ev.account_id, ev.action):
            result.comparisons += 1
            spec = candidate.spec
            if not conditions_match(spec, ev):
                continue
            rule = current.get(candidate.rule_id, candidate)
            if not spec.is_threshold:
                mine.append((rule, 1))
                continue
            amount = amount_of(spec, ev)
            if amount > 0:
                mine.append((rule, amount))
                coming.setdefault(rule.rule_id, []).append((ev.event_time, ev.sequence))
        if mine:
            matched.append((ev, mine))
    windows = {rid: _Window(window_hits.get(rid, ()), keys) for rid, keys in coming.items()}
    for ev, mine in matched:
        for rule, amount in mine:
            spec = rule.spec
            previous = last_fire.get(rule.rule_id)
            if not spec.is_threshold:
                cooldown = timedelta(seconds=spec.cooldown_seconds)
                if previous is None or ev.event_time >= previous + cooldown:
                    result.fires.append(Fire(rule, ev, 1))
                    last_fire[rule.rule_id] = result.last_fire[rule.rule_id] = ev.event_time
                continue
            result.hits.append(Hit(rule.rule_id, ev.event_time, amount, ev.sequence))
            window = windows[rule.rule_id]
            window.add(ev.event_time, ev.sequence, amount)
            rearm = timedelta(seconds=max(spec.window_seconds, spec.cooldown_seconds))
            if previous is not None and ev.event_time < previous + rearm:
                continue  # fired within its window: no count needed
            total = window.total(ev.event_time - timedelta(seconds=spec.window_seconds), ev.event_time)
            if total >= spec.threshold:
                result.fires.append(Fire(rule, ev, total))
                last_fire[rule.rule_id] = result.last_fire[rule.rule_id] = ev.event_time
    return result


def needed_hits(hits: Sequence[Hit], window_seconds: int, earliest: datetime, latest: datetime) -> list[Hit]:
    """What an evaluation of events timed within [earliest, latest] needs of a threshold rule's stored
    `hits` (what the store's query returns, here for tests): those in (earliest - window, latest - window]
    and in (earliest, latest] one by one - the events' windows start and end among them - and those in
    (latest - window, earliest], which are inside every event's window, as one hit of their summed amount.
    A busy rule's window of stored hits is then a sum, not thousands of rows each pass."""
    w = timedelta(seconds=window_seconds)
    since, edge = earliest - w, latest - w
    out: list[Hit] = []
    inside, rule_id = 0, 0
    for h in hits:
        if h.event_time <= since or h.event_time > latest:
            continue
        if edge < h.event_time <= earliest:
            inside += h.amount
            rule_id = h.rule_id
        else:
            out.append(h)
    if inside:
        out.append(Hit(rule_id, earliest, inside, 0))
    return out
