"""What every part of the store shares: the pool, and conversions between rows and values."""

from __future__ import annotations

import binascii
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from services.messaging.domain.statuses import MessageStatus, sources_of

FINAL_STATUSES = [MessageStatus.DELIVERED.value, MessageStatus.FAILED.value, MessageStatus.CANCELLED.value]
UNSETTLED_STATUSES = [MessageStatus.QUEUED.value, MessageStatus.SCHEDULED.value, MessageStatus.SENDING.value]


def uuid_texts(ids: Sequence[str]) -> list[str]:
    """Message ids for a uuid[] parameter: asyncpg parses the text itself (no uuid.UUID objects)."""
    return list(ids)


def b64(value: bytes) -> str:
    return binascii.b2a_base64(value, newline=False).decode()


def id_text(value: uuid.UUID | None) -> str:
    return "" if value is None else str(value).upper()


def unix_of(value: datetime | None) -> int:
    return 0 if value is None else int(value.timestamp())


def source_statuses(status: MessageStatus) -> list[str]:
    return sorted(s.value for s in sources_of(status))


def bytes_or_none(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


class PoolSql:
    """A store over an asyncpg pool."""

    _pool: asyncpg.Pool
