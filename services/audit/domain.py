"""Audit rules: sealing events into leaves, filters and paging, integrity findings, alert rules and their
evaluation, export cursors, webhook signatures. Pure: no I/O (the Merkle math is in merkle.py)."""

from __future__ import annotations

import bisect
import fnmatch
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import ClassVar, Final
from urllib.parse import urlsplit

from services.audit import merkle
from svckit.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_EXPORT_PAGE = 1000
SERVICE = "audit"

OUTCOME_SUCCESS, OUTCOME_FAILURE, OUTCOME_DENIED = 1, 2, 3


# -- errors -----------------------------------------------------------------------------------------------


class EventInvalid(InvalidArgument):
    reason = "EVENT_INVALID"


class PageTokenInvalid(InvalidArgument):
    reason = "PAGE_TOKEN_INVALID"


class FilterInvalid(InvalidArgument):
    reason = "FILTER_INVALID"


class EventNotFound(NotFound):
    reason = "EVENT_NOT_FOUND"


class TreeSizeInvalid(InvalidArgument):
    reason = "TREE_SIZE_INVALID"


class CheckpointNotFound(NotFound):
    reason = "CHECKPOINT_NOT_FOUND"


class IntegrityViolation(DomainError):
    """What is stored does not match what the log signed: the store was tampered with."""

    code: ClassVar[str] = "DATA_LOSS"
    reason = "INTEGRITY_VIOLATION"


class RuleInvalid(InvalidArgument):
    reason = "ALERT_RULE_INVALID"


class RuleNotFound(NotFound):
    reason = "ALERT_RULE_NOT_FOUND"


class TooManyRules(FailedPrecondition):
    reason = "TOO_MANY_ALERT_RULES"


class ForwardingInvalid(InvalidArgument):
    reason = "FORWARDING_INVALID"


class CursorInvalid(InvalidArgument):
    reason = "CURSOR_INVALID"


class AccountRequired(DomainError):
    code: ClassVar[str] = "PERMISSION_DENIED"
    reason = "ACCOUNT_PRINCIPAL_REQUIRED"


# -- events and leaves ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IncomingEvent:
    """What an emitter sent: the fields the store indexes, and `body`, the event serialized
    deterministically without the fields the log assigns."""

    event_id: str
    event_time: datetime
    account_id: int  # the actor's account
    actor_id: str
    action: str
    outcome: int
    trace_id: str
    body: bytes
    actor_type: str = ""
    subject_account_id: int = 0
    client_address: str = ""
    resource_type: str = ""
    resource_id: str = ""
    request_id: str = ""

    @property
    def feed_account(self) -> int:
        """Whose feed the event belongs to: the account acted on, else the actor's."""
        return self.subject_account_id or self.account_id


@dataclass(frozen=True)
class SealedEvent:
    """An event with its place in the log; `leaf` is exactly what the Merkle leaf hashes."""

    sequence: int
    account_sequence: int
    event: IncomingEvent
    leaf: bytes
    leaf_hash: bytes


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_SEQUENCE_TAG = _varint(13 << 3)  # Event.sequence, varint
_ACCOUNT_SEQUENCE_TAG = _varint(17 << 3)  # Event.account_sequence, varint


def seal(body: bytes, sequence: int, account_sequence: int) -> bytes:
    """The stored bytes: the emitter's body with the two positions the log assigns appended as protobuf
    fields, so the leaf commits to them and the bytes still parse as one `Event`."""
    return body + _SEQUENCE_TAG + _varint(sequence) + _ACCOUNT_SEQUENCE_TAG + _varint(account_sequence)


def check_event(ev: IncomingEvent) -> None:
    if not ev.event_id or len(ev.event_id) > 64:
        raise EventInvalid("event_id must be 1-64 characters")
    if not ev.action or len(ev.action) > 128:
        raise EventInvalid("action must be 1-128 characters", event_id=ev.event_id)
    if ev.account_id < 0 or ev.subject_account_id < 0:
        raise EventInvalid("account ids are never negative", event_id=ev.event_id)


def sequence_events(
    size: int, account_counts: Mapping[int, int], events: Iterable[IncomingEvent]
) -> tuple[list[SealedEvent], dict[int, int]]:
    """Place `events` after a log of `size` events; returns them sealed and the new per-account counts."""
    counts = dict(account_counts)
    out: list[SealedEvent] = []
    for ev in events:
        size += 1
        acct = ev.feed_account
        counts[acct] = counts.get(acct, 0) + 1
        leaf = seal(ev.body, size, counts[acct])
        out.append(SealedEvent(size, counts[acct], ev, leaf, merkle.leaf_hash(leaf)))
    return out, counts


# -- reading ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventFilter:
    account_id: int | None  # None: every account (staff search)
    start_time: datetime | None = None
    end_time: datetime | None = None
    action: str = ""
    action_prefix: bool = False
    actor_id: str = ""
    actor_type: str = ""
    outcome: int = 0
    client_network: str = ""
    trace_id: str = ""
    resource_type: str = ""
    resource_id: str = ""
    request_id: str = ""
    after_sequence: int = 0
    limit: int = DEFAULT_PAGE_SIZE


def build_filter(
    account_id: int | None,
    *,
    start_time: datetime | None,
    end_time: datetime | None,
    action: str,
    actor_id: str,
    actor_type: str,
    outcome: int,
    client_address: str,
    trace_id: str,
    resource_type: str,
    resource_id: str,
    request_id: str,
    page_size: int,
    page_token: str,
) -> EventFilter:
    prefix = action.endswith("*")
    if prefix:
        action = action[:-1]
        if "*" in action:
            raise FilterInvalid("action takes one '*', at its end")
    network = ""
    if client_address:
        try:
            network = str(ipaddress.ip_network(client_address, strict=False))
        except ValueError:
            raise FilterInvalid("client_address must be an IP address or a CIDR network") from None
    if outcome not in (0, OUTCOME_SUCCESS, OUTCOME_FAILURE, OUTCOME_DENIED):
        raise FilterInvalid("unknown outcome")
    if start_time and end_time and end_time <= start_time:
        raise FilterInvalid("end_time must be after start_time")
    for name, value in (("actor_id", actor_id), ("trace_id", trace_id), ("resource_id", resource_id),
                        ("request_id", request_id), ("action", action)):
        if len(value) > 256:
            raise FilterInvalid(f"{name} is too long")
    return EventFilter(
        account_id=account_id, start_time=start_time, end_time=end_time, action=action, action_prefix=prefix,
        actor_id=actor_id, actor_type=actor_type, outcome=outcome, client_network=network, trace_id=trace_id,
        resource_type=resource_type, resource_id=resource_id, request_id=request_id,
        after_sequence=parse_page_token(page_token), limit=page_size_of(page_size),
    )


def page_size_of(requested: int, maximum: int = MAX_PAGE_SIZE) -> int:
    if requested <= 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, maximum)


MAX_SEQUENCE: Final = 2**63 - 1


def parse_page_token(token: str) -> int:
    if not token:
        return 0
    # An issued token is an event sequence: ASCII digits of a value a bigint holds.
    if not (token.isascii() and token.isdigit()) or len(token) > 19 or int(token) > MAX_SEQUENCE:
        raise PageTokenInvalid("page_token is not one this service issued; start again without it")
    return int(token)


def next_token(last_sequence: int | None, returned: int, limit: int) -> str:
    return str(last_sequence) if last_sequence is not None and returned == limit else ""


class Histogram:
    """Cumulative buckets, as Prometheus histograms count them."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1


LAG_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


# -- integrity ------------------------------------------------------------------------------------------


class Problem(IntEnum):
    ALTERED = 1
    REMOVED = 2
    INSERTED = 3
    REORDERED = 4
    TREE_MISMATCH = 5
    BAD_SIGNATURE = 6


@dataclass(frozen=True)
class Finding:
    kind: Problem
    sequence: int
    event_id: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Verification:
    ok: bool
    tree_size: int
    checkpoints_checked: int
    finding: Finding | None = None


def classify_leaf(
    position: int, actual: bytes, committed: Sequence[bytes | None], next_actual: bytes | None
) -> Problem:
    """Why the leaf at `position` of `committed` (the committed leaf hashes around it, same indexing)
    differs from the stored event's leaf `actual`; `next_actual` is the stored leaf after it, if any."""

    def at(k: int) -> bytes | None:
        return committed[k] if 0 <= k < len(committed) else None

    if actual == at(position + 1) and next_actual is not None and next_actual == at(position):
        return Problem.REORDERED  # two neighbours swapped
    if actual not in committed and next_actual is not None and next_actual == at(position):
        return Problem.INSERTED  # everything from here on is shifted by one: something was put in
    if actual == at(position + 1):
        return Problem.REMOVED  # the committed leaf here is gone; its successor moved up
    if actual in committed:
        return Problem.REORDERED
    return Problem.ALTERED


# -- checkpoints ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredCheckpoint:
    tree_size: int
    root_hash: bytes
    checkpoint_time: datetime
    key_id: str  # hex
    note: str


def checkpoint_due(latest_size: int, tree_size: int) -> bool:
    return tree_size > latest_size


def check_tree_size(requested: int, latest: int) -> None:
    if requested < 0 or requested > latest:
        raise TreeSizeInvalid(f"tree_size must be between 1 and the latest checkpoint's size ({latest})")


# -- exports ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportCursor:
    """Where an export stands: after `after_sequence` (a log sequence, not the account's), pinned to the
    checkpoint of `tree_size` (0: pin the latest when the next page starts)."""

    after_sequence: int = 0
    tree_size: int = 0

    def encode(self) -> str:
        return f"v1.{self.after_sequence}.{self.tree_size}"

    @classmethod
    def parse(cls, text: str) -> ExportCursor:
        if not text:
            return cls()
        parts = text.split(".")
        if len(parts) != 3 or parts[0] != "v1" or not all(p.isdigit() and len(p) <= 19 for p in parts[1:]):
            raise CursorInvalid("cursor is not one this service issued")
        return cls(int(parts[1]), int(parts[2]))


_CEF_HEADER_ESCAPE = re.compile(r"([\\|])")
_CEF_EXT_ESCAPE = re.compile(r"([\\=])")


def cef_header(value: str) -> str:
    return _CEF_HEADER_ESCAPE.sub(r"\\\1", value).replace("\r", " ").replace("\n", " ")


def cef_ext(value: str) -> str:
    return _CEF_EXT_ESCAPE.sub(r"\\\1", value).replace("\r", "\\r").replace("\n", "\\n")


def cef_severity(outcome: int, action: str) -> int:
    if outcome == OUTCOME_DENIED:
        return 7
    if outcome == OUTCOME_FAILURE:
        return 5
    return 3


# -- alert rules ----------------------------------------------------------------------------------------

MAX_RULES_PER_ACCOUNT = 100
MAX_WINDOW_SECONDS = 7 * 24 * 3600
MAX_LIST = 20
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_EMAIL = re.compile(r"[^@\s]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,63}")
_DETAIL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
ACTOR_TYPES = frozenset({"user", "staff", "service", "anonymous"})
# The log's own bookkeeping never triggers alerts (an alert about an alert would loop).
UNALERTABLE_PREFIX = "audit.alert."


@dataclass(frozen=True)
class RuleSpec:
    name: str
    disabled: bool = False
    actions: tuple[str, ...] = ()
    outcomes: tuple[int, ...] = ()
    actor_ids: tuple[str, ...] = ()
    actor_types: tuple[str, ...] = ()
    client_networks: tuple[str, ...] = ()
    exclude_client_networks: tuple[str, ...] = ()
    threshold: int = 1
    window_seconds: int = 0
    cooldown_seconds: int = 0
    sum_detail: str = ""
    webhook_url: str = ""
    sms_to: str = ""
    email_to: str = ""
    # Who last set the rule (never from the request): SMS/email notifications are sends by this user,
    # through this API key (empty: a session) and within its send limits.
    owner_user_id: int = 0
    owner_api_username: str = ""
    owner_api_key_id: str = ""
    owner_per_minute: int = 0
    owner_per_day: int = 0
    owner_countries: tuple[str, ...] = ()

    @property
    def is_threshold(self) -> bool:
        return self.threshold > 1

    def targets(self) -> list[tuple[str, str]]:
        out = []
        if self.webhook_url:
            out.append(("webhook", self.webhook_url))
        if self.sms_to:
            out.append(("sms", self.sms_to))
        if self.email_to:
            out.append(("email", self.email_to))
        return out


@dataclass(frozen=True)
class Rule:
    rule_id: int
    account_id: int
    spec: RuleSpec
    is_default: bool = False
    last_fire_time: datetime | None = None
    create_time: datetime | None = None
    update_time: datetime | None = None


def normalize_rule(spec: RuleSpec) -> RuleSpec:
    """Validate a rule from a customer and return it in canonical form."""
    name = spec.name.strip()
    if not 1 <= len(name) <= 100:
        raise RuleInvalid("name must be 1-100 characters")
    lists = {
        "actions": spec.actions, "actor_ids": spec.actor_ids, "actor_types": spec.actor_types,
        "client_networks": spec.client_networks, "exclude_client_networks": spec.exclude_client_networks,
    }
    for label, values in lists.items():
        if len(values) > MAX_LIST or any(not v or len(v) > 128 for v in values):
            raise RuleInvalid(f"{label}: at most {MAX_LIST} entries of 1-128 characters")
    if any(t not in ACTOR_TYPES for t in spec.actor_types):
        raise RuleInvalid(f"actor_types are among {sorted(ACTOR_TYPES)}")
    if any(o not in (OUTCOME_SUCCESS, OUTCOME_FAILURE, OUTCOME_DENIED) for o in spec.outcomes):
        raise RuleInvalid("unknown outcome")
    networks = []
    for values in (spec.client_networks, spec.exclude_client_networks):
        try:
            networks.append(tuple(str(ipaddress.ip_network(v, strict=False)) for v in values))
        except ValueError:
            raise RuleInvalid("client networks must be IP addresses or CIDR networks") from None
    if not 0 <= spec.threshold <= 1_000_000:
        raise RuleInvalid("threshold must be 0-1000000")
    threshold = max(spec.threshold, 1)
    if threshold > 1 and not 1 <= spec.window_seconds <= MAX_WINDOW_SECONDS:
        raise RuleInvalid(f"a threshold rule needs window_seconds between 1 and {MAX_WINDOW_SECONDS}")
    if not 0 <= spec.cooldown_seconds <= MAX_WINDOW_SECONDS:
        raise RuleInvalid(f"cooldown_seconds must be 0-{MAX_WINDOW_SECONDS}")
    if spec.sum_detail and (threshold <= 1 or not _DETAIL_NAME.fullmatch(spec.sum_detail)):
        raise RuleInvalid("sum_detail names an integer detail and needs a threshold above 1")
    if spec.sms_to and not _E164.fullmatch(spec.sms_to):
        raise RuleInvalid("sms_to must be an E.164 number such as +61411111111")
    if spec.email_to and not _EMAIL.fullmatch(spec.email_to):
        raise RuleInvalid("email_to must be an email address")
    return replace(
        spec, name=name, threshold=threshold, window_seconds=spec.window_seconds if threshold > 1 else 0,
        outcomes=tuple(sorted(set(spec.outcomes))), client_networks=networks[0], exclude_client_networks=networks[1],
    )


def default_rules() -> list[RuleSpec]:
    """What every account starts with (it may change or delete them). Without targets they fill the alert
    history; adding a webhook, number or address to one makes it notify."""
    return [
        RuleSpec(
            name="Repeated failed sign-ins",
            actions=("gateway.unauthenticated", "identity.login*", "identity.auth.*"),
            outcomes=(OUTCOME_FAILURE, OUTCOME_DENIED), threshold=6, window_seconds=600, cooldown_seconds=600,
        ),
        RuleSpec(name="New API key", actions=("keys.api_key.issued",), outcomes=(OUTCOME_SUCCESS,)),
        RuleSpec(name="Staff access to the account", actor_types=("staff",)),
        RuleSpec(
            name="More than 1000 messages in an hour", actions=("messaging.sms.sent",), sum_detail="sent",
            threshold=1001, window_seconds=3600, cooldown_seconds=3600,
        ),
    ]


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


# -- notifications ----------------------------------------------------------------------------------------

PENDING, DELIVERED, FAILED = 1, 2, 3


@dataclass(frozen=True)
class Delivery:
    channel: str
    target: str
    status: int
    attempts: int
    last_error: str
    update_time: datetime | None


@dataclass(frozen=True)
class Alert:
    alert_id: int
    rule_id: int
    rule_name: str
    fire_time: datetime
    event_id: str
    event_sequence: int
    action: str
    match_count: int
    window_seconds: int
    deliveries: list[Delivery]


@dataclass(frozen=True)
class DeliveryJob:
    delivery_id: int
    account_id: int
    channel: str
    target: str
    attempts: int
    alert: Alert
    rule: RuleSpec | None = None  # the rule as it is now (None: deleted since it fired)

MAX_DELIVERY_ATTEMPTS = 8


def retry_delay(attempts: int, base: float = 5.0, cap: float = 1800.0) -> float:
    """Seconds before the next try after `attempts` failures: 5 s doubling to 30 min (about 1 h in total
    for 8 attempts)."""
    return float(min(cap, base * (2 ** max(attempts - 1, 0))))


def mask_target(channel: str, target: str) -> str:
    if channel == "sms":
        return target[:4] + "*" * max(len(target) - 7, 0) + target[-3:] if len(target) > 7 else "***"
    if channel == "email":
        user, _, domain = target.partition("@")
        return f"{user[:1]}***@{domain}"
    parts = urlsplit(target)
    return f"{parts.scheme}://{parts.hostname}/…" if parts.path not in ("", "/") else f"{parts.scheme}://{parts.hostname}/"


def webhook_secret(root: bytes, account_id: int, version: int) -> str:
    """The account's webhook signing secret, derived (never stored): HMAC(root, account, version). Shown
    as `whsec_` + 64 hex digits, which is valid base64: the Standard Webhooks key is its decoded 48 bytes
    (svckit.webhooks.secret_key), as the spec's libraries read it."""
    mac = hmac.new(root, f"sendsafe-audit-webhook:v1:{account_id}:{version}".encode(), hashlib.sha256)
    return "whsec_" + mac.hexdigest()


ALERT_SUBJECT = "SendSafe alert"
_ACTION_TEXT = re.compile(r"[^A-Za-z0-9._-]")


def alert_text(rule_id: int, count: int, action: str, fire_time: datetime) -> str:
    """The SMS/email text, a fixed template: the rule's id, never its name (customer-written text is not
    sent to third parties under SendSafe's name), and the platform's action name, nothing else."""
    act = _ACTION_TEXT.sub("", action)[:64] or "unknown"
    when = fire_time.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
    return f"SendSafe alert: rule {rule_id} matched {count} event(s) ({act}) at {when} UTC."


@dataclass(frozen=True)
class RuleOwner:
    """The principal that creates or changes a rule (from the call's principal)."""

    user_id: int
    api_username: str = ""
    api_key_id: str = ""
    per_minute: int = 0
    per_day: int = 0
    countries: tuple[str, ...] = ()
    may_send: bool = False  # holds sms.send (within its key's scopes)


class SendPermissionRequired(PermissionDenied):
    reason = "SMS_SEND_REQUIRED"


class DestinationNotVerified(InvalidArgument):
    reason = "DESTINATION_NOT_VERIFIED"


def owned_spec(spec: RuleSpec, owner: RuleOwner) -> RuleSpec:
    """`spec` as set by `owner`. A rule that notifies by SMS or email sends messages as its owner, so its
    owner must hold sms.send."""
    if (spec.sms_to or spec.email_to) and not owner.may_send:
        raise SendPermissionRequired(
            "an alert rule that notifies by SMS or email sends messages as you: it needs the sms.send permission"
            " (an API key scoped to it)")
    return replace(spec, owner_user_id=owner.user_id, owner_api_username=owner.api_username,
                   owner_api_key_id=owner.api_key_id, owner_per_minute=owner.per_minute,
                   owner_per_day=owner.per_day, owner_countries=tuple(owner.countries))


def undeliverable(rule: RuleSpec | None, channel: str, target: str) -> str:
    """Why a pending SMS/email alert may no longer go out ("" if it may): its rule was deleted, or no longer
    names that destination (it goes out as the rule's current owner, who set other targets)."""
    if rule is None:
        return "ALERT_RULE_DELETED"
    if {"sms": rule.sms_to, "email": rule.email_to}.get(channel) != target:
        return "ALERT_TARGET_CHANGED"
    return ""


def alert_cap_hit(sent_this_hour: int, cap: int) -> tuple[bool, bool]:
    """(suppressed, first suppression of the window) for the `sent_this_hour`-th alert message."""
    return sent_this_hour > cap, sent_this_hour == cap + 1


# -- forwarding -----------------------------------------------------------------------------------------

FORWARD_WEBHOOK = 1
FORMAT_JSONL, FORMAT_CEF = 1, 2


@dataclass(frozen=True)
class ForwardingSpec:
    enabled: bool
    kind: int
    url: str
    format: int
    backfill: bool = False


@dataclass(frozen=True)
class ForwardingState:
    account_id: int
    spec: ForwardingSpec
    delivered_sequence: int
    last_error: str = ""
    consecutive_failures: int = 0
    last_delivery_time: datetime | None = None


def normalize_forwarding(spec: ForwardingSpec) -> ForwardingSpec:
    if not spec.enabled:
        return replace(spec, kind=spec.kind or FORWARD_WEBHOOK, format=spec.format or FORMAT_JSONL)
    if spec.kind not in (0, FORWARD_WEBHOOK):
        raise ForwardingInvalid("kind must be FORWARDING_KIND_WEBHOOK")
    if spec.format not in (0, FORMAT_JSONL, FORMAT_CEF):
        raise ForwardingInvalid("format must be JSONL or CEF")
    return replace(spec, kind=FORWARD_WEBHOOK, format=spec.format or FORMAT_JSONL)
