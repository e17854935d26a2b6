"""Audit log rules: the hash chain, event checks, paging. Pure: no I/O."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from svckit.errors import InvalidArgument

GENESIS_HASH = bytes(32)
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


class EventInvalid(InvalidArgument):
    reason = "EVENT_INVALID"


class PageTokenInvalid(InvalidArgument):
    reason = "PAGE_TOKEN_INVALID"


@dataclass(frozen=True)
class IncomingEvent:
    """What an emitter sent, already serialized deterministically (`body`)."""

    event_id: str
    event_time: datetime
    account_id: int
    actor_id: str
    action: str
    outcome: int
    trace_id: str
    body: bytes


@dataclass(frozen=True)
class ChainedEvent:
    sequence: int
    event: IncomingEvent
    prev_hash: bytes
    hash: bytes


@dataclass(frozen=True)
class EventFilter:
    account_id: int
    start_time: datetime | None
    end_time: datetime | None
    action: str
    actor_id: str
    after_sequence: int
    limit: int


def leaf_hash(prev_hash: bytes, body: bytes) -> bytes:
    """Each event commits to the one before it: SHA-256(prev_hash || body)."""
    return hashlib.sha256(prev_hash + body).digest()


def check_event(ev: IncomingEvent) -> None:
    if not ev.event_id or len(ev.event_id) > 64:
        raise EventInvalid("event_id must be 1-64 characters")
    if not ev.action or len(ev.action) > 128:
        raise EventInvalid("action must be 1-128 characters", event_id=ev.event_id)


def chain(head_sequence: int, head_hash: bytes, events: Iterable[IncomingEvent]) -> list[ChainedEvent]:
    out: list[ChainedEvent] = []
    seq, prev = head_sequence, head_hash
    for ev in events:
        seq += 1
        h = leaf_hash(prev, ev.body)
        out.append(ChainedEvent(seq, ev, prev, h))
        prev = h
    return out


def first_break(head_hash: bytes, rows: Iterable[tuple[int, bytes, bytes, bytes]]) -> int | None:
    """Sequence of the first row whose links do not verify, given (sequence, body, prev_hash, hash)
    rows in order starting right after a known `head_hash`; None when all verify."""
    prev = head_hash
    expected_seq: int | None = None
    for seq, body, prev_hash, h in rows:
        if expected_seq is not None and seq != expected_seq:
            return expected_seq
        if prev_hash != prev or leaf_hash(prev_hash, body) != h:
            return seq
        prev, expected_seq = h, seq + 1
    return None


def page_size(requested: int) -> int:
    if requested <= 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def parse_page_token(token: str) -> int:
    if not token:
        return 0
    if not token.isdigit() or len(token) > 19:
        raise PageTokenInvalid("page_token is not one this service issued")
    return int(token)
