"""Audit use cases: one method per use case.

`LogService` owns the log: append, read, prove, checkpoint, verify, export. `AlertService` owns alert
rules, the alert engine (every event once, in log order) and notification delivery. `ForwardingService`
pushes each account's events to its SIEM from a persisted cursor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sendsafe.audit.v1 import event_pb2
from services.audit import formats
from services.audit.domain import merkle
from services.audit.domain.alerts import (
    ALERT_SUBJECT,
    DELIVERED,
    FAILED,
    MAX_DELIVERY_ATTEMPTS,
    PENDING,
    Alert,
    DeliveryJob,
    alert_cap_hit,
    alert_text,
    undeliverable,
)
from services.audit.domain.checkpoints import StoredCheckpoint, check_tree_size
from services.audit.domain.delivery import retry_delay, webhook_secret
from services.audit.domain.errors import (
    AccountRequired,
    CheckpointNotFound,
    DestinationNotVerified,
    EventInvalid,
    EventNotFound,
    IntegrityViolation,
    RuleNotFound,
    TooManyRules,
    TreeSizeInvalid,
)
from services.audit.domain.evaluation import Fire, Hit, evaluate, longest_window
from services.audit.domain.events import SERVICE, IncomingEvent, SealedEvent, check_event
from services.audit.domain.filters import EventFilter
from services.audit.domain.forwarding import ForwardingSpec, ForwardingState, normalize_forwarding
from services.audit.domain.integrity import Finding, Problem, Verification, classify_leaf
from services.audit.domain.paging import page_size_of, parse_page_token
from services.audit.domain.rules import (
    MAX_RULES_PER_ACCOUNT,
    Rule,
    RuleOwner,
    RuleSpec,
    default_rules,
    normalize_rule,
    owned_spec,
)
from services.audit.domain.siem import FORMAT_CEF, FORMAT_JSONL, ExportCursor
from services.audit.domain.stats import LAG_BUCKETS, Histogram
from svckit.audit import new_event
from svckit.webhooks import signed_headers

_LOG = logging.getLogger(__name__)


# -- ports ------------------------------------------------------------------------------------------------


class EventStore(Protocol):
    async def append(self, events: Sequence[IncomingEvent]) -> list[SealedEvent]: ...
    async def list_events(self, f: EventFilter) -> list[tuple[int, bytes]]: ...
    async def scan(self, after_sequence: int, limit: int) -> list[tuple[int, str, bytes]]: ...
    async def leaf_hashes(self, first_index: int, limit: int) -> list[tuple[int, bytes]]: ...
    async def event_by_id(self, event_id: str) -> tuple[int, int, bytes] | None: ...
    async def bodies(self, sequences: Sequence[int]) -> dict[int, bytes]: ...
    async def account_events(
        self, account_id: int, after_sequence: int, up_to: int | None, limit: int
    ) -> list[tuple[int, bytes]]: ...
    async def nodes(self, wanted: set[merkle.Node]) -> dict[merkle.Node, bytes]: ...
    async def account_count_at(self, account_id: int, tree_size: int) -> int: ...
    async def tree_head(self) -> tuple[int, bytes, list[bytes]]: ...
    async def latest_checkpoint(self) -> StoredCheckpoint | None: ...
    async def checkpoint_at(self, tree_size: int) -> StoredCheckpoint | None: ...
    async def save_checkpoint(self, cp: StoredCheckpoint) -> StoredCheckpoint: ...
    async def checkpoints(self) -> list[StoredCheckpoint]: ...


class AlertTx(Protocol):
    async def claim_cursor(self) -> int | None: ...
    async def events_after(self, sequence: int, limit: int) -> list[tuple[int, bytes]]: ...
    async def advance_cursor(self, sequence: int) -> None: ...
    async def new_accounts(self, account_ids: Sequence[int]) -> list[int]: ...
    async def insert_rules(self, account_id: int, specs: Sequence[RuleSpec], *, default: bool) -> None: ...
    async def rules_for(self, account_ids: Sequence[int]) -> list[Rule]: ...
    async def hits_since(self, rule_ids: Sequence[int], since: datetime) -> dict[int, list[Hit]]: ...
    async def insert_hits(self, hits: Sequence[Hit]) -> None: ...
    async def prune_hits(self, rule_ids: Sequence[int], windows: Sequence[int], now: datetime) -> None: ...
    async def record_fires(self, fires: Sequence[Fire]) -> list[int]: ...
    async def set_last_fire(self, last_fire: dict[int, datetime]) -> None: ...


class AlertStore(Protocol):
    def tx(self) -> AbstractAsyncContextManager[AlertTx]: ...
    async def rules(self, account_id: int) -> list[Rule]: ...
    async def create_rule(self, account_id: int, spec: RuleSpec, max_rules: int,
                          before_commit: Callable[[Rule], Awaitable[None]] | None = None) -> Rule | None: ...
    async def update_rule(self, account_id: int, rule_id: int, spec: RuleSpec,
                          before_commit: Callable[[Rule], Awaitable[None]] | None = None) -> Rule | None: ...
    async def delete_rule(self, account_id: int, rule_id: int) -> bool: ...
    async def ensure_account(self, account_id: int, defaults: Sequence[RuleSpec]) -> None: ...
    async def secret_version(self, account_id: int, *, rotate: bool = False,
                             before_commit: Callable[[int], Awaitable[None]] | None = None) -> int: ...
    async def alerts(self, account_id: int, before_id: int, limit: int) -> list[Alert]: ...
    async def claim_deliveries(self, limit: int, lease_seconds: float) -> list[DeliveryJob]: ...
    async def count_alert_message(self, account_id: int) -> int: ...
    async def finish_delivery(self, delivery_id: int, status: int, attempts: int, error: str,
                              retry_in: float) -> None: ...
    async def forwarding(self, account_id: int) -> ForwardingState | None: ...
    async def set_forwarding(self, account_id: int, spec: ForwardingSpec,
                             before_commit: Callable[[ForwardingState], Awaitable[None]] | None = None,
                             ) -> ForwardingState: ...
    async def claim_forwardings(self, limit: int, lease_seconds: float) -> list[ForwardingState]: ...
    async def forwarded(self, account_id: int, from_sequence: int, to_sequence: int) -> bool: ...
    async def forwarding_failed(self, account_id: int, error: str, retry_in: float) -> None: ...


class DeliveryError(Exception):
    """A notification that did not go out. `reason` is UPPER_SNAKE and safe to show the customer."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class WebhookPoster(Protocol):
    """The outbound-webhook policy (svckit.webhooks): `check` when a URL is configured (the URL in canonical
    form, or INVALID_WEBHOOK_URL), `post` at every delivery attempt (the policy is applied again)."""

    async def check(self, url: str) -> str: ...
    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> None: ...


class Notifier(Protocol):
    """SMS/email through the messaging service: sent as the rule's owner (its `owner_*` fields), and only
    to destinations the account verified."""

    async def notify(self, account_id: int, channel: str, to: str, subject: str, body: str,
                     notification_id: str, owner: RuleSpec) -> None: ...
    async def verified(self, account_id: int, channel: str, to: str) -> bool: ...


Record = Callable[[Sequence[event_pb2.Event]], Awaitable[None]]


@dataclass(frozen=True)
class Proof:
    sequence: int
    leaf: bytes
    path: list[bytes]
    checkpoint: StoredCheckpoint


@dataclass(frozen=True)
class ExportPage:
    data: str
    cursor: ExportCursor
    complete: bool
    count: int
    checkpoint: StoredCheckpoint | None


@dataclass
class LogStats:
    """What the metrics endpoint reports about the log."""

    appended: int = 0
    batches: int = 0
    last_lag_seconds: float = 0.0
    lag: Histogram = field(default_factory=lambda: Histogram(LAG_BUCKETS))
    integrity_ok: bool | None = None
    integrity_failures: int = 0
    last_verified_size: int = 0
    last_verify_time: float = 0.0
    checkpoint_size: int = 0
    checkpoint_time: float = 0.0
    proof_violations: int = 0


# -- the log ----------------------------------------------------------------------------------------------


class LogService:
    def __init__(
        self,
        store: EventStore,
        signer: merkle.Signer,
        *,
        trusted: Sequence[merkle.Verifier] = (),
        max_batch: int = 5000,
        checkpoint_min_interval: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self.signer = signer
        self._verifiers = {v.key_id.hex(): v for v in (merkle.Verifier.parse(signer.vkey), *trusted)}
        self._max_batch = max_batch
        self._min_interval = checkpoint_min_interval
        self._clock = clock
        self._checkpoint_lock = asyncio.Lock()
        self._verify_lock = asyncio.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._queued: list[tuple[list[IncomingEvent], asyncio.Future[list[SealedEvent]]]] = []
        self._committer: asyncio.Task[None] | None = None
        self.stats = LogStats()

    def on_append(self, listener: Callable[[], None]) -> None:
        """Called (synchronously, cheaply) after every append that stored something."""
        self._listeners.append(listener)

    @property
    def verifier_key(self) -> str:
        return self.signer.vkey

    async def append_events(self, events: Sequence[IncomingEvent]) -> tuple[int, int]:
        """Store a batch, all or nothing. Returns the first and last sequence written (0, 0 if all were
        duplicates of events already stored).

        Group commit: batches that arrive while a transaction is running wait and then go into the next
        one together (up to `max_batch` events), so many small concurrent appends cost one serialized
        transaction instead of one each. Each caller still gets all-or-nothing for its own batch."""
        if not events:
            raise EventInvalid("a batch needs at least one event")
        if len(events) > self._max_batch:
            raise EventInvalid(f"a batch holds at most {self._max_batch} events")
        for ev in events:
            check_event(ev)
        done: asyncio.Future[list[SealedEvent]] = asyncio.get_running_loop().create_future()
        self._queued.append((list(events), done))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_queued(), name="audit-group-commit")
        sealed = await asyncio.shield(done)
        if not sealed:
            return 0, 0
        return sealed[0].sequence, sealed[-1].sequence

    async def _commit_queued(self) -> None:
        while self._queued:
            group: list[tuple[list[IncomingEvent], asyncio.Future[list[SealedEvent]]]] = []
            size = 0
            while self._queued and (not group or size + len(self._queued[0][0]) <= self._max_batch):
                item = self._queued.pop(0)
                group.append(item)
                size += len(item[0])
            try:
                sealed = await self._store.append([ev for evs, _ in group for ev in evs])
            except Exception as exc:
                for _, fut in group:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            except BaseException:
                for _, fut in group:
                    if not fut.done():
                        fut.cancel()
                raise
            self._stored(sealed)
            by_id = {s.event.event_id: s for s in sealed}
            for evs, fut in group:
                mine = [by_id.pop(e.event_id) for e in evs if e.event_id in by_id]
                if not fut.done():
                    fut.set_result(mine)

    def _stored(self, sealed: list[SealedEvent]) -> None:
        if not sealed:
            return
        now = self._clock()
        lags = [max((now - s.event.event_time).total_seconds(), 0.0) for s in sealed]
        for lag in lags:
            self.stats.lag.observe(lag)
        self.stats.appended += len(sealed)
        self.stats.batches += 1
        self.stats.last_lag_seconds = max(lags)
        for listener in self._listeners:
            listener()

    async def list_events(self, f: EventFilter) -> list[tuple[int, bytes]]:
        return await self._store.list_events(f)

    async def search_events(self, f: EventFilter, justification: str) -> list[tuple[int, bytes]]:
        """Staff search. Recorded before anything is returned (refused if it cannot be): one event in the
        platform's own feed and one in the feed of each account concerned (access transparency)."""
        rows = await self._store.list_events(f)
        accounts = {f.account_id} if f.account_id is not None else {
            formats.facts(s, b).account_id for s, b in rows
        }
        scope = str(f.account_id) if f.account_id is not None else "all"
        details = {"scope": scope, "returned": str(len(rows)), "justification": justification[:200]}
        events = [new_event(SERVICE, "audit.events.searched", resource_type="audit_log", resource_id=scope,
                            details=details)]
        for acct in sorted(a for a in accounts if a > 0):
            ev = new_event(SERVICE, "audit.events.read_by_staff", resource_type="audit_log",
                           resource_id=str(acct), details=details)
            ev.subject_account_id = acct
            events.append(ev)
        await self.append_events([formats.to_incoming(e) for e in events])
        return rows

    # -- checkpoints ---------------------------------------------------------------------------------------

    async def sign_checkpoint(self, *, min_interval: float = 0.0) -> StoredCheckpoint | None:
        """Sign the tree as it is now, unless the latest checkpoint already covers it (or is younger than
        `min_interval` seconds). None while the log is empty."""
        async with self._checkpoint_lock:
            latest = await self._store.latest_checkpoint()
            size, root, _ = await self._store.tree_head()
            now = self._clock()
            if latest is not None and (
                latest.tree_size >= size
                or (now - latest.checkpoint_time).total_seconds() < min_interval
            ):
                return latest
            if size == 0:
                return None
            body = merkle.CheckpointBody(self.signer.name, size, root, now)
            cp = await self._store.save_checkpoint(
                StoredCheckpoint(size, root, now, self.signer.key_id.hex(), self.signer.sign(body))
            )
            self.stats.checkpoint_size = cp.tree_size
            self.stats.checkpoint_time = cp.checkpoint_time.timestamp()
            return cp

    async def checkpoint(self, tree_size: int = 0, *, fresh: bool = False) -> StoredCheckpoint:
        if tree_size:
            cp = await self._store.checkpoint_at(tree_size)
            if cp is None:
                raise CheckpointNotFound(f"no checkpoint was signed at tree size {tree_size}")
            return cp
        cp = await self.sign_checkpoint(min_interval=self._min_interval) if fresh else None
        cp = cp or await self._store.latest_checkpoint() or await self.sign_checkpoint()
        if cp is None:
            raise CheckpointNotFound("the log is empty")
        return cp

    async def _covering(self, sequence: int, tree_size: int) -> StoredCheckpoint:
        """A checkpoint that covers `sequence`: the one asked for, else the latest, signing a new one when
        the latest is older than the event."""
        if tree_size:
            pinned = await self.checkpoint(tree_size)
            if pinned.tree_size < sequence:
                raise TreeSizeInvalid("the event is not in the tree of that size")
            return pinned
        cp = await self._store.latest_checkpoint()
        if cp is None or cp.tree_size < sequence:
            cp = await self.sign_checkpoint()
        assert cp is not None and cp.tree_size >= sequence
        return cp

    async def _paths(self, indexes: Sequence[int], size: int) -> list[list[bytes]]:
        plans = [merkle.inclusion_ranges(i, size) for i in indexes]
        stored = await self._store.nodes(merkle.nodes_for(r for plan in plans for r in plan))
        try:
            return [merkle.resolve(plan, stored) for plan in plans]
        except KeyError:
            self.stats.proof_violations += 1
            raise IntegrityViolation("a node of the tree is missing") from None

    async def event_proof(self, account_id: int, event_id: str, tree_size: int) -> Proof:
        """An event of `account_id` with its inclusion proof. The proof is checked here against the
        signed root before it is handed out: a stored event or node that was changed is refused."""
        found = await self._store.event_by_id(event_id)
        if found is None or found[1] != account_id:
            raise EventNotFound("no such event in this account's log")
        sequence, _, leaf = found
        cp = await self._covering(sequence, tree_size)
        (path,) = await self._paths([sequence - 1], cp.tree_size)
        if not merkle.verify_inclusion(sequence - 1, cp.tree_size, merkle.leaf_hash(leaf), path, cp.root_hash):
            self.stats.proof_violations += 1
            _LOG.error("stored event %d does not match the signed tree of size %d", sequence, cp.tree_size,
                       extra={"event": "audit.integrity_violation"})
            raise IntegrityViolation("this event does not match what the log signed; it was tampered with")
        return Proof(sequence, leaf, path, cp)

    async def consistency(self, first: int, second: int) -> tuple[int, int, list[bytes], StoredCheckpoint | None]:
        latest = await self._store.latest_checkpoint()
        top = latest.tree_size if latest else 0
        second = second or top
        if not 0 < first <= second:
            raise TreeSizeInvalid("need 0 < first_tree_size <= second_tree_size")
        check_tree_size(second, top)
        ranges = merkle.consistency_ranges(first, second)
        stored = await self._store.nodes(merkle.nodes_for(ranges))
        try:
            proof = merkle.resolve(ranges, stored)
        except KeyError:
            raise IntegrityViolation("a node of the tree is missing") from None
        return first, second, proof, await self._store.checkpoint_at(second)

    # -- verification --------------------------------------------------------------------------------------

    async def verify_log(self, batch: int = 20_000) -> Verification:
        """Recompute every leaf from the stored bytes and the tree from the leaves; compare them with the
        stored tree and every signed checkpoint. One run at a time (concurrent callers share it)."""
        if self._verify_lock.locked():
            async with self._verify_lock:
                pass
            return self._last_verification
        async with self._verify_lock:
            result = await self._verify(batch)
            self._last_verification = result
            self.stats.integrity_ok = result.ok
            self.stats.last_verified_size = result.tree_size
            self.stats.last_verify_time = time.time()
            if not result.ok:
                self.stats.integrity_failures += 1
                f = result.finding
                _LOG.error("audit log verification failed: %s at sequence %s", f.kind.name if f else "?",
                           f.sequence if f else "?", extra={"event": "audit.integrity_violation"})
            return result

    _last_verification = Verification(True, 0, 0)

    async def verify_chain(self) -> int | None:
        """The first sequence that does not verify, or None (`verify_log` in short, for callers that only
        need a yes/no and where)."""
        result = await self.verify_log()
        return None if result.ok or result.finding is None else result.finding.sequence

    async def _verify(self, batch: int) -> Verification:
        size, head_root, _ = await self._store.tree_head()
        cps = await self._store.checkpoints()
        checked: list[StoredCheckpoint] = []
        for cp in cps:
            v = self._verifiers.get(cp.key_id)
            if v is None:
                continue  # signed by a key this process does not trust (an old ephemeral one)
            try:
                body = v.open(cp.note)
            except merkle.NoteError as exc:
                return Verification(False, 0, len(checked), Finding(Problem.BAD_SIGNATURE, cp.tree_size, "", str(exc)))
            if (body.size, body.root) != (cp.tree_size, cp.root_hash):
                return Verification(False, 0, len(checked), Finding(
                    Problem.BAD_SIGNATURE, cp.tree_size, "", "the stored checkpoint differs from its signed note"))
            checked.append(cp)
        by_size = {cp.tree_size: cp for cp in checked}
        tree_size, frontier = 0, list[bytes]()
        after = 0
        while True:
            rows = await self._store.scan(after, batch)
            if not rows:
                break
            stored = dict(await self._store.leaf_hashes(after, len(rows) + 1))
            committed = [stored.get(after + k) for k in range(len(rows) + 1)]
            actual = [merkle.leaf_hash(body) for _, _, body in rows]
            for i, (seq, event_id, _) in enumerate(rows):
                position = after + i  # 0-based leaf index this row should hold
                if seq != position + 1:
                    return Verification(False, tree_size, len(checked), Finding(
                        Problem.REMOVED, position + 1, "", f"event {position + 1} is missing"))
                if position >= size:
                    return Verification(False, tree_size, len(checked), Finding(
                        Problem.INSERTED, seq, event_id, "stored but never added to the tree"))
                if i >= len(committed) or actual[i] != committed[i]:
                    nxt = actual[i + 1] if i + 1 < len(actual) else None
                    kind = classify_leaf(i, actual[i], committed, nxt)
                    return Verification(False, tree_size, len(checked), Finding(
                        kind, seq, event_id, "the stored event does not match its committed leaf"))
            # Extend the recomputed tree, stopping at every checkpoint size to compare with its signed root.
            start = 0
            while start < len(actual):
                end = after + len(actual)
                stop = next((cp.tree_size - after for cp in checked if after + start < cp.tree_size <= end),
                            len(actual))
                appended = merkle.append(tree_size, frontier, actual[start:stop])
                tree_size, frontier = appended.size, appended.frontier
                signed = by_size.get(tree_size)
                if signed is not None and appended.root != signed.root_hash:
                    return Verification(False, tree_size, len(checked), Finding(
                        Problem.TREE_MISMATCH, tree_size, rows[stop - 1][1],
                        f"the events up to {tree_size} do not reproduce the signed checkpoint"))
                start = stop
            after = rows[-1][0]
        if tree_size < size:
            return Verification(False, tree_size, len(checked), Finding(
                Problem.REMOVED, tree_size + 1, "", f"events {tree_size + 1}..{size} are missing"))
        if merkle.fold(frontier) != head_root:
            return Verification(False, tree_size, len(checked), Finding(
                Problem.TREE_MISMATCH, tree_size, "", "the stored tree head does not match the events"))
        beyond = [cp for cp in checked if cp.tree_size > tree_size]
        if beyond:
            return Verification(False, tree_size, len(checked), Finding(
                Problem.REMOVED, tree_size + 1, "", f"a checkpoint covers {beyond[0].tree_size} events"))
        return Verification(True, tree_size, len(checked))

    # -- export --------------------------------------------------------------------------------------------

    async def export(self, account_id: int, cursor: ExportCursor, fmt: int, page_size: int,
                     omit_proofs: bool) -> ExportPage:
        limit = page_size_of(page_size, 1000)
        if fmt == FORMAT_CEF or omit_proofs:
            rows = await self._store.account_events(account_id, cursor.after_sequence, None, limit)
            if fmt == FORMAT_CEF:
                lines = [formats.cef_line(s, leaf) for s, leaf in rows]
            else:
                lines = [formats.jsonl_line(s, leaf, None, None) for s, leaf in rows]
            last = rows[-1][0] if rows else cursor.after_sequence
            return ExportPage(_text(lines), ExportCursor(last, 0), len(rows) < limit, len(rows), None)
        lines = []
        if cursor.tree_size:
            cp = await self.checkpoint(cursor.tree_size)
        else:
            # A new segment of the export, pinned to the latest checkpoint: its line carries the checkpoint
            # and a signed account head (how many of the account's events that tree holds), so a verifier
            # can tell if any event of the account was left out, at the end included.
            cp = await self.checkpoint(fresh=True)
            count = await self._store.account_count_at(account_id, cp.tree_size)
            head = merkle.AccountHead(self.signer.name, account_id, count, cp.tree_size)
            lines.append(formats.checkpoint_line(cp, self.verifier_key, self.signer.sign_text(head.text()),
                                                 cursor.after_sequence))
        rows = await self._store.account_events(account_id, cursor.after_sequence, cp.tree_size, limit)
        paths = await self._paths([s - 1 for s, _ in rows], cp.tree_size) if rows else []
        lines += [formats.jsonl_line(s, leaf, cp.tree_size, p) for (s, leaf), p in zip(rows, paths, strict=True)]
        complete = len(rows) < limit
        last = rows[-1][0] if rows else cursor.after_sequence
        return ExportPage(_text(lines), ExportCursor(last, 0 if complete else cp.tree_size), complete, len(rows), cp)


def _text(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


# -- alerts -----------------------------------------------------------------------------------------------


class AlertService:
    def __init__(
        self,
        store: AlertStore,
        events: EventStore,
        record: Record,
        *,
        secret_root: bytes,
        webhooks: WebhookPoster,
        notifier: Notifier | None,
        batch: int = 1000,
        retry_base: float = 5.0,
        messages_per_hour: int = 20,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._events = events
        self._record = record
        self._secret_root = secret_root
        self._webhooks = webhooks
        self._notifier = notifier
        self._messages_per_hour = messages_per_hour
        self._batch = batch
        self._retry_base = retry_base
        self._clock = clock
        self.fired = 0
        self.delivered = 0
        self.delivery_failures = 0

    @property
    def batch(self) -> int:
        """Events one `evaluate` takes at most."""
        return self._batch

    # -- rules ---------------------------------------------------------------------------------------------

    async def list_rules(self, account_id: int) -> list[Rule]:
        _need_account(account_id)
        await self._store.ensure_account(account_id, default_rules())
        return await self._store.rules(account_id)

    async def create_rule(self, account_id: int, spec: RuleSpec, owner: RuleOwner | None = None) -> Rule:
        _need_account(account_id)
        spec = await self._owned(account_id, await self._checked(normalize_rule(spec)), owner)
        await self._store.ensure_account(account_id, default_rules())
        # Privileged: each change's event is in the log before the change commits (fail closed).
        rule = await self._store.create_rule(
            account_id, spec, MAX_RULES_PER_ACCOUNT,
            before_commit=lambda r: self._audit("audit.alert_rule.created", r.rule_id, spec),
        )
        if rule is None:
            raise TooManyRules(f"an account has at most {MAX_RULES_PER_ACCOUNT} alert rules")
        return rule

    async def update_rule(self, account_id: int, rule_id: int, spec: RuleSpec, owner: RuleOwner | None = None
                          ) -> Rule:
        _need_account(account_id)
        spec = await self._owned(account_id, await self._checked(normalize_rule(spec)), owner)
        rule = await self._store.update_rule(
            account_id, rule_id, spec, before_commit=lambda _: self._audit("audit.alert_rule.updated", rule_id, spec),
        )
        if rule is None:
            raise RuleNotFound("no such alert rule in this account")
        return rule

    async def delete_rule(self, account_id: int, rule_id: int) -> None:
        _need_account(account_id)
        if not await self._store.delete_rule(account_id, rule_id):
            raise RuleNotFound("no such alert rule in this account")
        await self._audit("audit.alert_rule.deleted", rule_id, None)

    async def _owned(self, account_id: int, spec: RuleSpec, owner: RuleOwner | None) -> RuleSpec:
        """The rule as its owner sets it: SMS/email targets need the owner's sms.send and a destination the
        account verified (messaging keeps the verified destinations)."""
        spec = owned_spec(spec, owner or RuleOwner(0))
        for channel, target in spec.targets():
            if channel == "webhook":
                continue
            if self._notifier is None or not await self._notifier.verified(account_id, channel, target):
                raise DestinationNotVerified(
                    f"{channel}_to is not a verified destination of this account: verify it first"
                    " (POST /v1/messaging/notification-destinations, then enter the code sent to it)")
        return spec

    async def _checked(self, spec: RuleSpec) -> RuleSpec:
        """A webhook URL must pass the outbound-webhook policy now, not only when an alert fires."""
        return replace(spec, webhook_url=await self._webhooks.check(spec.webhook_url)) if spec.webhook_url else spec

    async def _audit(self, action: str, rule_id: int, spec: RuleSpec | None) -> None:
        details = {}
        if spec is not None:
            details = {"name": spec.name, "disabled": str(spec.disabled).lower(),
                       "channels": ",".join(ch for ch, _ in spec.targets()) or "none"}
        await self._record([new_event(SERVICE, action, resource_type="alert_rule", resource_id=str(rule_id),
                                      details=details)])

    async def list_alerts(self, account_id: int, page_size: int, page_token: str) -> tuple[list[Alert], str]:
        _need_account(account_id)
        limit = page_size_of(page_size)
        alerts = await self._store.alerts(account_id, parse_page_token(page_token), limit)
        token = str(alerts[-1].alert_id) if len(alerts) == limit else ""
        return alerts, token

    async def webhook_secret(self, account_id: int, *, rotate: bool) -> tuple[str, int]:
        _need_account(account_id)
        await self._store.ensure_account(account_id, default_rules())
        action = "audit.webhook_secret.rotated" if rotate else "audit.webhook_secret.revealed"

        async def evidence(version: int) -> None:  # before the rotation commits, and before the secret is shown
            await self._record([new_event(SERVICE, action, resource_type="webhook_secret", resource_id=str(version))])

        version = await self._store.secret_version(account_id, rotate=rotate, before_commit=evidence)
        return webhook_secret(self._secret_root, account_id, version), version

    # -- the engine ----------------------------------------------------------------------------------------

    async def evaluate(self) -> int:
        """Run the next batch of the log through the rules; returns how many events it took (0: nothing
        new, or another process holds the engine). Events, hits, alerts, deliveries and the cursor move in
        one transaction, so every event is evaluated exactly once."""
        async with self._store.tx() as tx:
            cursor = await tx.claim_cursor()
            if cursor is None:
                return 0
            rows = await tx.events_after(cursor, self._batch)
            if not rows:
                return 0
            facts = [formats.facts(s, leaf) for s, leaf in rows]
            accounts = sorted({f.account_id for f in facts if f.account_id > 0})
            if accounts:
                for account_id in await tx.new_accounts(accounts):
                    await tx.insert_rules(account_id, default_rules(), default=True)
                rules = await tx.rules_for(accounts)
                thresholds = [r for r in rules if r.spec.is_threshold]
                window = longest_window(thresholds)
                earliest = min(f.event_time for f in facts)
                hits = await tx.hits_since([r.rule_id for r in thresholds], earliest - timedelta(seconds=window))
                result = evaluate(rules, facts, hits)
                await tx.insert_hits(result.hits)
                await tx.record_fires(result.fires)
                await tx.set_last_fire(result.last_fire)
                if thresholds:
                    latest = max(f.event_time for f in facts)
                    await tx.prune_hits([r.rule_id for r in thresholds],
                                        [r.spec.window_seconds for r in thresholds], latest)
                self.fired += len(result.fires)
            await tx.advance_cursor(rows[-1][0])
            return len(rows)

    async def deliver_due(self, limit: int = 50, lease_seconds: float = 120.0) -> int:
        """Send the notifications that are due (each one leased, so replicas never send it twice at once)."""
        jobs = await self._store.claim_deliveries(limit, lease_seconds)
        if jobs:
            await asyncio.gather(*(self._deliver(job) for job in jobs))
        return len(jobs)

    async def _deliver(self, job: DeliveryJob) -> None:
        attempts = job.attempts + 1
        try:
            await self._send(job)
        except DeliveryError as err:
            self.delivery_failures += 1
            final = not err.retryable or attempts >= MAX_DELIVERY_ATTEMPTS
            await self._store.finish_delivery(job.delivery_id, FAILED if final else PENDING, attempts, err.reason,
                                              0.0 if final else retry_delay(attempts, self._retry_base))
            _LOG.info("alert delivery %d (%s) failed: %s", job.delivery_id, job.channel, err.reason)
        except Exception:
            _LOG.exception("alert delivery %d crashed", job.delivery_id)
            await self._store.finish_delivery(job.delivery_id, PENDING, attempts, "INTERNAL",
                                              retry_delay(attempts, self._retry_base))
        else:
            self.delivered += 1
            await self._store.finish_delivery(job.delivery_id, DELIVERED, attempts, "", 0.0)

    async def _send(self, job: DeliveryJob) -> None:
        alert = job.alert
        if job.channel == "webhook":
            leaf = (await self._events.bodies([alert.event_sequence])).get(alert.event_sequence)
            body = formats.alert_payload(job.delivery_id, job.account_id, alert, leaf)
            version = await self._store.secret_version(job.account_id)
            secret = webhook_secret(self._secret_root, job.account_id, version)
            await self._webhooks.post(job.target, body, {
                "Content-Type": "application/json",
                # The same webhook-id on every retry of this delivery: the receiver's idempotency key.
                **signed_headers([secret], f"alert_{job.delivery_id}", int(self._clock().timestamp()), body),
            })
            return
        if self._notifier is None:
            raise DeliveryError("MESSAGING_NOT_CONFIGURED", retryable=False)
        refused = undeliverable(job.rule, job.channel, job.target)
        if refused:
            raise DeliveryError(refused, retryable=False)
        assert job.rule is not None
        if job.attempts == 0:  # a retry was counted when it first went
            suppressed, first = alert_cap_hit(await self._store.count_alert_message(job.account_id),
                                              self._messages_per_hour)
            if first:
                await self._record([new_event(
                    SERVICE, "audit.alert.messages_capped", resource_type="alert_rule", resource_id=str(alert.rule_id),
                    account_id=job.account_id, details={"cap_per_hour": str(self._messages_per_hour)})])
            if suppressed:
                raise DeliveryError("ALERT_MESSAGE_CAP_REACHED", retryable=False)
        text = alert_text(alert.rule_id, alert.match_count, alert.action, alert.fire_time)
        await self._notifier.notify(job.account_id, job.channel, job.target, ALERT_SUBJECT, text,
                                    f"alert-delivery-{job.delivery_id}", job.rule)


def _need_account(account_id: int) -> None:
    if account_id <= 0:
        raise AccountRequired("this call needs an account principal")


# -- forwarding -----------------------------------------------------------------------------------------


class ForwardingService:
    def __init__(
        self,
        store: AlertStore,
        events: EventStore,
        record: Record,
        *,
        secret_root: bytes,
        webhooks: WebhookPoster,
        batch: int = 500,
        retry_base: float = 2.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._events = events
        self._record = record
        self._secret_root = secret_root
        self._webhooks = webhooks
        self._batch = batch
        self._retry_base = retry_base
        self._clock = clock
        self.forwarded = 0
        self.failures = 0

    async def get(self, account_id: int) -> ForwardingState | None:
        _need_account(account_id)
        return await self._store.forwarding(account_id)

    async def set(self, account_id: int, spec: ForwardingSpec) -> ForwardingState:
        _need_account(account_id)
        spec = normalize_forwarding(spec)
        if spec.enabled:  # the outbound-webhook policy now, not only at the first delivery
            spec = replace(spec, url=await self._webhooks.check(spec.url))
        await self._store.ensure_account(account_id, default_rules())
        event = new_event(
            SERVICE, "audit.forwarding.updated", resource_type="forwarding", resource_id=str(account_id),
            details={"enabled": str(spec.enabled).lower(), "format": "cef" if spec.format == FORMAT_CEF else "jsonl",
                     "backfill": str(spec.backfill).lower()},
        )
        # Privileged: the event is in the log before the new destination commits (fail closed).
        return await self._store.set_forwarding(account_id, spec, before_commit=lambda _: self._record([event]))

    async def forward_due(self, limit: int = 20, lease_seconds: float = 60.0) -> int:
        """One batch for each destination that has undelivered events; returns how many were delivered."""
        total = 0
        for dest in await self._store.claim_forwardings(limit, lease_seconds):
            total += await self._forward(dest)
        return total

    async def _forward(self, dest: ForwardingState) -> int:
        rows = await self._events.account_events(dest.account_id, dest.delivered_sequence, None, self._batch)
        if not rows:
            return 0
        body, content_type = formats.forward_body(rows, dest.spec.format or FORMAT_JSONL)
        version = await self._store.secret_version(dest.account_id)
        secret = webhook_secret(self._secret_root, dest.account_id, version)
        first, last = rows[0][0], rows[-1][0]
        try:  # the webhook-id names the batch's events, so retrying the same batch repeats it
            await self._webhooks.post(dest.spec.url, body, {
                "Content-Type": content_type,
                **signed_headers([secret], f"fwd_{dest.account_id}_{first}_{last}", int(self._clock().timestamp()),
                                 body),
                "X-SendSafe-Events": f"{first}-{last}",
            })
        except DeliveryError as err:
            self.failures += 1
            await self._store.forwarding_failed(dest.account_id, err.reason,
                                                retry_delay(dest.consecutive_failures + 1, self._retry_base, 600.0))
            return 0
        await self._store.forwarded(dest.account_id, dest.delivered_sequence, rows[-1][0])
        self.forwarded += len(rows)
        return len(rows)

