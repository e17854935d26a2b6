"""Events as the log takes them in (`IncomingEvent`) and seals them into leaves (`SealedEvent`): the
sequence and per-account sequence the log assigns, appended to the emitter's bytes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from services.audit.domain import merkle
from services.audit.domain.errors import EventInvalid

SERVICE = "audit"
OUTCOME_SUCCESS, OUTCOME_FAILURE, OUTCOME_DENIED = 1, 2, 3


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
