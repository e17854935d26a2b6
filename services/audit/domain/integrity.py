"""Integrity findings: what a full verification of the log found, and how a differing leaf is named."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum


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
