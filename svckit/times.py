"""Times from requests, checked: a conversion that could overflow answers 400, never 500.

Any google.protobuf.Timestamp or unix-seconds value that came from a caller goes through here before it
becomes a datetime or reaches SQL (to_timestamp). The gateway refuses out-of-range values first (declared
`(sendsafe.options.v1.range)` and the Timestamp limits); this is the check of every service for its other
callers. No transport or protobuf imports at run time: domain code may use it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from svckit.errors import InvalidArgument

if TYPE_CHECKING:  # domain code imports this module: no protobuf at run time
    from google.protobuf import timestamp_pb2

# What both a protobuf Timestamp and PostgreSQL's timestamptz hold: 0001-01-01 .. 9999-12-31T23:59:59Z.
MIN_UNIX_SECONDS: Final = -62135596800
MAX_UNIX_SECONDS: Final = 253402300799


class TimeOutOfRange(InvalidArgument):
    reason = "PARAMETER_OUT_OF_RANGE"


def to_datetime(ts: timestamp_pb2.Timestamp, name: str) -> datetime:
    """`ts` as an aware UTC datetime; outside 0001..9999 (or nanos out of range) is TimeOutOfRange."""
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise TimeOutOfRange(f"{name} must be a time between 0001-01-01 and 9999-12-31.", parameter=name) from None


def unix_seconds(seconds: int, name: str, *, minimum: int = 0) -> int:
    """`seconds` when it is between `minimum` and 9999-12-31T23:59:59Z, else TimeOutOfRange."""
    if not minimum <= seconds <= MAX_UNIX_SECONDS:
        raise TimeOutOfRange(f"{name} must be unix seconds between {minimum} and {MAX_UNIX_SECONDS}.", parameter=name)
    return seconds


def optional_unix_seconds(seconds: int, name: str) -> int | None:
    """A unix-seconds filter (date_from, date_to, date_before): 0 means not given (None); else as unix_seconds,
    so the database conversion (to_timestamp) can never overflow."""
    return unix_seconds(seconds, name) or None
