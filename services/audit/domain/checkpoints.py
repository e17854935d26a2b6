"""Signed checkpoints as stored, and which tree sizes a proof may ask for."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.audit.domain.errors import TreeSizeInvalid


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
