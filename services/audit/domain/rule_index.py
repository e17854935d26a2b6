"""Alert rules indexed by account and action, so an event is compared only with the rules whose `actions`
can match its action: an exact action maps to its rules, a trailing-`*` pattern sits in a prefix map
(looked up once per prefix of the action, however many rules there are), rules with `*` or no actions at all
are in one list, and only other globs ("*.failed", "identity.?ogin") are tried one by one. The candidates of
an (account, action) are computed once and remembered until that account's rules change, so an event costs
a dictionary lookup plus the rules that can match it: never the account's rules on other actions."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from services.audit.domain.rules import UNALERTABLE_PREFIX, Rule

_GLOB_CHARS = frozenset("*?[")
MAX_REMEMBERED_ACTIONS = 4096  # per account; actions are the platform's names, but nothing relies on it
MAX_ACCOUNTS = 50_000


def pattern_kind(pattern: str) -> tuple[str, str]:
    """("exact", action), ("prefix", what it starts with; "" for "*") or ("glob", pattern), as fnmatchcase
    reads the pattern."""
    if not _GLOB_CHARS.intersection(pattern):
        return "exact", pattern
    if pattern.endswith("*") and not _GLOB_CHARS.intersection(pattern[:-1]):
        return "prefix", pattern[:-1]
    return "glob", pattern


def fingerprint(rules: Iterable[Rule]) -> tuple[tuple[int, datetime | None], ...]:
    """What identifies an account's rule set: a created or deleted rule changes the ids, an update (spec,
    enabled or not) changes its update_time."""
    return tuple((r.rule_id, r.update_time) for r in rules)


@dataclass
class _AccountRules:
    key: tuple[tuple[int, datetime | None], ...]
    rules: tuple[Rule, ...]  # the account's enabled rules, in the order given (rule id order)
    always: tuple[int, ...] = ()  # positions in `rules` of rules for every action ("*" or no actions)
    exact: dict[str, list[int]] = field(default_factory=dict)
    prefixes: dict[str, list[int]] = field(default_factory=dict)
    globs: list[tuple[str, int]] = field(default_factory=list)
    longest_prefix: int = 0
    remembered: dict[str, tuple[Rule, ...]] = field(default_factory=dict)

    @classmethod
    def build(cls, key: tuple[tuple[int, datetime | None], ...], rules: Sequence[Rule]) -> _AccountRules:
        enabled = tuple(r for r in rules if not r.spec.disabled)
        out = cls(key, enabled)
        always = []
        for pos, rule in enumerate(enabled):
            kinds = [pattern_kind(p) for p in rule.spec.actions]
            if not kinds or ("prefix", "") in kinds:
                always.append(pos)
                continue
            for kind, text in kinds:
                if kind == "exact":
                    out.exact.setdefault(text, []).append(pos)
                elif kind == "prefix":
                    out.prefixes.setdefault(text, []).append(pos)
                    out.longest_prefix = max(out.longest_prefix, len(text))
                else:
                    out.globs.append((text, pos))
        out.always = tuple(always)
        return out

    def candidates(self, action: str) -> tuple[Rule, ...]:
        found = self.remembered.get(action)
        if found is not None:
            return found
        positions = set(self.always)
        positions.update(self.exact.get(action, ()))
        for n in range(1, min(len(action), self.longest_prefix) + 1):
            positions.update(self.prefixes.get(action[:n], ()))
        positions.update(pos for pattern, pos in self.globs if pos not in positions
                         and fnmatch.fnmatchcase(action, pattern))
        found = tuple(self.rules[p] for p in sorted(positions))
        if len(self.remembered) >= MAX_REMEMBERED_ACTIONS:
            self.remembered.clear()
        self.remembered[action] = found
        return found


class RuleIndex:
    """The enabled rules of the accounts it was given, by account and action. `update` takes the rules an
    evaluation pass read and rebuilds only the accounts whose rule set changed (by `fingerprint`)."""

    def __init__(self, rules: Sequence[Rule] = ()) -> None:
        self._accounts: dict[int, _AccountRules] = {}
        self.builds = 0  # accounts (re)indexed: how often a rule-set change cost a rebuild
        if rules:
            self.update({r.account_id for r in rules}, rules)

    def update(self, account_ids: Iterable[int], rules: Sequence[Rule]) -> None:
        """`rules` are all the rules of `account_ids` (an account without any: it has none now)."""
        by_account: dict[int, list[Rule]] = {a: [] for a in account_ids}
        for r in rules:
            by_account.setdefault(r.account_id, []).append(r)
        if len(self._accounts) + len(by_account) > MAX_ACCOUNTS:
            self._accounts.clear()
        for account_id, theirs in by_account.items():
            key = fingerprint(theirs)
            held = self._accounts.get(account_id)
            if held is None or held.key != key:
                self._accounts[account_id] = _AccountRules.build(key, theirs)
                self.builds += 1

    def candidates(self, account_id: int, action: str) -> tuple[Rule, ...]:
        """The enabled rules of the account whose `actions` match `action`, in rule order (their other
        conditions still to check); none for the log's own alert bookkeeping."""
        held = self._accounts.get(account_id)
        if held is None or action.startswith(UNALERTABLE_PREFIX):
            return ()
        return held.candidates(action)
